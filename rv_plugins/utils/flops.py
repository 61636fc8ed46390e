"""FLOP counting for any model: PyTorch's ``FlopCounterMode`` plus handlers for what it misses.

``torch.utils.flop_counter.FlopCounterMode`` (the maintained counter) sees every ATen op and counts
matmuls, convolutions and the CUDA attention kernels. It counts nothing for:

* recurrent kernels: ``nn.LSTM``/``nn.GRU``/``nn.RNN`` reach it as ``aten.lstm``/``aten.gru``/
  ``aten.rnn_tanh``/``aten.rnn_relu`` (under ``torch.inference_mode``) or as the backend kernel
  ``aten.mkldnn_rnn_layer`` (CPU LSTM, oneDNN), ``aten._cudnn_rnn``, ``aten.miopen_rnn``;
  CPU GRU/RNN with autograd decompose into ``mm``/``addmm``, which it already counts;
* the CPU attention kernel ``aten._scaled_dot_product_flash_attention_for_cpu`` (and its backward);
* our scan ops ``torch.ops.rv_plugins.linear_scan`` and ``torch.ops.rv_plugins.mingru_scan``
  (``torch.library`` custom ops: the counter sees them like any ATen op and counts them with the
  handlers below; ``backend="reference"`` runs plain ATen ops instead, whose element-wise work is
  not counted).

Convention: **MACs**, reported as "FLOPs" the way papers, fvcore and mmengine do (one
multiply-accumulate = 1). ``FlopCounterMode`` counts 2 per MAC; :func:`count_flops` halves its
totals. What is counted:

* a recurrent layer: per token and direction, every weight matrix once: ``G*H*(I + H)`` MACs
  (``G`` = 4 LSTM, 3 GRU, 1 RNN; the input and the recurrent matmul, at every step). Gate
  non-linearities and element-wise products are not counted, as for every element-wise op
  (GELU, LayerNorm, softmax, ...) in ``FlopCounterMode``; they are < 1% of an LSTM of width >= 64.
  Backward kernels count twice their forward.
* attention: the ``Q K^T`` and ``P V`` products (``B*heads*Lq*Lk*(E + Ev)`` MACs).
* ``linear_scan`` ``h_t = a_t h_{t-1} + b_t`` over ``(B, L, D)``: ``B*L*D`` MACs (one
  multiply-add per element and step; forward calls only: count in inference). ``mingru_scan``
  counts the same for its recurrence, ``B*L*D`` with ``D`` its output width (``H``, or ``2H``
  bidirectional); its gates are element-wise and not counted (as when they were separate ops).
  Both are reported under ``SCAN_KEY``.

The formulas are written once (``rnn_macs``, ``scan_macs``); :mod:`rv_plugins.utils.jit_flops` gives them to
the toolkits' tracing counters (mmengine's ``get_model_complexity_info``, fvcore / Detectron2's
``FlopCountAnalysis``), which the adapters register them with.
"""
import math
from collections import defaultdict
from typing import Any, Dict, Sequence, Union

import torch
from torch import nn
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

import rv_plugins.ops  # noqa: F401  (registers the torch.ops.rv_plugins ops)

__all__ = ["count_flops", "flop_handlers", "SCAN_KEY", "rnn_macs", "rnn_weight_list", "scan_macs"]

aten = torch.ops.aten
SCAN_KEY = "rv_plugins.linear_scan"


# ----------------------------------------------------------------------------- MAC formulas
# One formula per op, in MACs and on shapes; the FlopCounterMode handlers below (2 units per MAC) and the
# tracing counters' handles (rv_plugins.utils.jit_flops, 1 per MAC) both call these.

def rnn_tokens(input_shape) -> int:
    """Tokens an RNN layer processes: ``(T, N, I)`` / ``(N, T, I)`` or packed ``(sum_T, I)``."""
    return input_shape[0] if len(input_shape) == 2 else input_shape[0] * input_shape[1]


def weight_macs(shapes) -> int:
    """MACs per token of all 2-D weight matrices in ``shapes`` (biases are 1-D and skipped)."""
    return sum(s[0] * s[1] for s in shapes if s is not None and len(s) == 2)


def rnn_macs(input_shape, weight_shapes) -> int:
    """A recurrent layer call: every weight matrix once per token (``G*H*(I + H)`` per layer and direction)."""
    return rnn_tokens(input_shape) * weight_macs(weight_shapes)


def rnn_weight_list(args):
    """The flat parameter list among an RNN op's arguments: the list holding 2-D shapes (an LSTM's
    ``hx`` list holds 3-D ones); ``[]`` when there is none."""
    for arg in args:
        if isinstance(arg, (list, tuple)) and any(s is not None and len(s) == 2 for s in arg):
            return arg
    return []


def scan_macs(shape) -> int:
    """A linear scan over ``shape`` ``(B, L, D)``: one multiply-add per element and step."""
    return math.prod(shape)


# ----------------------------------------------------------------------------- RNN handlers
# Handlers get the op's arguments with tensors replaced by their shapes (FlopCounterMode's
# ``shape_wrapper``) and return FlopCounterMode units: 2 per MAC.

def _rnn_op_flop(input_shape, *args, out_shape=None, **kwargs) -> int:
    """``aten.lstm/gru/rnn_tanh/rnn_relu`` (``.input`` and packed ``.data``)."""
    return 2 * rnn_macs(input_shape, rnn_weight_list(args))


def _mkldnn_rnn_layer_flop(input_shape, w_ih, w_hh, *args, out_shape=None, **kwargs) -> int:
    """One layer and direction of a oneDNN RNN: ``(input, weight_ih, weight_hh, ...)``."""
    return 2 * rnn_macs(input_shape, [w_ih, w_hh])


def _mkldnn_rnn_layer_backward_flop(input_shape, w_ih, w_hh, *args, out_shape=None, **kwargs) -> int:
    return 2 * _mkldnn_rnn_layer_flop(input_shape, w_ih, w_hh)


def _cudnn_rnn_flop(input_shape, weights, *args, out_shape=None, **kwargs) -> int:
    """``_cudnn_rnn`` / ``miopen_rnn``: ``weights`` lists every layer's and direction's matrices."""
    return 2 * rnn_macs(input_shape, weights)


def _cudnn_rnn_backward_flop(input_shape, weights, *args, out_shape=None, **kwargs) -> int:
    return 2 * _cudnn_rnn_flop(input_shape, weights)


# ----------------------------------------------------------------------------- attention
def _sdpa_flop(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query, key, value)


def _sdpa_backward_flop(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out, query, key, value)


# ----------------------------------------------------------------------------- our scan ops
def _linear_scan_flop(a_shape, *args, out_shape=None, **kwargs) -> int:
    """``rv_plugins::linear_scan(a, b, h0, reverse, backend)``: one multiply-add per element."""
    return 2 * scan_macs(a_shape)


def _mingru_scan_flop(proj_shape, *args, out_shape=None, **kwargs) -> int:
    """``rv_plugins::mingru_scan(proj, ...)``: one multiply-add per output element (the recurrence)."""
    return 2 * scan_macs(out_shape)


SCAN_OPS = {torch.ops.rv_plugins.linear_scan: _linear_scan_flop,
            torch.ops.rv_plugins.mingru_scan: _mingru_scan_flop}


def _candidates():
    ops = [
        (("lstm", "gru", "rnn_tanh", "rnn_relu"), _rnn_op_flop),
        (("mkldnn_rnn_layer",), _mkldnn_rnn_layer_flop),
        (("mkldnn_rnn_layer_backward",), _mkldnn_rnn_layer_backward_flop),
        (("_cudnn_rnn", "miopen_rnn"), _cudnn_rnn_flop),
        (("_cudnn_rnn_backward", "miopen_rnn_backward"), _cudnn_rnn_backward_flop),
        (("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_fused_attention_overrideable"),
         _sdpa_flop),
        (("_scaled_dot_product_flash_attention_for_cpu_backward",
          "_scaled_dot_product_fused_attention_overrideable_backward"), _sdpa_backward_flop),
    ]
    for names, fn in ops:
        for name in names:
            if hasattr(aten, name):
                yield getattr(aten, name), fn


def flop_handlers() -> Dict[Any, Any]:
    """The handlers added to ``FlopCounterMode`` (``custom_mapping``), for ops it does not count.

    Ops that PyTorch's own registry already counts keep PyTorch's formula.
    """
    handlers = {op: fn for op, fn in _candidates() if op not in flop_counter.flop_registry}
    handlers.update(SCAN_OPS)
    return handlers


# ----------------------------------------------------------------------------- entry point
def _make_inputs(model: nn.Module, inputs):
    if isinstance(inputs, torch.Tensor):
        return (inputs,), {}
    if isinstance(inputs, dict):
        return (), dict(inputs)
    if isinstance(inputs, (tuple, list)) and inputs and all(isinstance(i, int) for i in inputs):
        ref = next(iter(model.parameters()), None)
        device = ref.device if ref is not None else torch.device("cpu")
        dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
        return (torch.randn(*inputs, device=device, dtype=dtype),), {}
    if isinstance(inputs, (tuple, list)) and all(isinstance(i, torch.Tensor) for i in inputs):
        return tuple(inputs), {}
    raise TypeError("count_flops: inputs must be an input shape (tuple of ints, e.g. (1, 3, 224, 224)), "
                    f"a tensor, a tuple of tensors or a dict of keyword tensors; got {type(inputs).__name__}")


def count_flops(model: nn.Module, inputs: Union[Sequence[int], torch.Tensor, tuple, dict],
                eval_mode: bool = True) -> Dict[str, Any]:
    """Count the MACs ("FLOPs" as papers report them) of one forward pass of ``model``.

    Args:
        model: any ``nn.Module``.
        inputs: an input shape such as ``(1, 3, 224, 224)`` (a random tensor on the model's device
            and dtype is made), a tensor, a tuple of positional tensors, or a dict of keyword tensors.
        eval_mode: run in ``eval()`` (no drop path / dropout), restoring the previous mode after.

    Returns:
        ``dict(total=int MACs, by_op={op name: MACs}, by_module={module path: MACs}, unit='MAC')``.
        ``by_module`` holds FlopCounterMode's module hierarchy (``'Global'`` is the whole model).
    """
    args, kwargs = _make_inputs(model, inputs)
    was_training = model.training
    counter = FlopCounterMode(display=False, custom_mapping=flop_handlers())
    try:
        if eval_mode:
            model.eval()
        with torch.no_grad(), counter:
            model(*args, **kwargs)
    finally:
        model.train(was_training)

    counts = counter.get_flop_counts()
    by_op: Dict[str, int] = defaultdict(int)
    scan_names = {str(op) for op in SCAN_OPS}
    for op, flops in counts.get("Global", {}).items():
        by_op[SCAN_KEY if str(op) in scan_names else str(op)] += flops // 2
    by_module = {name: sum(ops.values()) // 2 for name, ops in counts.items()}
    return dict(total=sum(by_op.values()), by_op=dict(by_op), by_module=by_module, unit="MAC")
