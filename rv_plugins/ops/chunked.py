"""Vectorised pure-PyTorch scan in two levels of chunks (any device, no compilation).

The sequence of length ``L`` is cut into ``N`` chunks of ``T ≈ sqrt(L)`` steps. Level 1 scans all
chunks at once, step by step inside a chunk (``T`` vectorised steps over ``B × N × D``), also
keeping the running product of ``a``. Level 2 carries the chunk-end states across chunks
(``N`` steps over ``B × D``). A final element-wise fix-up adds ``prod(a) * carry_in``. That is
``T + N ≈ 2 sqrt(L)`` Python steps instead of ``L``; no ``L × L`` matrix and no logarithms, so it
is exact for any sign of ``a`` (the log-space formulation is not).

Special values: the chunk decomposition adds ``local + prod * carry``, which can be ``inf - inf`` where
the step-by-step scan multiplies an infinite decay by a finite state; every sequence (batch, channel)
whose result is not finite is therefore scanned again step by step (vectorised over those sequences
only), so ``±inf`` and NaN come out as the reference gives them, at no cost when all is finite.

This is the portable fallback of the ``"torch"`` backend (registered as ``"chunked"``; the compiled CPU
kernel in ``cpu_kernel.py`` is the fast path on the CPU). Reverse scans flip the inputs.
"""
import math
from typing import Optional

import torch

from .adjoint import accumulation_dtype, linear_scan_adjoint

__all__ = ["scan_chunked", "scan_forward", "scan_backward"]


def _forward_scan(a: torch.Tensor, b: torch.Tensor, h0: Optional[torch.Tensor]) -> torch.Tensor:
    """Forward-direction scan in ``acc`` precision; ``a``, ``b``: (B, L, D) -> (B, L, D)."""
    B, L, D = a.shape
    T = max(1, int(math.ceil(math.sqrt(L))))
    N = -(-L // T)
    pad = N * T - L
    if pad:  # padding at the end never influences earlier steps
        a = torch.cat([a, a.new_ones(B, pad, D)], dim=1)
        b = torch.cat([b, b.new_zeros(B, pad, D)], dim=1)
    a4 = a.view(B, N, T, D)
    b4 = b.view(B, N, T, D)
    local = torch.empty_like(b4)
    prod = torch.empty_like(a4)
    local[:, :, 0] = b4[:, :, 0]
    prod[:, :, 0] = a4[:, :, 0]
    for t in range(1, T):
        torch.addcmul(b4[:, :, t], a4[:, :, t], local[:, :, t - 1], out=local[:, :, t])
        torch.mul(a4[:, :, t], prod[:, :, t - 1], out=prod[:, :, t])
    carry = a.new_zeros(B, N, D)  # state entering each chunk
    h = a.new_zeros(B, D) if h0 is None else h0
    for n in range(N):
        carry[:, n] = h
        h = _add_carry(local[:, n, -1], prod[:, n, -1], h)
    out = _add_carry(local, prod, carry.unsqueeze(2)).view(B, N * T, D)
    return out[:, :L]


def _add_carry(local: torch.Tensor, prod: torch.Tensor, carry: torch.Tensor) -> torch.Tensor:
    """``local + prod * carry``, but exactly ``local`` where ``carry == 0``: a product of decays that
    overflowed to ``±inf`` must not turn a zero state into NaN (the step-by-step scan gives 0)."""
    return torch.where(carry == 0, local, torch.addcmul(local, prod, carry))


def _rescan_non_finite(a: torch.Tensor, b: torch.Tensor, h0: Optional[torch.Tensor], h: torch.Tensor) -> torch.Tensor:
    """Recompute, step by step, every sequence (batch, channel) of the forward scan ``h`` that is not finite."""
    bad = ~torch.isfinite(h).all(dim=1)                    # (B, D)
    if not bool(bad.any()):
        return h
    bi, di = bad.nonzero(as_tuple=True)
    a_s, b_s = a[bi, :, di], b[bi, :, di]                  # (n, L)
    state = torch.zeros_like(a_s[:, 0]) if h0 is None else h0[bi, di]
    steps = []
    for t in range(a_s.shape[1]):
        state = a_s[:, t] * state + b_s[:, t]
        steps.append(state)
    h[bi, :, di] = torch.stack(steps, 1)
    return h


def scan_chunked(a: torch.Tensor, b: torch.Tensor, h0: Optional[torch.Tensor] = None,
                 reverse: bool = False) -> torch.Tensor:
    """Scan without autograd bookkeeping; ``a``, ``b``: ``(B, L, D)`` (any strides), ``h0``: ``(B, D)`` or
    None; returns ``h`` ``(B, L, D)`` in the accumulation dtype (>= float32)."""
    acc = accumulation_dtype(a.dtype)
    a, b = a.to(acc).contiguous(), b.to(acc).contiguous()
    h0 = None if h0 is None else h0.to(acc)
    if reverse:
        a, b = a.flip(1), b.flip(1)
    h = _rescan_non_finite(a, b, h0, _forward_scan(a, b, h0))
    return h.flip(1) if reverse else h


# the backend's kernels (see rv_plugins.ops.registry)
scan_forward = scan_chunked


def scan_backward(a, h, h0, grad_h, reverse):
    """``(grad_a, grad_b, grad_h0 or None)``: one chunked scan of ``(a_next, grad_h)`` the other way."""
    return linear_scan_adjoint(scan_chunked, a, h, h0, grad_h, reverse)
