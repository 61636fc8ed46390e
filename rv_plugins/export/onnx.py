"""ONNX export of the package's models with either torch exporter, and the check against onnxruntime.

* :func:`export_onnx` runs ``torch.onnx.export`` with the default exporter (``torch.export``-based,
  ``dynamo=True``) or the legacy TorchScript one (``legacy=True``), in :func:`export_mode`, and returns an
  :class:`ExportResult` (path, export seconds, node count).
* :func:`export_mode`: eval mode, no memory-lean inference chunking (a row/token-chunked Python loop would be
  recorded at the traced size), and for the legacy exporter ``nn.AdaptiveAvgPool2d`` swapped for
  :class:`AdaptiveAvgPool2dAsMatmul` (its ONNX converter takes only output sizes that divide the input, and
  no dynamic input); everything is restored afterwards.
* :func:`onnxruntime_session`, :func:`run_onnx`, :func:`compare_with_eager` and :func:`relative_error`:
  run the file in onnxruntime (one thread by default) and measure ``max|onnx - eager| / max|eager|``.

The recurrences take their export-friendly composite lowering by themselves under an exporter
(:mod:`rv_plugins.ops.parallel`, chosen through :func:`rv_plugins.ops.modes.is_tracing_or_exporting`).
Dynamic batch/height/width need the legacy exporter: ``torch.export`` specialises the scan's padding
arithmetic to the example's size (its symbolic shapes cannot prove the padding non-negative), so
``dynamic=True`` without ``legacy=True`` is refused with that advice.
"""
import contextlib
import dataclasses
import time
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from rv_plugins.ops.parallel import fixed_size_traces

__all__ = ["export_onnx", "export_mode", "ExportResult", "onnxruntime_session", "run_onnx", "compare_with_eager",
           "relative_error", "AdaptiveAvgPool2dAsMatmul", "flatten_outputs"]

LEGACY_OPSET = 17
DYNAMO_OPSET = 18


@dataclasses.dataclass
class ExportResult:
    """What :func:`export_onnx` wrote: ``path``, ``exporter`` (``'dynamo'`` or ``'legacy'``), wall ``seconds``
    of the export, ``nodes`` in the top-level ONNX graph, ``dynamic`` axes, input and output names."""
    path: str
    exporter: str
    seconds: float
    nodes: int
    dynamic: bool
    input_names: List[str]
    output_names: List[str]


def _pool_matrix(n_in, n_out: int, like: torch.Tensor) -> torch.Tensor:
    """``(n_out, n_in)`` averaging matrix of adaptive average pooling along one axis: row ``i`` averages
    inputs ``[floor(i n_in / n_out), ceil((i + 1) n_in / n_out))`` (PyTorch's bins). Built from tensor ops,
    so a trace keeps ``n_in`` symbolic."""
    i = torch.arange(n_out, device=like.device)
    start = (i * n_in) // n_out
    end = ((i + 1) * n_in + n_out - 1) // n_out  # ceil with non-negative operands
    j = torch.arange(n_in, device=like.device)
    inside = (j.unsqueeze(0) >= start.unsqueeze(1)) & (j.unsqueeze(0) < end.unsqueeze(1))
    return inside.to(like.dtype) / (end - start).unsqueeze(1).to(like.dtype)


class AdaptiveAvgPool2dAsMatmul(nn.Module):
    """``nn.AdaptiveAvgPool2d(output_size)`` as two small matrix products: ``(B, C, H, W)`` ->
    ``(B, C, oh, ow)``, equal to it to float rounding for every input size (``None`` in ``output_size``
    keeps that axis). Exportable by every exporter, with dynamic sizes too."""

    def __init__(self, output_size: Union[int, Tuple[Optional[int], Optional[int]]]):
        super().__init__()
        self.output_size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        oh, ow = self.output_size
        if oh is not None:
            x = torch.matmul(_pool_matrix(x.shape[-2], oh, x), x)
        if ow is not None:
            x = torch.matmul(x, _pool_matrix(x.shape[-1], ow, x).t())
        return x


def _swap_adaptive_pools(model: nn.Module) -> List[Tuple[nn.Module, str, nn.Module]]:
    """Replace every ``nn.AdaptiveAvgPool2d`` in ``model`` by :class:`AdaptiveAvgPool2dAsMatmul`; returns
    ``(parent, name, original)`` to undo it."""
    swapped = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.AdaptiveAvgPool2d:
                setattr(parent, name, AdaptiveAvgPool2dAsMatmul(child.output_size))
                swapped.append((parent, name, child))
    return swapped


@contextlib.contextmanager
def export_mode(model: nn.Module, legacy: bool = False) -> Iterator[nn.Module]:
    """Eval mode and (``legacy``) exportable adaptive pooling for the ``with`` block; the model's modes and
    modules are restored afterwards. (Inference chunking needs no switch: the layers run whole maps while
    traced or exported, ``rv_plugins.ops.modes.is_tracing_or_exporting``.)"""
    was_training = [(m, m.training) for m in model.modules()]
    swapped = _swap_adaptive_pools(model) if legacy else []
    model.eval()
    try:
        yield model
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)
        for m, mode in was_training:
            m.training = mode


def _graph_summary(path: str) -> Tuple[int, List[str]]:
    """``(nodes, output names)`` of the ONNX file's top-level graph."""
    import onnx
    graph = onnx.load(path, load_external_data=False).graph
    return len(graph.node), [o.name for o in graph.output]


def export_onnx(model: nn.Module, inputs: Union[torch.Tensor, Sequence[torch.Tensor]], path: str, *,
                legacy: bool = False, dynamic: bool = False, input_names: Optional[Sequence[str]] = None,
                output_names: Optional[Sequence[str]] = None, opset: Optional[int] = None,
                optimize: bool = True) -> ExportResult:
    """Export ``model(*inputs)`` to the ONNX file ``path`` (one file, weights inside).

    ``legacy``: the TorchScript exporter (``dynamo=False``) instead of the default ``torch.export`` one.
    ``dynamic``: batch, height and width of every 4-D input (and the batch of others) are dynamic axes;
    needs ``legacy`` (see the module docstring). ``opset``: default 18 (dynamo) / 17 (legacy). ``optimize=False``:
    the default exporter skips onnxscript's graph optimizer (about half its export time; the file has more
    nodes, which onnxruntime folds when it loads it; same results).
    Runs without autograd in :func:`export_mode`.
    """
    inputs = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    if dynamic and not legacy:
        raise ValueError("export_onnx: dynamic=True needs legacy=True: the default exporter (torch.export) "
                         "specialises the scan's padding to the example's size; export with the legacy "
                         "TorchScript exporter (--legacy), or export once per input size")
    input_names = list(input_names or [f"input{i}" if len(inputs) > 1 else "input" for i in range(len(inputs))])
    kwargs = dict(input_names=input_names)
    if output_names is not None:
        kwargs["output_names"] = list(output_names)
    start = time.perf_counter()
    sizes = contextlib.nullcontext() if dynamic else fixed_size_traces()  # no dynamic axes: the fewest levels
    with export_mode(model, legacy=legacy), sizes, torch.no_grad():
        if legacy:
            if dynamic:
                axes = {0: "batch", 2: "height", 3: "width"}
                kwargs["dynamic_axes"] = {name: (axes if x.dim() == 4 else {0: "batch"})
                                          for name, x in zip(input_names, inputs)}
            torch.onnx.export(model, inputs, path, dynamo=False, opset_version=opset or LEGACY_OPSET, **kwargs)
        else:
            torch.onnx.export(model, inputs, path, dynamo=True, opset_version=opset or DYNAMO_OPSET,
                              external_data=False, optimize=optimize, verbose=False, **kwargs)
    seconds = time.perf_counter() - start
    nodes, outputs = _graph_summary(path)
    return ExportResult(path, "legacy" if legacy else "dynamo", seconds, nodes, dynamic, input_names, outputs)


def onnxruntime_session(path: str, threads: int = 1):
    """An onnxruntime CPU session for ``path`` with ``threads`` intra-op threads (and one inter-op)."""
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise ImportError("onnxruntime is not installed: pip install onnxruntime (the set-up's test tools "
                          "install it)") from err
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def run_onnx(session, inputs: Union[torch.Tensor, Sequence[torch.Tensor]]) -> List[torch.Tensor]:
    """Run ``session`` on ``inputs`` (in the order of the session's inputs); outputs as tensors."""
    inputs = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    names = [i.name for i in session.get_inputs()]
    if len(names) != len(inputs):
        raise ValueError(f"run_onnx: the model takes {len(names)} input(s) {names}, got {len(inputs)}")
    feeds = {name: x.detach().cpu().contiguous().numpy() for name, x in zip(names, inputs)}
    return [torch.from_numpy(o) for o in session.run(None, feeds)]


def flatten_outputs(out) -> List[torch.Tensor]:
    """A model's output (tensor, or nested tuples/lists/dicts of them) as a flat list in export order."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in flatten_outputs(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in flatten_outputs(v)]
    return []


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    """``max|got - expected| / max|expected|`` in float64 (``max|got - expected|`` when ``expected`` is 0)."""
    if tuple(got.shape) != tuple(expected.shape):
        raise ValueError(f"relative_error: shapes differ, {tuple(got.shape)} vs {tuple(expected.shape)}")
    diff = (got.double() - expected.double()).abs().max().item() if got.numel() else 0.0
    scale = expected.double().abs().max().item() if expected.numel() else 0.0
    return diff / scale if scale > 0 else diff


def compare_with_eager(model: nn.Module, session, inputs: Union[torch.Tensor, Sequence[torch.Tensor]],
                       expected: Optional[List[torch.Tensor]] = None) -> List[float]:
    """The :func:`relative_error` of every output of ``session`` against ``model(*inputs)`` (eval mode, no
    autograd, the model's own inference path), or against ``expected`` (its :func:`flatten_outputs`) when
    the caller has computed it already."""
    inputs = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    if expected is None:
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                expected = flatten_outputs(model(*inputs))
        finally:
            model.train(was_training)
    got = run_onnx(session, inputs)
    if len(got) != len(expected):
        raise ValueError(f"compare_with_eager: the ONNX model has {len(got)} outputs, the model {len(expected)}")
    return [relative_error(g, e) for g, e in zip(got, expected)]
