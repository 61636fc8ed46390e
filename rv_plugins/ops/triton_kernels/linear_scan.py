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
from .chunk_scan import publish_inclusive, scan_chunk, take_ticket, tile_steps


@triton.jit
def _forward_inputs(A, X, row, k, offs, L, D, REVERSE: tl.constexpr, ACC: tl.constexpr):
    """``(a, x, offsets, mask)`` at scan positions ``k`` of the line starting at ``row * D`` (a tile or one
    step: ``k`` and the channel offsets ``offs`` broadcast), padded with the identity ``(1, 0)``."""
    if REVERSE:
        t = L - 1 - k
    else:
        t = k
    mask = (k < L) & (offs < D)
    at = (row + t.to(tl.int64)) * D + offs
    return tl.load(A + at, mask=mask, other=1.0).to(ACC), tl.load(X + at, mask=mask, other=0.0).to(ACC), at, mask


@triton.jit
def _line_start(FLAGS, H0, D, n_lines, n_chunks, n_dblk, HAS_H0: tl.constexpr, ACC: tl.constexpr,
                BLOCK_D: tl.constexpr):
    """``(line, chunk, batch, channel offsets, h0 of the line or zeros)`` of this program."""
    line, chunk = take_ticket(FLAGS, n_lines, n_chunks)
    b = (line // n_dblk).to(tl.int64)
    offs = (line % n_dblk) * BLOCK_D + tl.arange(0, BLOCK_D)
    if HAS_H0:
        h0 = tl.load(H0 + b * D + offs, mask=offs < D, other=0.0).to(ACC)
    else:
        h0 = tl.zeros([BLOCK_D], ACC)
    return line, chunk, b, offs, h0


@triton.jit
def _linear_scan_fwd_kernel(A, X, H0, OUT, FLAGS, VALS, L, D, n_lines, n_chunks, n_dblk,
                            HAS_H0: tl.constexpr, REVERSE: tl.constexpr, ACC: tl.constexpr,
                            LIMIT: tl.constexpr, HMAX: tl.constexpr, BLOCK_L: tl.constexpr,
                            STEPS: tl.constexpr, BLOCK_D: tl.constexpr):
    line, chunk, b, offs, h_start = _line_start(FLAGS, H0, D, n_lines, n_chunks, n_dblk, HAS_H0, ACC, BLOCK_D)
    k = tile_steps(chunk, BLOCK_L // STEPS, STEPS)
    a, x, at, mask = _forward_inputs(A, X, b * L, k, offs[None, None, :], L, D, REVERSE, ACC)
    hs, h, exact = scan_chunk(a, x, h_start, line, chunk, FLAGS, VALS, n_lines, n_chunks, LIMIT, HMAX,
                              BLOCK_L // STEPS, STEPS, BLOCK_D)
    if exact:
        tl.store(OUT + at, hs.to(OUT.dtype.element_ty), mask=mask)
    else:  # step by step from the exact carried-in state
        for i in tl.range(0, tl.minimum(L - chunk * BLOCK_L, BLOCK_L), loop_unroll_factor=1):
            a_i, x_i, at_i, mask_i = _forward_inputs(A, X, b * L, chunk * BLOCK_L + i, offs, L, D, REVERSE, ACC)
            h = a_i * h + x_i
            tl.store(OUT + at_i, h.to(OUT.dtype.element_ty), mask=mask_i)
        publish_inclusive(FLAGS, VALS, line, chunk, n_lines, n_chunks, h, BLOCK_D)


@triton.jit
def _adjoint_inputs(A, DH, row, j, offs, L, D, REVERSE: tl.constexpr, ACC: tl.constexpr):
    """The backward scan at its positions ``j`` (``k = L - 1 - j`` in the forward's scan order):
    ``(a_{k+1}, grad_h_k, offsets of t_k, mask, offsets of t_{k-1})``; ``a_{k+1}`` is 0 after the last
    step and the identity past the end."""
    k = L - 1 - j
    if REVERSE:
        t, t_next, t_prev = L - 1 - k, L - 2 - k, L - k
    else:
        t, t_next, t_prev = k, k + 1, k - 1
    mask = (j < L) & (offs < D)
    at = (row + t.to(tl.int64)) * D + offs
    a_next = tl.load(A + (row + t_next.to(tl.int64)) * D + offs, mask=mask & (j > 0), other=0.0).to(ACC)
    dh = tl.load(DH + at, mask=mask, other=0.0).to(ACC)
    return tl.where(j < L, a_next, 1.0), dh, at, mask, (row + t_prev.to(tl.int64)) * D + offs


@triton.jit
def _adjoint_outputs(g, OUT, DA, DB, at, at_prev, mask, k, h0, HAS_H0: tl.constexpr, ACC: tl.constexpr):
    """``grad_b = g`` and ``grad_a = g h_{k-1}`` (``h0``, or 0, before the first step)."""
    h_prev = tl.load(OUT + at_prev, mask=mask & (k > 0), other=0.0).to(ACC)
    if HAS_H0:
        h_prev = tl.where(k == 0, h0, h_prev)
    tl.store(DB + at, g.to(DB.dtype.element_ty), mask=mask)
    tl.store(DA + at, (g * h_prev).to(DA.dtype.element_ty), mask=mask)


@triton.jit
def _linear_scan_bwd_kernel(A, OUT, H0, DH, DA, DB, DH0, FLAGS, VALS, L, D, n_lines, n_chunks, n_dblk,
                            HAS_H0: tl.constexpr, REVERSE: tl.constexpr, ACC: tl.constexpr,
                            LIMIT: tl.constexpr, HMAX: tl.constexpr, BLOCK_L: tl.constexpr,
                            STEPS: tl.constexpr, BLOCK_D: tl.constexpr):
    line, chunk, b, offs, h0 = _line_start(FLAGS, H0, D, n_lines, n_chunks, n_dblk, HAS_H0, ACC, BLOCK_D)
    j = tile_steps(chunk, BLOCK_L // STEPS, STEPS)   # backward scan positions: from the last step
    a_next, dh, at, mask, at_prev = _adjoint_inputs(A, DH, b * L, j, offs[None, None, :], L, D, REVERSE, ACC)
    g, g_step, exact = scan_chunk(a_next, dh, tl.zeros([BLOCK_D], ACC), line, chunk, FLAGS, VALS, n_lines,
                                  n_chunks, LIMIT, HMAX, BLOCK_L // STEPS, STEPS, BLOCK_D)
    if exact:
        _adjoint_outputs(g, OUT, DA, DB, at, at_prev, mask, L - 1 - j, h0[None, None, :], HAS_H0, ACC)
        g_first = tl.sum(tl.sum(tl.where(j == L - 1, g, 0.0), axis=1), axis=0)
    else:  # step by step from the exact carried-in state
        for i in tl.range(0, tl.minimum(L - chunk * BLOCK_L, BLOCK_L), loop_unroll_factor=1):
            j_i = chunk * BLOCK_L + i
            a_i, dh_i, at_i, mask_i, at_prev_i = _adjoint_inputs(A, DH, b * L, j_i, offs, L, D, REVERSE, ACC)
            g_step = a_i * g_step + dh_i
            _adjoint_outputs(g_step, OUT, DA, DB, at_i, at_prev_i, mask_i, L - 1 - j_i, h0, HAS_H0, ACC)
        publish_inclusive(FLAGS, VALS, line, chunk, n_lines, n_chunks, g_step, BLOCK_D)
        g_first = g_step       # the last step walked is position 0 in the last chunk
    if HAS_H0:
        if chunk == n_chunks - 1:  # holds scan position 0
            if REVERSE:
                t_first = L - 1
            else:
                t_first = 0
            a_first = tl.load(A + (b * L + t_first) * D + offs, mask=offs < D, other=0.0).to(ACC)
            tl.store(DH0 + b * D + offs, (g_first * a_first).to(DH0.dtype.element_ty), mask=offs < D)


def _grid(B: int, L: int, D: int, dtype: torch.dtype):
    config = configs.choose(L, D, dtype)
    n_dblk = triton.cdiv(D, config.block_d)
    n_chunks = triton.cdiv(L, config.block_l)
    return config, B * n_dblk, n_chunks, n_dblk


def scan_forward(a: torch.Tensor, b: torch.Tensor, h0: Optional[torch.Tensor], reverse: bool) -> torch.Tensor:
    """``h`` (B, L, D), contiguous, in ``a``'s dtype; ``a``, ``b`` (B, L, D) of one dtype, ``h0`` (B, D) of
    any floating dtype (read in the accumulation dtype) or None."""
    a, b = launch.aligned(a.contiguous(), b.contiguous())
    B, L, D = a.shape
    h = torch.empty_like(a)
    if h.numel() == 0:
        return h
    config, n_lines, n_chunks, n_dblk = _grid(B, L, D, a.dtype)
    flags, values = launch.workspace(n_lines, n_chunks, config, a.dtype, a.device)
    h0_ = launch.aligned(h0.contiguous())[0] if h0 is not None else a   # a placeholder pointer when absent
    _linear_scan_fwd_kernel[(n_lines * n_chunks,)](
        a, b, h0_, h, flags, values, L, D, n_lines, n_chunks, n_dblk, HAS_H0=h0 is not None,
        REVERSE=bool(reverse), **launch.kernel_constants(a.dtype, config))
    return h


def scan_backward(a: torch.Tensor, h: torch.Tensor, h0: Optional[torch.Tensor], grad_h: torch.Tensor,
                  reverse: bool) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """``(grad_a, grad_b, grad_h0 or None)``: ``grad_a``/``grad_b`` (B, L, D) in ``a``'s dtype,
    ``grad_h0`` in ``h0``'s."""
    a, h, grad_h = launch.aligned(a.contiguous(), h.to(a.dtype).contiguous(), grad_h.to(a.dtype).contiguous())
    B, L, D = a.shape
    grad_a, grad_b = torch.empty_like(a), torch.empty_like(a)
    grad_h0 = None if h0 is None else torch.empty(h0.shape, dtype=h0.dtype, device=h0.device)
    if grad_a.numel() == 0:
        return grad_a, grad_b, None if grad_h0 is None else grad_h0.zero_()
    config, n_lines, n_chunks, n_dblk = _grid(B, L, D, a.dtype)
    flags, values = launch.workspace(n_lines, n_chunks, config, a.dtype, a.device)
    h0_ = launch.aligned(h0.contiguous())[0] if h0 is not None else a
    _linear_scan_bwd_kernel[(n_lines * n_chunks,)](
        a, h, h0_, grad_h, grad_a, grad_b, grad_h0 if grad_h0 is not None else a, flags, values, L, D,
        n_lines, n_chunks, n_dblk, HAS_H0=h0 is not None, REVERSE=bool(reverse),
        **launch.kernel_constants(a.dtype, config))
    return grad_a, grad_b, grad_h0
