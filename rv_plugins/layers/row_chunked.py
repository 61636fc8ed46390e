"""Memory-lean inference in row chunks for channels-last maps ``(B, H, W, C)``.

Without autograd and outside training, a module that mixes this in (:class:`RowChunked`) runs a map of
more than its inference chunk (``infer_chunk_elems`` map elements, tokens x channels) in row chunks of
about that size, so that no full-size temporary exists:

* 3x3 convolutions (any stride) compute their output rows from input row slabs with a one-row halo
  (:func:`conv3x3_rows`), the results written into one output map (:func:`assemble_rows`);
* a bidirectional minGRU mixer runs each direction chunk by chunk, top to bottom for the raster order
  and bottom to top for the reverse one, the state carried between chunks through ``h0``
  (:func:`accumulate_scans_in_rows_`);
* per-token work (LayerNorm, MLP) runs in place on each chunk of the output (:func:`update_rows_`).

A block then holds its input, its output and one chunk's temporaries; outputs equal the one-call path
to float rounding. Measurements behind the chunk sizes are in ``docs/benchmarks/notes.md``.

Chunk rule (:func:`chunk_elems`, per image): an explicit number applies on every device; ``None`` never
chunks; ``"auto"`` (the default) depends on the device.

* CPU: chunks of ``INFER_CHUNK_ELEMS`` when the image is large and of the cheaper
  ``INFER_CHUNK_ELEMS_SMALL_IMAGE`` otherwise. "Large" is judged per image, not per map: the late stages'
  maps of a large image are as small as the early ones of a small image, and chunking only the large
  maps would leave the large image's peak to its late stages. Each module estimates the image's
  first-stage map from its own map with ``first_stage_ratio`` (set by the model per stage; 1 for a module
  used on its own), so the rule needs no state passed at run time and ``torch.compile`` traces it
  without a graph break.
* Other devices (GPUs): a map of the whole batch larger than ``INFER_CHUNK_ELEMS_ACCELERATOR`` elements
  runs in chunks of about that many elements of the batch (``INFER_CHUNK_ELEMS_ACCELERATOR / B`` per
  image). The peak is the maps a stage holds plus one chunk's temporaries, so a budget for the batch
  keeps it proportional to the batch's maps, as an attention model's activations are; each chunk is a
  few kernel launches per op, so the chunk is as large as that budget allows (under CUDA graphs,
  ``torch.compile(mode="reduce-overhead")``, the launches cost next to nothing).

:func:`describe_infer_chunking` reports, without computing anything, what a model decides for an input size.

Tracing and exporting (``torch.jit``, ``torch.onnx.export``, ``torch.export``) always take the one-call
path (:func:`takes_lean_path` is false): a Python loop over a data-dependent number of chunks would be
frozen at the traced size.
"""
import math
from typing import Callable, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from rv_plugins.ops import mingru_scan
from rv_plugins.ops.linear import linear_module
from rv_plugins.ops.modes import is_tracing_or_exporting

__all__ = ["RowChunked", "set_infer_chunk", "describe_infer_chunking", "chunk_elems", "takes_lean_path", "chunk_rows",
           "assemble_rows",
           "conv3x3_rows", "accumulate_scans_in_rows_", "update_rows_", "INFER_CHUNK_AUTO", "INFER_CHUNK_ELEMS",
           "INFER_CHUNK_ELEMS_ACCELERATOR", "INFER_CHUNK_ELEMS_SMALL_IMAGE", "INFER_LARGE_IMAGE_ELEMS"]

INFER_CHUNK_AUTO = "auto"
# CPU, large images: 2**16 elements = 256 KiB of float32 map (910 tokens of VisionGRU-Ti's first stage,
# whose chunk then holds a 1 MiB projection per direction); the smallest peak for a small time cost.
INFER_CHUNK_ELEMS = 2 ** 16
# CPU, images whose first-stage map (whole batch, B x tokens x C0) holds at most INFER_LARGE_IMAGE_ELEMS
# elements (8 MiB of float32; VisionGRU-Ti at batch 1: up to 680^2): larger chunks, nearly the one-call
# speed at a peak that such images can afford.
INFER_CHUNK_ELEMS_SMALL_IMAGE = 2 ** 18
INFER_LARGE_IMAGE_ELEMS = 2 ** 21
# Other devices: map elements of the whole batch per chunk. VisionGRU-Ti at 1024^2, batch 3, bf16: the two
# stage-0 maps are 54 MiB, a chunk's temporaries ~34 bytes per chunk element (LayerNorm and conv rows,
# one direction's projection, float32 gates inside the scan, state, output): 2**21 elements add ~68 MiB.
INFER_CHUNK_ELEMS_ACCELERATOR = 2 ** 21


class RowChunked:
    """Mixin of the modules with a memory-lean (row-chunked) inference path."""

    infer_chunk_elems: Union[float, str] = INFER_CHUNK_AUTO  # see set_infer_chunk
    first_stage_ratio = 1.0  # the image's first-stage map elements per element of this module's map


def set_infer_chunk(model: nn.Module, elems: Union[float, str, None]) -> nn.Module:
    """Set the inference chunk (map elements, tokens x channels) of every module of ``model`` that has
    one; ``None`` disables chunking (every map runs in one call), a number chunks every map larger than
    that into chunks of about that size, ``"auto"`` (the default) chunks at ``INFER_CHUNK_ELEMS`` on the CPU
    (at ``INFER_CHUNK_ELEMS_SMALL_IMAGE`` for images whose first-stage map holds at most
    ``INFER_LARGE_IMAGE_ELEMS`` elements) and at ``INFER_CHUNK_ELEMS_ACCELERATOR`` elsewhere. Returns ``model``."""
    elems = math.inf if elems is None else elems
    if elems != INFER_CHUNK_AUTO and not (isinstance(elems, (int, float)) and elems >= 1):
        raise ValueError(f"set_infer_chunk: elems must be >= 1, 'auto' or None (no chunking), got {elems!r}")
    for m in model.modules():
        if hasattr(m, "infer_chunk_elems"):
            m.infer_chunk_elems = elems
    return model


def chunk_elems(module: nn.Module, device: torch.device, map_elems: int, batch: int = 1) -> float:
    """``module``'s inference chunk in map elements per image on ``device``, for a map of ``map_elems``
    elements of a batch of ``batch`` images; see the module docstring."""
    elems = module.infer_chunk_elems
    if elems != INFER_CHUNK_AUTO:
        return elems
    if device.type != "cpu":
        return INFER_CHUNK_ELEMS_ACCELERATOR / max(batch, 1)
    large = map_elems * module.first_stage_ratio > INFER_LARGE_IMAGE_ELEMS  # the image's first-stage map
    return INFER_CHUNK_ELEMS if large else INFER_CHUNK_ELEMS_SMALL_IMAGE


_decisions: Optional[list] = None  # collects the decisions while describe_infer_chunking runs a model


def takes_lean_path(module: nn.Module, tokens: int, dim: int, device: torch.device, batch: int = 1) -> bool:
    """Whether ``module`` runs a map of ``batch`` x ``tokens`` x ``dim`` on ``device`` in row chunks: eval
    mode, no autograd, not traced or exported, and one image's map larger than the chunk."""
    lean = (not module.training and not torch.is_grad_enabled() and not is_tracing_or_exporting()
            and tokens * dim > chunk_elems(module, device, batch * tokens * dim, batch))
    if _decisions is not None:
        _decisions.append(dict(module=module, batch=batch, tokens=tokens, dim=dim, lean=lean))
    return lean


def chunk_rows(module: nn.Module, device: torch.device, batch: int, height: int, width: int, dim: int) -> int:
    """Rows per chunk (at least one) for a ``(batch, height, width, dim)`` map on ``device``."""
    per_image = chunk_elems(module, device, batch * height * width * dim, batch)
    rows = max(1, int(per_image // max(width * dim, 1)))
    if _decisions is not None:
        _decisions.append(dict(module=module, height=height, rows=rows, chunk_elems=per_image))
    return rows


def describe_infer_chunking(model: nn.Module, batch: int, height: int, width: int, in_channels: int = 3,
                            dtype: Optional[torch.dtype] = None) -> List[dict]:
    """What ``model`` (in eval mode, on its own device) decides for ``batch`` images of ``height x width``
    without autograd: one forward on fake tensors (nothing computed, nothing allocated) records every
    chunking decision. Returns one dict per decision, in call order: ``module`` (its name in ``model``),
    ``map`` (``[batch, tokens, channels]``), ``lean`` (runs in row chunks), and for chunked maps ``rows``
    per chunk, ``chunks`` and ``chunk_elems`` (map elements of the batch per chunk, at most)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    global _decisions
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = dtype or (param.dtype if param is not None else torch.float32)
    names = {m: n for n, m in model.named_modules()}
    log, _decisions = [], []
    try:
        with torch.no_grad(), FakeTensorMode(allow_non_fake_inputs=True):
            model(torch.empty(batch, in_channels, height, width, device=device, dtype=dtype))
        log = _decisions
    finally:
        _decisions = None
    out = []
    for entry in log:
        name = names.get(entry["module"], type(entry["module"]).__name__)
        if "lean" in entry:
            out.append(dict(module=name, map=[entry["batch"], entry["tokens"], entry["dim"]], lean=entry["lean"]))
        elif out and out[-1]["module"] == name and out[-1]["lean"] and "rows" not in out[-1]:
            rows = entry["rows"]
            out[-1].update(rows=rows, chunks=-(-entry["height"] // rows),
                           chunk_elems=int(min(rows * out[-1]["map"][1] // entry["height"], out[-1]["map"][1])
                                           * out[-1]["map"][0] * out[-1]["map"][2]))
    return out


def assemble_rows(n_out: int, rows: int, compute: Callable[[int, int], torch.Tensor]) -> torch.Tensor:
    """Run ``compute(o0, o1)`` -> ``(B, o1 - o0, ...)`` for row chunks ``[o0, o1)`` of ``rows`` rows covering
    ``0..n_out`` and write the results into one ``(B, n_out, ...)`` tensor (allocated at the first chunk)."""
    out = None
    for o0 in range(0, n_out, rows):
        o1 = min(o0 + rows, n_out)
        y = compute(o0, o1)
        if out is None:
            out = y.new_empty(y.shape[0], n_out, *y.shape[2:])
        out[:, o0:o1] = y
    return out


def conv3x3_rows(conv: nn.Conv2d, get_rows: Callable[[int, int], torch.Tensor], n_in: int, o0: int,
                 o1: int) -> torch.Tensor:
    """Output rows ``[o0, o1)`` of ``conv`` (3x3, padding 1, any stride and groups) from input row slabs.

    ``get_rows(a, b)`` returns input rows ``[a, b)`` as ``(B, C_in, b - a, W_in)`` (any strides) of a map
    with ``n_in`` rows. Rows outside the map are the conv's zero padding. Returns ``(B, C_out, o1 - o0,
    W_out)``, equal to ``conv(full_map)[:, :, o0:o1]``.
    """
    s = conv.stride[0]
    i0, i1 = o0 * s - 1, (o1 - 1) * s + 2            # input rows [i0, i1) that the outputs read
    a, b = max(i0, 0), min(i1, n_in)
    x = get_rows(a, b)
    if a > i0 or b < i1:
        x = F.pad(x, (0, 0, a - i0, i1 - b))
    return F.conv2d(x, conv.weight, conv.bias, stride=conv.stride, padding=(0, conv.padding[1]),
                    groups=conv.groups)


def accumulate_scans_in_rows_(dwconv: nn.Conv2d, grus: Sequence[nn.Module], x: torch.Tensor, out: torch.Tensor,
                              rows: int, pre: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> torch.Tensor:
    """No-autograd ``out += sum(gru(dwconv(pre(x))) for gru in grus)`` in chunks of ``rows`` rows; returns ``out``.

    ``x``, ``out``: ``(B, H, W, C)``; ``dwconv``: a 3x3 padding-1 stride-1 conv (channels first);
    ``grus``: :class:`rv_plugins.layers.mingru.MinGRU` layers over the raster sequence (``reverse=True``:
    bottom to top); ``pre``: an optional per-token module (a LayerNorm), applied per row slab. Each chunk
    recomputes ``pre`` and the conv on its rows (one-row halo) and runs one direction's input projection,
    scan (state carried in ``h0``) and output projection into ``out``'s rows. Nothing of full size is
    allocated.
    """
    B, H, W, C = x.shape

    def slab(a: int, b: int) -> torch.Tensor:
        t = x[:, a:b] if pre is None else pre(x[:, a:b])
        return t.permute(0, 3, 1, 2)

    starts = list(range(0, H, rows))
    for gru in grus:
        state = None
        for r0 in (reversed(starts) if gru.reverse else starts):
            r1 = min(r0 + rows, H)
            y = conv3x3_rows(dwconv, slab, H, r0, r1).permute(0, 2, 3, 1).reshape(B, -1, C)
            h = mingru_scan(linear_module(gru.in_proj, y), state, reverse=gru.reverse,
                            candidate_act=gru.candidate_act, backend=gru.backend)
            state = (h[:, 0] if gru.reverse else h[:, -1]).contiguous()
            out[:, r0:r1].add_(linear_module(gru.out_proj, h).view(B, r1 - r0, W, -1))
    return out


def update_rows_(out: torch.Tensor, rows: int, residual: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``out += residual(out)`` in place, ``rows`` rows at a time (``residual`` per token: LayerNorm, MLP)."""
    for r0 in range(0, out.shape[1], rows):
        chunk = out[:, r0:r0 + rows]
        chunk += residual(chunk)
    return out
