"""Plain step-by-step references: the truth every other backend is tested against.

Readable and obviously right; differentiable through ordinary autograd (autograd records every step, so
they are for tests and tiny inputs). Registered as the composite backend ``"reference"``.

* :func:`linear_scan_reference`: ``h_t = a_t * h_{t-1} + b_t``; ``a``, ``b``: ``(B, L, D)``; ``h0``: ``(B, D)``.
* :func:`mingru_scan_reference`: minGRU's gates as ordinary ops (``rv_plugins.ops.gates``), then the step loop.

Half-precision inputs accumulate in float32 (``h0`` is taken in float32 too); results have the inputs' dtype.
"""
from typing import Optional

import torch

from .adjoint import accumulation_dtype
from .checks import check_mingru_inputs
from .gates import gates

__all__ = ["linear_scan_reference", "mingru_scan_reference", "linear_scan", "mingru_scan"]


def linear_scan_reference(a: torch.Tensor, b: torch.Tensor, h0: Optional[torch.Tensor] = None,
                          reverse: bool = False) -> torch.Tensor:
    """Scan ``h_t = a_t h_{t-1} + b_t`` one step at a time; ``reverse`` runs from ``t = L-1`` to 0."""
    acc = accumulation_dtype(a.dtype)
    B, L, D = a.shape
    h = torch.zeros(B, D, dtype=acc, device=a.device) if h0 is None else h0.to(acc)
    out = [None] * L
    steps = range(L - 1, -1, -1) if reverse else range(L)
    for t in steps:
        h = a[:, t].to(acc) * h + b[:, t].to(acc)
        out[t] = h
    return torch.stack(out, dim=1).to(a.dtype)


def mingru_scan_reference(proj: torch.Tensor, h0: Optional[torch.Tensor] = None, reverse: bool = False,
                          bidirectional: bool = False, candidate_act: str = "identity") -> torch.Tensor:
    """Plain-PyTorch ``mingru_scan`` (gates as ordinary ops, the step-by-step scan); autograd throughout.

    Shapes as :func:`rv_plugins.ops.mingru_scan`; the result has ``proj``'s dtype.
    """
    H = check_mingru_inputs(proj, h0, reverse, bidirectional, candidate_act)
    acc = accumulation_dtype(proj.dtype)
    h0 = None if h0 is None else h0.to(acc)
    if not bidirectional:
        a, b = gates(proj, candidate_act)
        return linear_scan_reference(a, b, h0, reverse).to(proj.dtype)
    a_f, b_f = gates(proj[..., :2 * H], candidate_act)
    a_b, b_b = gates(proj[..., 2 * H:], candidate_act)
    h_f = linear_scan_reference(a_f, b_f, None if h0 is None else h0[:, :H], False)
    h_b = linear_scan_reference(a_b, b_b, None if h0 is None else h0[:, H:], True)
    return torch.cat([h_f, h_b], dim=-1).to(proj.dtype)


# the composite backend's entry points (see rv_plugins.ops.registry)
linear_scan = linear_scan_reference
mingru_scan = mingru_scan_reference
