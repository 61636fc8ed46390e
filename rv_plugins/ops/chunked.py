"""Vectorised pure-PyTorch scan in two levels of chunks (any device, no compilation).

The sequence of length ``L`` is cut into ``N`` chunks of ``T ≈ sqrt(L)`` steps. Level 1 scans all
chunks at once, step by step inside a chunk (``T`` vectorised steps over ``B × N × D``), also
keeping the running product of ``a``. Level 2 carries the chunk-end states across chunks
(``N`` steps over ``B × D``). A final element-wise fix-up adds ``prod(a) * carry_in``. That is
``T + N ≈ 2 sqrt(L)`` Python steps instead of ``L``; no ``L × L`` matrix and no logarithms, so it
is exact for any sign of ``a`` (the log-space formulation is not).

This is the portable fallback of the ``"torch"`` backend (the compiled CPU kernel in
``cpu_kernel.py`` is the fast path on the CPU). Reverse scans flip the inputs.
"""
import math
from typing import Optional

import torch


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


def scan_chunked(a: torch.Tensor, b: torch.Tensor, h0: Optional[torch.Tensor] = None,
                 reverse: bool = False) -> torch.Tensor:
    """Scan without autograd bookkeeping; returns ``h`` in the accumulation dtype (>= float32)."""
    acc = torch.promote_types(a.dtype, torch.float32)
    a, b = a.to(acc), b.to(acc)
    h0 = None if h0 is None else h0.to(acc)
    if reverse:
        return _forward_scan(a.flip(1), b.flip(1), h0).flip(1)
    return _forward_scan(a, b, h0)
