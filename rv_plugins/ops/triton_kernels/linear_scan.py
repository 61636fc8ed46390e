"""Linear scan ``h_t = a_t h_{t-1} + b_t`` over ``(B, L, D)``: forward and backward Triton kernels.

Grid: one program per ``(line, chunk)`` (line = batch x channel block, chunk = ``BLOCK_L`` steps), the
state handed between chunks by decoupled look-back (``chunk_scan.py``). Memory traffic is the floor:
the forward reads ``a`` and ``b`` and writes ``h`` once (3 passes); the backward reads ``a`` (shifted by
one step), ``grad_h`` and ``h`` (shifted) and writes ``grad_a`` and ``grad_b`` once (5 passes).

The backward is the same scan run the other way: ``g_k = grad_h_k + a_{k+1} g_{k+1}`` in scan order,
``grad_b = g``, ``grad_a_k = g_k h_{k-1}``, ``grad_h0 = a_0 g_0`` (``rv_plugins/ops/adjoint.py``).
"""
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from . import configs, launch
from .chunk_scan import scan_chunk, take_ticket


@triton.jit
def _linear_scan_fwd_kernel(A, X, H0, H, FLAGS, VALS, L, D, n_lines, n_chunks, n_dblk,
                            HAS_H0: tl.constexpr, REVERSE: tl.constexpr, ACC: tl.constexpr,
                            LIMIT: tl.constexpr, HMAX: tl.constexpr, BLOCK_L: tl.constexpr,
                            BLOCK_D: tl.constexpr):
    line, chunk = take_ticket(FLAGS, n_lines, n_chunks)
    b = (line // n_dblk).to(tl.int64)
    offs_d = (line % n_dblk) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    k = chunk * BLOCK_L + tl.arange(0, BLOCK_L)  # scan positions
    if REVERSE:
        t = L - 1 - k
    else:
        t = k
    mask = (k < L)[:, None] & mask_d[None, :]
    ptr = (b * L + t.to(tl.int64))[:, None] * D + offs_d[None, :]
    a = tl.load(A + ptr, mask=mask, other=1.0).to(ACC)
    x = tl.load(X + ptr, mask=mask, other=0.0).to(ACC)
    if HAS_H0:
        h_start = tl.load(H0 + b * D + offs_d, mask=mask_d, other=0.0).to(ACC)
    else:
        h_start = tl.zeros([BLOCK_D], ACC)
    hs = scan_chunk(a, x, h_start, line, chunk, FLAGS, VALS, n_lines, n_chunks, LIMIT, HMAX, BLOCK_L, BLOCK_D)
    tl.store(H + ptr, hs.to(H.dtype.element_ty), mask=mask)


@triton.jit
def _linear_scan_bwd_kernel(A, H, H0, DH, DA, DB, DH0, FLAGS, VALS, L, D, n_lines, n_chunks, n_dblk,
                            HAS_H0: tl.constexpr, REVERSE: tl.constexpr, ACC: tl.constexpr,
                            LIMIT: tl.constexpr, HMAX: tl.constexpr, BLOCK_L: tl.constexpr,
                            BLOCK_D: tl.constexpr):
    line, chunk = take_ticket(FLAGS, n_lines, n_chunks)
    b = (line // n_dblk).to(tl.int64)
    offs_d = (line % n_dblk) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    j = chunk * BLOCK_L + tl.arange(0, BLOCK_L)   # position in the backward scan, from the last step
    k = L - 1 - j                                 # scan position of the forward
    valid = j < L
    if REVERSE:
        t, t_next, t_prev = L - 1 - k, L - 2 - k, L - k
    else:
        t, t_next, t_prev = k, k + 1, k - 1
    mask = valid[:, None] & mask_d[None, :]
    row = b * L
    ptr = (row + t.to(tl.int64))[:, None] * D + offs_d[None, :]
    has_next = (valid & (j > 0))[:, None] & mask_d[None, :]
    a_next = tl.load(A + (row + t_next.to(tl.int64))[:, None] * D + offs_d[None, :], mask=has_next,
                     other=0.0).to(ACC)
    a_next = tl.where(valid[:, None], a_next, 1.0)    # 0 after the last step, identity past the end
    dh = tl.load(DH + ptr, mask=mask, other=0.0).to(ACC)
    g = scan_chunk(a_next, dh, tl.zeros([BLOCK_D], ACC), line, chunk, FLAGS, VALS, n_lines, n_chunks, LIMIT,
                   HMAX, BLOCK_L, BLOCK_D)
    has_prev = (valid & (k > 0))[:, None] & mask_d[None, :]
    h_prev = tl.load(H + (row + t_prev.to(tl.int64))[:, None] * D + offs_d[None, :], mask=has_prev,
                     other=0.0).to(ACC)
    if HAS_H0:
        h0 = tl.load(H0 + b * D + offs_d, mask=mask_d, other=0.0).to(ACC)
        h_prev = tl.where((k == 0)[:, None], h0[None, :], h_prev)
    tl.store(DB + ptr, g.to(DB.dtype.element_ty), mask=mask)
    tl.store(DA + ptr, (g * h_prev).to(DA.dtype.element_ty), mask=mask)
    if HAS_H0:
        if chunk == n_chunks - 1:  # holds scan position 0
            first = (k == 0)[:, None]
            g_first = tl.sum(tl.where(first, g, 0.0), axis=0)
            if REVERSE:
                t_first = L - 1
            else:
                t_first = 0
            a_first = tl.load(A + (row + t_first) * D + offs_d, mask=mask_d, other=0.0).to(ACC)
            tl.store(DH0 + b * D + offs_d, (g_first * a_first).to(DH0.dtype.element_ty), mask=mask_d)


def _grid(B: int, L: int, D: int, dtype: torch.dtype):
    config = configs.choose(L, D, dtype)
    n_dblk = triton.cdiv(D, config.block_d)
    n_chunks = triton.cdiv(L, config.block_l)
    return config, B * n_dblk, n_chunks, n_dblk


def scan_forward(a: torch.Tensor, b: torch.Tensor, h0: Optional[torch.Tensor], reverse: bool) -> torch.Tensor:
    """``h`` (B, L, D), contiguous, in ``a``'s dtype; ``a``, ``b`` (B, L, D) of one dtype, ``h0`` (B, D) of
    any floating dtype (read in the accumulation dtype) or None."""
    a, b = a.contiguous(), b.contiguous()
    B, L, D = a.shape
    h = torch.empty_like(a)
    if h.numel() == 0:
        return h
    config, n_lines, n_chunks, n_dblk = _grid(B, L, D, a.dtype)
    flags, values = launch.workspace(n_lines, n_chunks, config, a.dtype, a.device)
    h0_ = h0.contiguous() if h0 is not None else a   # a placeholder pointer when absent
    _linear_scan_fwd_kernel[(n_lines * n_chunks,)](
        a, b, h0_, h, flags, values, L, D, n_lines, n_chunks, n_dblk, HAS_H0=h0 is not None,
        REVERSE=bool(reverse), **launch.kernel_constants(a.dtype, config))
    return h


def scan_backward(a: torch.Tensor, h: torch.Tensor, h0: Optional[torch.Tensor], grad_h: torch.Tensor,
                  reverse: bool) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """``(grad_a, grad_b, grad_h0 or None)``: ``grad_a``/``grad_b`` (B, L, D) in ``a``'s dtype,
    ``grad_h0`` in ``h0``'s."""
    a, h = a.contiguous(), h.to(a.dtype).contiguous()
    grad_h = grad_h.to(a.dtype).contiguous()
    B, L, D = a.shape
    grad_a, grad_b = torch.empty_like(a), torch.empty_like(a)
    grad_h0 = None if h0 is None else torch.empty(h0.shape, dtype=h0.dtype, device=h0.device)
    if grad_a.numel() == 0:
        return grad_a, grad_b, None if grad_h0 is None else grad_h0.zero_()
    config, n_lines, n_chunks, n_dblk = _grid(B, L, D, a.dtype)
    flags, values = launch.workspace(n_lines, n_chunks, config, a.dtype, a.device)
    h0_ = h0.contiguous() if h0 is not None else a
    _linear_scan_bwd_kernel[(n_lines * n_chunks,)](
        a, h, h0_, grad_h, grad_a, grad_b, grad_h0 if grad_h0 is not None else a, flags, values, L, D,
        n_lines, n_chunks, n_dblk, HAS_H0=h0 is not None, REVERSE=bool(reverse),
        **launch.kernel_constants(a.dtype, config))
    return grad_a, grad_b, grad_h0
