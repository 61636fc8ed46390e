"""``mingru_scan``: minGRU's gates and scan as one op, taken straight from the input projection.

For a projection ``proj = in_proj(x)`` of shape ``(B, L, 2H)`` laid out as ``[gate, candidate]``
(what ``MinGRU.in_proj`` writes: ``gate, candidate = proj.chunk(2, -1)``)::

    z_t = sigmoid(gate_t)                      # update gate
    c_t = act(candidate_t)                     # act = identity, or g (minGRU's positive activation)
    h_t = sigmoid(-gate_t) * h_{t-1} + z_t * c_t

``sigmoid(-gate)`` is ``1 - z`` computed without cancellation. The gates are computed in float32
(float64 for float64 input) *inside* the scan: half-precision inputs keep decays such as 0.999 that
bfloat16 would round to 1.0. The backward recomputes the gates from ``proj`` (nothing of size
``B × L × H`` is stored besides ``proj`` and ``h``) and returns one gradient shaped like ``proj``.

``bidirectional=True`` takes ``(B, L, 4H)`` = ``[gate_fwd, cand_fwd, gate_bwd, cand_bwd]`` and
returns ``(B, L, 2H)`` = ``[h_fwd, h_bwd]`` in one buffer, ``h_fwd`` scanned ``t = 0..L-1`` and
``h_bwd`` scanned ``t = L-1..0`` (``h0``: ``(B, 2H)``, its second half enters at the end).

Backends, routes (eager autograd.Function, custom op under ``torch.compile`` and dispatch modes, the
export backend while tracing or exporting) and double backward are those of
:func:`rv_plugins.ops.linear_scan`. A backend without fused minGRU kernels runs the gates as PyTorch ops
and its scan kernels (:mod:`rv_plugins.ops.gates`).
"""
from typing import List, Optional

import torch
from torch import Tensor

from . import registry
from .adjoint import accumulation_dtype, linear_scan_adjoint
from .checks import CANDIDATE_ACTIVATIONS, check_mingru_inputs
from .gates import composed_backward, composed_forward, g_activation, g_activation_grad
from .reference import mingru_scan_reference
from .scan import DEFAULT, _needs_graph, linear_scan, resolve_backend, route

__all__ = ["mingru_scan", "mingru_scan_forward", "mingru_scan_backward", "mingru_scan_reference",
           "CANDIDATE_ACTIVATIONS", "g_activation", "g_activation_grad", "check_mingru_inputs"]


def _kernels(backend: str, device: torch.device):
    """``(forward, backward)`` of ``backend`` for minGRU: its fused kernels, or gates + its scan kernels."""
    chosen = registry.resolve(None if backend == DEFAULT else backend, device)
    chosen.check_device(device)
    kernels = chosen.load()
    if chosen.has_mingru_kernels():
        return kernels.mingru_forward, kernels.mingru_backward
    return ((lambda *args: composed_forward(kernels.scan_forward, *args)),
            (lambda *args: composed_backward(kernels.scan_backward, *args)))


def _acc_state(h0: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    return None if h0 is None else h0.to(accumulation_dtype(dtype))


def _kernels_forward(proj, h0, reverse, bidirectional, candidate_act, backend) -> Tensor:
    forward, _ = _kernels(backend, proj.device)
    h = forward(proj, _acc_state(h0, proj.dtype), reverse, bidirectional, candidate_act)
    return h.to(proj.dtype).contiguous()


def _kernels_backward(proj, h, h0, grad_h, reverse, bidirectional, candidate_act, backend):
    _, backward = _kernels(backend, proj.device)
    grad_proj, grad_h0 = backward(proj, h, _acc_state(h0, proj.dtype), grad_h.contiguous(), reverse, bidirectional,
                                  candidate_act)
    grad_h0 = None if h0 is None else grad_h0.to(h0.dtype).contiguous()
    return grad_proj.to(proj.dtype).contiguous(), grad_h0


def _differentiable_backward(proj, h, h0, grad_h, reverse, bidirectional, candidate_act, backend):
    """The backward as differentiable ops (gates as PyTorch ops, the linear-scan op for the adjoint
    recurrence): used under ``create_graph=True``, so double backward is exact on every backend."""
    public = None if backend == DEFAULT else backend

    def scan_backward(a, h_d, h0_d, grad_h_d, rev):
        scan = lambda a_, b_, h0_, r: linear_scan(a_, b_.to(a_.dtype), h0_, r, public)  # noqa: E731
        return linear_scan_adjoint(scan, a, h_d, h0_d, grad_h_d, rev)

    grad_proj, grad_h0 = composed_backward(scan_backward, proj, h, h0, grad_h, reverse, bidirectional, candidate_act)
    return grad_proj.to(proj.dtype), None if h0 is None else grad_h0.to(h0.dtype)


def mingru_scan_forward(proj: Tensor, h0: Optional[Tensor], reverse: bool, bidirectional: bool, candidate_act: str,
                        backend: str) -> Tensor:
    """The forward of ``mingru_scan`` without autograd, for code that writes its own ``autograd.Function``
    around it (pair it with :func:`mingru_scan_backward`): ``backend`` is a public name (``"default"`` for
    the device's default). Runs the kernels directly (the custom op under ``torch.compile`` / dispatch modes)."""
    if route(backend) == "op":
        return torch.ops.rv_plugins.mingru_scan(proj, h0, reverse, bidirectional, candidate_act, backend)
    return _kernels_forward(proj, h0, reverse, bidirectional, candidate_act, backend)


def mingru_scan_backward(proj: Tensor, h: Tensor, h0: Optional[Tensor], grad_h: Tensor, reverse: bool,
                         bidirectional: bool, candidate_act: str, backend: str):
    """The backward of ``mingru_scan`` without autograd (the ``rv_plugins::mingru_scan_backward`` op under
    ``torch.compile`` / dispatch modes), for code that writes its own ``autograd.Function`` around the op:
    ``h`` is the op's output, ``backend`` a public name (not a composite one). Returns
    ``(grad_proj, grad_h0 or None)``, ``grad_proj`` contiguous in ``proj``'s shape and dtype; the gates are
    recomputed from ``proj``."""
    if route(backend) == "op":
        grad_proj, grad_h0 = torch.ops.rv_plugins.mingru_scan_backward(proj, h, h0, grad_h.contiguous(), reverse,
                                                                       bidirectional, candidate_act, backend)
        return grad_proj, (None if h0 is None else grad_h0)
    return _kernels_backward(proj, h, h0, grad_h, reverse, bidirectional, candidate_act, backend)


def _backward(proj, h, h0, grad_h, args, run_op: bool):
    if _needs_graph(proj, h, h0, grad_h):
        return _differentiable_backward(proj, h, h0, grad_h, *args)
    if run_op:
        grad_proj, grad_h0 = torch.ops.rv_plugins.mingru_scan_backward(proj, h, h0, grad_h.contiguous(), *args)
        return grad_proj, (None if h0 is None else grad_h0)
    return _kernels_backward(proj, h, h0, grad_h, *args)


class _MinGRUScanFunction(torch.autograd.Function):
    """The eager route: the kernels under autograd, without the custom-op machinery."""

    @staticmethod
    def forward(ctx, proj, h0, reverse, bidirectional, candidate_act, backend):
        h = _kernels_forward(proj, h0, reverse, bidirectional, candidate_act, backend)
        ctx.save_for_backward(proj, h, h0)
        ctx.args = (reverse, bidirectional, candidate_act, backend)
        return h

    @staticmethod
    def backward(ctx, grad_h):
        proj, h, h0 = ctx.saved_tensors
        return (*_backward(proj, h, h0, grad_h, ctx.args, run_op=False), None, None, None, None)


# ----------------------------------------------------------------------------- torch.library ops
@torch.library.custom_op("rv_plugins::mingru_scan", mutates_args=())
def _mingru_scan_op(proj: Tensor, h0: Optional[Tensor], reverse: bool, bidirectional: bool,
                    candidate_act: str, backend: str) -> Tensor:
    """``h`` (B, L, H or 2H), contiguous, in ``proj``'s dtype; ``backend``: a public name or ``"default"``."""
    return _kernels_forward(proj, h0, reverse, bidirectional, candidate_act, backend)


@_mingru_scan_op.register_fake
def _(proj, h0, reverse, bidirectional, candidate_act, backend):
    return proj.new_empty(proj.shape[0], proj.shape[1], proj.shape[-1] // 2)  # H, or 2H bidirectional


@torch.library.custom_op("rv_plugins::mingru_scan_backward", mutates_args=())
def _mingru_scan_backward_op(proj: Tensor, h: Tensor, h0: Optional[Tensor], grad_h: Tensor, reverse: bool,
                             bidirectional: bool, candidate_act: str, backend: str) -> List[Tensor]:
    """``[grad_proj (proj's shape, contiguous), grad_h0]`` (``grad_h0`` empty when ``h0`` is None)."""
    grad_proj, grad_h0 = _kernels_backward(proj, h, h0, grad_h, reverse, bidirectional, candidate_act, backend)
    return [grad_proj, proj.new_empty(0) if grad_h0 is None else grad_h0]


@_mingru_scan_backward_op.register_fake
def _(proj, h, h0, grad_h, reverse, bidirectional, candidate_act, backend):
    grad_h0 = proj.new_empty(0) if h0 is None else torch.empty(h0.shape, dtype=h0.dtype, device=h0.device)
    return [torch.empty(proj.shape, dtype=proj.dtype, device=proj.device), grad_h0]


def _setup_context(ctx, inputs, output):
    proj, h0, reverse, bidirectional, candidate_act, backend = inputs
    ctx.save_for_backward(proj, output, h0)
    ctx.args = (reverse, bidirectional, candidate_act, backend)


def _op_backward(ctx, grad_h):
    proj, h, h0 = ctx.saved_tensors
    return (*_backward(proj, h, h0, grad_h, ctx.args, run_op=True), None, None, None, None)


_mingru_scan_op.register_autograd(_op_backward, setup_context=_setup_context)


def mingru_scan(proj: torch.Tensor, h0: Optional[torch.Tensor] = None, reverse: bool = False,
                bidirectional: bool = False, candidate_act: str = "identity",
                backend: Optional[str] = None) -> torch.Tensor:
    """minGRU gates + scan in one op, from the raw input projection.

    Args:
        proj: ``(B, L, 2H)`` = ``[gate, candidate]`` (``MinGRU.in_proj``'s layout), or ``(B, L, 4H)`` =
            ``[gate_fwd, cand_fwd, gate_bwd, cand_bwd]`` with ``bidirectional=True``. Any strides.
        h0: optional initial state ``(B, H)`` (``(B, 2H)`` = ``[h0_fwd, h0_bwd]`` if bidirectional), any
            floating dtype: taken in the accumulation dtype (float32 for half inputs).
        reverse: scan ``t = L-1 .. 0`` (a bool; not with ``bidirectional``).
        bidirectional: both directions in one call, written into one ``(B, L, 2H)`` buffer.
        candidate_act: ``"identity"`` (the minGRU / VisionGRU papers) or ``"g"`` (VisionGRU's released code).
        backend: as :func:`rv_plugins.ops.linear_scan`.

    Returns:
        ``h``: ``(B, L, H)`` or ``(B, L, 2H)`` in ``proj``'s dtype; gates and state in float32
        (float64 for float64 input). Differentiable w.r.t. ``proj`` and ``h0``, twice as well; the
        backward recomputes the gates and returns one gradient in ``proj``'s layout.
    """
    check_mingru_inputs(proj, h0, reverse, bidirectional, candidate_act)
    how = route(backend)
    if how == "export":
        return registry.export_backend().load().mingru_scan(proj, h0, reverse, bidirectional, candidate_act)
    if how == "composite":
        return registry.get_backend(backend).load().mingru_scan(proj, h0, reverse, bidirectional, candidate_act)
    name = DEFAULT if backend is None else backend
    if how == "op":
        return torch.ops.rv_plugins.mingru_scan(proj, h0, reverse, bidirectional, candidate_act, name)
    if backend is not None:
        resolve_backend(backend, proj.device)  # an unknown name fails here, before autograd
    return _MinGRUScanFunction.apply(proj, h0, reverse, bidirectional, candidate_act, name)
