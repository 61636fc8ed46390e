"""FLOP and activation handles for the tracing counters, with :mod:`rv_plugins.utils.flops`'s formulas.

fvcore's ``FlopCountAnalysis`` (Detectron2's ``detectron2.utils.analysis.FlopCountAnalysis`` is a subclass)
and its copy in mmengine (``mmengine.analysis.FlopAnalyzer``, behind ``get_model_complexity_info`` and
mmseg's / mmpretrain's ``get_flops`` tools) trace the model with ``torch.jit`` and count each graph node
through a handle chosen by the node's kind (``'aten::linear'``, ...). They count multiply-accumulates for
matmuls and convolutions, as :func:`rv_plugins.utils.flops.count_flops` does; nodes without a handle are
reported as unsupported and count zero. These handles fill the gaps our models leave:

* ``rv_plugins::linear_scan`` / ``rv_plugins::mingru_scan``: ``B*L*D`` (one multiply-add per state
  element and step), as :mod:`rv_plugins.utils.flops` counts them;
* ``aten::lstm`` / ``aten::gru`` / ``aten::rnn_tanh`` / ``aten::rnn_relu`` (``nn.LSTM``, ``nn.GRU``,
  ``nn.RNN``: Sequencer2D's native path): every weight matrix once per token and direction;
* ``aten::baddbmm`` (Sequencer2D's batched cells of its fused GRU/RNN path): as ``aten::bmm``.

A handle takes the node's inputs and outputs (``torch._C.Value``) and returns MACs. Nothing here imports
a toolkit: the adapters pass their counter's tables to :func:`register_handles` (``rv_plugins.mmseg`` and
``rv_plugins.mmpretrain`` through :mod:`rv_plugins.openmmlab.counters`, ``rv_plugins.detectron2`` for fvcore).

Counted differently on purpose: the toolkits' counters add their own estimates for normalisation layers,
upsampling and pooling (e.g. 5 per element for an affine LayerNorm), which :func:`count_flops` leaves out;
on our backbones that is < 0.5% of the total.
"""
from typing import Callable, Dict, List, Optional, Sequence

import torch

from rv_plugins.utils.flops import rnn_macs, rnn_weight_list, scan_macs

__all__ = ["flop_handles", "activation_handles", "register_handles", "RNN_KINDS", "SCAN_KINDS"]

Handle = Callable[[List[torch._C.Value], List[torch._C.Value]], int]
RNN_KINDS = ("aten::lstm", "aten::gru", "aten::rnn_tanh", "aten::rnn_relu")
SCAN_KINDS = ("rv_plugins::linear_scan", "rv_plugins::mingru_scan")


def _shape(value: torch._C.Value, kind: str) -> List[int]:
    """The traced shape of a tensor value of a ``kind`` node."""
    if not value.isCompleteTensor():
        raise ValueError(f"{kind}: the trace holds no complete shape for the tensor {value.debugName()!r}; "
                         "trace the model with real input tensors (no None or scalar in their place)")
    return value.type().sizes()


def _list_shapes(value: torch._C.Value) -> Sequence[Optional[List[int]]]:
    """Shapes of the tensors of a traced list argument (``prim::ListConstruct``); ``[]`` for anything else."""
    node = value.node()
    if node.kind() != "prim::ListConstruct":
        return []
    return [v.type().sizes() if v.isCompleteTensor() else None for v in node.inputs()]


def _rnn_flop(inputs, outputs) -> int:
    """``aten::lstm/gru/rnn_*`` (both overloads: ``(input, hx, params, ...)`` and the packed
    ``(data, batch_sizes, hx, params, ...)``): tokens x all weight matrices."""
    weights = rnn_weight_list([_list_shapes(v) for v in inputs[1:]])
    return rnn_macs(_shape(inputs[0], outputs[0].node().kind()), weights)


def _baddbmm_flop(inputs, outputs) -> int:
    """``aten::baddbmm(self, batch1 (n, c, t), batch2 (n, t, d), beta, alpha)``: ``n*c*t*d``."""
    n, c, t = _shape(inputs[1], "aten::baddbmm")
    return n * c * t * _shape(inputs[2], "aten::baddbmm")[-1]


def _linear_scan_flop(inputs, outputs) -> int:
    return scan_macs(_shape(inputs[0], "rv_plugins::linear_scan"))


def _mingru_scan_flop(inputs, outputs) -> int:
    return scan_macs(_shape(outputs[0], "rv_plugins::mingru_scan"))


def _output_elements(inputs, outputs) -> int:
    """Activation count: elements of the first output (the toolkits' convention for their ops)."""
    return scan_macs(_shape(outputs[0], outputs[0].node().kind()))


def flop_handles() -> Dict[str, Handle]:
    """``{node kind: handle}`` of the ops our models run that the tracing counters do not count."""
    handles: Dict[str, Handle] = {kind: _rnn_flop for kind in RNN_KINDS}
    handles.update({"aten::baddbmm": _baddbmm_flop, "rv_plugins::linear_scan": _linear_scan_flop,
                    "rv_plugins::mingru_scan": _mingru_scan_flop})
    return handles


def activation_handles() -> Dict[str, Handle]:
    """``{node kind: handle}`` for the activation counters (mmengine's ``ActivationAnalyzer``, fvcore's
    ``ActivationCountAnalysis``): the output elements of the same ops."""
    return {kind: _output_elements for kind in flop_handles()}


def register_handles(flop_table: Dict[str, Handle], activation_table: Optional[Dict[str, Handle]] = None) -> None:
    """Add our handles to a counter's table of default handles (e.g. fvcore's
    ``fvcore.nn.flop_count._DEFAULT_SUPPORTED_OPS``), in place. A kind the table already has keeps the
    counter's own handle; calling this again changes nothing."""
    for table, handles in ((flop_table, flop_handles()), (activation_table, activation_handles())):
        if table is not None:
            for kind, handle in handles.items():
                table.setdefault(kind, handle)
