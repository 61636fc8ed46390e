"""The backward of the linear scan, written once (a leaf module: imports only torch).

For ``h_t = a_t h_{t-1} + b_t`` (scan order ``t = 0..L-1``; ``reverse=True`` runs it from the end) the
gradients are the same recurrence run the other way::

    g_t = dL/dh_t + a_{t+1} g_{t+1}            (a reverse scan of (a_next, grad_h))
    dL/db_t = g_t,   dL/da_t = g_t h_{t-1},   dL/dh0 = a_0 g_0

:func:`linear_scan_adjoint` computes them from any scan function, so every backend that has a forward
scan gets its backward from here (the chunked PyTorch scan, the time-parallel GPU path, and the
differentiable backward used under ``create_graph=True``, where ``scan`` is the op itself).
"""
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor

__all__ = ["accumulation_dtype", "first", "shift", "linear_scan_adjoint"]


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the scans accumulate in: float64 stays float64, everything else float32."""
    return torch.promote_types(dtype, torch.float32)


def first(x: Tensor, reverse: bool) -> Tensor:
    """The first step in scan order: ``(B, L, D)`` -> ``(B, D)``."""
    return x[:, -1] if reverse else x[:, 0]


def shift(x: Tensor, fill: Optional[Tensor], reverse: bool, towards_past: bool) -> Tensor:
    """Shift a ``(B, L, D)`` sequence by one step in scan order, filling the vacated end.

    ``towards_past=True`` gives ``y_t = x_{t-1}`` (``fill``, ``(B, D)`` or zeros, at the first step), else
    ``y_t = x_{t+1}`` (``fill`` at the last step).
    """
    fill = x.new_zeros(x.shape[0], 1, x.shape[2]) if fill is None else fill.unsqueeze(1).to(x.dtype)
    later_first = towards_past != reverse  # take x[:, :-1] and put the fill in front
    return torch.cat([fill, x[:, :-1]], 1) if later_first else torch.cat([x[:, 1:], fill], 1)


ScanFn = Callable[[Tensor, Tensor, Optional[Tensor], bool], Tensor]


def linear_scan_adjoint(scan: ScanFn, a: Tensor, h: Tensor, h0: Optional[Tensor], grad_h: Tensor,
                        reverse: bool) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """``(grad_a, grad_b, grad_h0 or None)`` of ``h = scan(a, b, h0, reverse)`` for the upstream ``grad_h``.

    ``scan(a, b, h0, reverse) -> h`` is any forward scan (it is called once, ``reverse`` flipped). ``a``,
    ``h``, ``grad_h``: ``(B, L, D)``; ``h0``: ``(B, D)`` or ``None``. The arithmetic runs in ``a``'s
    accumulation dtype (:func:`accumulation_dtype`); with differentiable ops and a differentiable ``scan``
    the result is differentiable again (double backward).
    """
    acc = accumulation_dtype(a.dtype)
    a = a.to(acc)
    g = scan(shift(a, None, reverse, towards_past=False), grad_h.to(acc), None, not reverse).to(acc)
    h_prev = shift(h.to(acc), None if h0 is None else h0.to(acc), reverse, towards_past=True)
    grad_h0 = None if h0 is None else first(a, reverse) * first(g, reverse)
    return g * h_prev, g, grad_h0
