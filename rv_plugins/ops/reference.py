"""Plain step-by-step reference for the linear recurrence ``h_t = a_t * h_{t-1} + b_t``.

Readable and obviously right; differentiable through ordinary autograd. Everything else in
``rv_plugins.ops`` is tested against it. Shapes: ``a``, ``b``: ``(B, L, D)``; ``h0``: ``(B, D)``.
Half-precision inputs accumulate in float32; the result has the inputs' dtype.
"""
from typing import Optional

import torch


def linear_scan_reference(a: torch.Tensor, b: torch.Tensor, h0: Optional[torch.Tensor] = None,
                          reverse: bool = False) -> torch.Tensor:
    """Scan ``h_t = a_t h_{t-1} + b_t`` one step at a time; ``reverse`` runs from ``t = L-1`` to 0."""
    acc = torch.promote_types(a.dtype, torch.float32)
    B, L, D = a.shape
    h = torch.zeros(B, D, dtype=acc, device=a.device) if h0 is None else h0.to(acc)
    out = [None] * L
    steps = range(L - 1, -1, -1) if reverse else range(L)
    for t in steps:
        h = a[:, t].to(acc) * h + b[:, t].to(acc)
        out[t] = h
    return torch.stack(out, dim=1).to(a.dtype)
