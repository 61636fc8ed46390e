"""Fused minGRU scan: the gates computed from the input projection as it is loaded, then the scan.

``proj`` (B, L, 2H) = ``[gate, cand]`` (or (B, L, 4H) = ``[gate_f, cand_f, gate_b, cand_b]`` with
``bidirectional``), any batch/time strides with unit channel stride::

    z = sigmoid(gate), a = sigmoid(-gate), c = act(cand), h_t = a_t h_{t-1} + z_t c_t

Grid and look-back as the linear scan (``chunk_scan.py``); a line is ``(batch, direction, channel
block)``. Passes over memory: forward reads ``proj`` and writes ``h`` (3 passes of ``B L H``); backward
reads ``proj`` (its gate columns twice: the second read, shifted by one step, hits the cache), ``h``
(shifted) and ``grad_h`` and writes ``grad_proj`` (6 passes of ``B L H``: the op's inputs and outputs).

Gates follow the reference's arithmetic (``rv_plugins/ops/mingru.py``: ``torch.sigmoid`` is
``1 / (1 + exp(-x))``), and the backward writes the gradients in the order autograd computes them
(``sigmoid'`` as ``(g (1 - y)) y``), so special values (±inf, NaN) come out where the reference has them.
"""
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from . import configs, launch
from .chunk_scan import publish_inclusive, scan_chunk, take_ticket, tile_steps


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _candidate(cand, ACT_G: tl.constexpr):
    """``act(cand)`` and ``sigmoid(cand)`` (used by g's derivative): g(x) = x + 1/2 (x >= 0), sigmoid(x) below."""
    s = _sigmoid(cand)
    if ACT_G:
        c = tl.where(cand >= 0, cand + 0.5, s)
    else:
        c = cand
    return c, s


@triton.jit
def _forward_inputs(P, b, k, offs, col, L, H, stride_pb, stride_pt, rev, ACT_G: tl.constexpr, ACC: tl.constexpr):
    """The scan's ``(a, x)`` at scan positions ``k`` (a tile or one step; ``k`` and ``offs`` broadcast)
    from ``proj``: ``a = sigmoid(-gate)``, ``x = sigmoid(gate) act(cand)``, padded with the identity
    ``(1, 0)``; also the output positions ``t`` and the mask."""
    t = tl.where(rev, L - 1 - k, k).to(tl.int64)
    mask = (k < L) & (offs < H)
    p_gate = P + b * stride_pb + t * stride_pt + col + offs
    gate = tl.load(p_gate, mask=mask, other=0.0).to(ACC)
    cand = tl.load(p_gate + H, mask=mask, other=0.0).to(ACC)
    c, _ = _candidate(cand, ACT_G)
    return tl.where(mask, _sigmoid(-gate), 1.0), tl.where(mask, _sigmoid(gate) * c, 0.0), t, mask


@triton.jit
def _line(line, n_dblk, NDIR: tl.constexpr, REVERSE: tl.constexpr, BLOCK_D: tl.constexpr):
    """``(batch, direction, channel offsets, scans backwards)`` of a line."""
    dblk = line % n_dblk
    bd = line // n_dblk
    direction = bd % NDIR
    b = (bd // NDIR).to(tl.int64)
    return b, direction, dblk * BLOCK_D + tl.arange(0, BLOCK_D), (direction == 1) | REVERSE


@triton.jit
def _mingru_fwd_kernel(P, H0, OUT, FLAGS, VALS, L, H, stride_pb, stride_pt, n_lines, n_chunks, n_dblk,
                       NDIR: tl.constexpr, REVERSE: tl.constexpr, ACT_G: tl.constexpr, HAS_H0: tl.constexpr,
                       ACC: tl.constexpr, LIMIT: tl.constexpr, HMAX: tl.constexpr, BLOCK_L: tl.constexpr,
                       STEPS: tl.constexpr, BLOCK_D: tl.constexpr):
    line, chunk = take_ticket(FLAGS, n_lines, n_chunks)
    b, direction, offs, rev = _line(line, n_dblk, NDIR, REVERSE, BLOCK_D)
    W = NDIR * H
    if HAS_H0:
        h_start = tl.load(H0 + b * W + direction * H + offs, mask=offs < H, other=0.0).to(ACC)
    else:
        h_start = tl.zeros([BLOCK_D], ACC)
    k = tile_steps(chunk, BLOCK_L // STEPS, STEPS)
    a, x, t, mask = _forward_inputs(P, b, k, offs[None, None, :], direction * 2 * H, L, H, stride_pb, stride_pt,
                                    rev, ACT_G, ACC)
    hs, h, exact = scan_chunk(a, x, h_start, line, chunk, FLAGS, VALS, n_lines, n_chunks, LIMIT, HMAX,
                              BLOCK_L // STEPS, STEPS, BLOCK_D)
    if exact:
        tl.store(OUT + (b * L + t) * W + direction * H + offs[None, None, :], hs.to(OUT.dtype.element_ty),
                 mask=mask)
    else:  # step by step from the exact carried-in state
        for i in tl.range(0, tl.minimum(L - chunk * BLOCK_L, BLOCK_L), loop_unroll_factor=1):
            a_i, x_i, t_i, mask_i = _forward_inputs(P, b, chunk * BLOCK_L + i, offs, direction * 2 * H, L, H,
                                                    stride_pb, stride_pt, rev, ACT_G, ACC)
            h = a_i * h + x_i
            tl.store(OUT + (b * L + t_i) * W + direction * H + offs, h.to(OUT.dtype.element_ty), mask=mask_i)
        publish_inclusive(FLAGS, VALS, line, chunk, n_lines, n_chunks, h, BLOCK_D)


@triton.jit
def _adjoint_inputs(P, DOUT, b, j, offs, col, L, H, W, stride_pb, stride_pt, rev, ACC: tl.constexpr):
    """The backward scan at its positions ``j`` (``k = L - 1 - j`` in the forward's scan order):
    ``(a_{k+1}, grad_h_k, t_k, mask)``; ``a_{k+1}`` from the next step's gate, 0 after the last step and
    the identity past the end."""
    k = L - 1 - j
    t = tl.where(rev, L - 1 - k, k).to(tl.int64)
    t_next = tl.where(rev, t - 1, t + 1)
    mask = (j < L) & (offs < H)
    has_next = mask & (j > 0)
    gate_next = tl.load(P + b * stride_pb + t_next * stride_pt + col + offs, mask=has_next, other=0.0).to(ACC)
    dh = tl.load(DOUT + (b * L + t) * W + col // 2 + offs, mask=mask, other=0.0).to(ACC)
    return tl.where(j < L, tl.where(has_next, _sigmoid(-gate_next), 0.0), 1.0), dh, t, mask


@triton.jit
def _adjoint_outputs(g, P, OUT, DP, b, t, mask, k, h0, offs, col, L, H, W, stride_pb, stride_pt, rev,
                     ACT_G: tl.constexpr, HAS_H0: tl.constexpr, ACC: tl.constexpr):
    """The gates' gradients from ``g = dL/dh`` (autograd's order of operations, term by term) into ``DP``
    (contiguous, proj's layout); returns ``a`` (used by ``dL/dh0 = a_0 g_0``)."""
    p_gate = P + b * stride_pb + t * stride_pt + col + offs
    gate = tl.load(p_gate, mask=mask, other=0.0).to(ACC)
    cand = tl.load(p_gate + H, mask=mask, other=0.0).to(ACC)
    z = _sigmoid(gate)
    a = _sigmoid(-gate)
    c, s = _candidate(cand, ACT_G)
    t_prev = tl.where(rev, t + 1, t - 1)
    h_prev = tl.load(OUT + (b * L + t_prev) * W + col // 2 + offs, mask=mask & (k > 0), other=0.0).to(ACC)
    if HAS_H0:
        h_prev = tl.where(k == 0, h0, h_prev)
    grad_a = g * h_prev
    d_gate = (g * c) * (1.0 - z) * z - grad_a * (1.0 - a) * a
    grad_c = g * z
    if ACT_G:
        d_cand = tl.where(cand >= 0, grad_c, grad_c * (1.0 - s) * s)
    else:
        d_cand = grad_c
    dp_at = (b * L + t) * (2 * W) + col + offs
    tl.store(DP + dp_at, d_gate.to(DP.dtype.element_ty), mask=mask)
    tl.store(DP + dp_at + H, d_cand.to(DP.dtype.element_ty), mask=mask)
    return a


@triton.jit
def _mingru_bwd_kernel(P, OUT, H0, DOUT, DP, DH0, FLAGS, VALS, L, H, stride_pb, stride_pt, n_lines, n_chunks,
                       n_dblk, NDIR: tl.constexpr, REVERSE: tl.constexpr, ACT_G: tl.constexpr,
                       HAS_H0: tl.constexpr, ACC: tl.constexpr, LIMIT: tl.constexpr, HMAX: tl.constexpr,
                       BLOCK_L: tl.constexpr, STEPS: tl.constexpr, BLOCK_D: tl.constexpr):
    """``g_k = grad_h_k + a_{k+1} g_{k+1}`` (scan positions from the last), then the gates' gradients
    into ``DP`` (contiguous, proj's layout) and ``DH0 = a_0 g_0``."""
    line, chunk = take_ticket(FLAGS, n_lines, n_chunks)
    b, direction, offs, rev = _line(line, n_dblk, NDIR, REVERSE, BLOCK_D)
    W = NDIR * H
    col = direction * 2 * H      # the direction's gate columns in proj; its h columns are col // 2
    if HAS_H0:
        h0 = tl.load(H0 + b * W + direction * H + offs, mask=offs < H, other=0.0).to(ACC)
    else:
        h0 = tl.zeros([BLOCK_D], ACC)
    j = tile_steps(chunk, BLOCK_L // STEPS, STEPS)   # backward scan positions: from the last step
    a_next, dh, t, mask = _adjoint_inputs(P, DOUT, b, j, offs[None, None, :], col, L, H, W, stride_pb, stride_pt,
                                          rev, ACC)
    g, g_step, exact = scan_chunk(a_next, dh, tl.zeros([BLOCK_D], ACC), line, chunk, FLAGS, VALS, n_lines,
                                  n_chunks, LIMIT, HMAX, BLOCK_L // STEPS, STEPS, BLOCK_D)
    if exact:
        a = _adjoint_outputs(g, P, OUT, DP, b, t, mask, L - 1 - j, h0[None, None, :], offs[None, None, :], col, L,
                             H, W, stride_pb, stride_pt, rev, ACT_G, HAS_H0, ACC)
        first = j == L - 1
        g_first = tl.sum(tl.sum(tl.where(first, g, 0.0), axis=1), axis=0)
        a_first = tl.sum(tl.sum(tl.where(first, a, 0.0), axis=1), axis=0)
    else:  # step by step from the exact carried-in state
        a_first = tl.zeros([BLOCK_D], ACC)
        for i in tl.range(0, tl.minimum(L - chunk * BLOCK_L, BLOCK_L), loop_unroll_factor=1):
            j_i = chunk * BLOCK_L + i
            a_i, dh_i, t_i, mask_i = _adjoint_inputs(P, DOUT, b, j_i, offs, col, L, H, W, stride_pb, stride_pt, rev,
                                                     ACC)
            g_step = a_i * g_step + dh_i
            a_now = _adjoint_outputs(g_step, P, OUT, DP, b, t_i, mask_i, L - 1 - j_i, h0, offs, col, L, H, W,
                                     stride_pb, stride_pt, rev, ACT_G, HAS_H0, ACC)
            a_first = tl.where(j_i == L - 1, a_now, a_first)
        publish_inclusive(FLAGS, VALS, line, chunk, n_lines, n_chunks, g_step, BLOCK_D)
        g_first = g_step       # the last step walked is position 0 in the last chunk
    if HAS_H0:
        if chunk == n_chunks - 1:  # holds scan position 0
            tl.store(DH0 + b * W + direction * H + offs, (g_first * a_first).to(DH0.dtype.element_ty),
                     mask=offs < H)


def _launch_args(proj: torch.Tensor, reverse: bool, bidirectional: bool):
    if proj.stride(-1) != 1:
        proj = proj.contiguous()
    proj, = launch.aligned(proj)
    ndir = 2 if bidirectional else 1
    B, L, width = proj.shape
    H = width // (2 * ndir)
    config = configs.choose(L, H, proj.dtype)
    n_dblk = triton.cdiv(H, config.block_d)
    n_lines, n_chunks = B * ndir * n_dblk, triton.cdiv(L, config.block_l)
    flags, values = launch.workspace(n_lines, n_chunks, config, proj.dtype, proj.device)
    args = (flags, values, L, H, proj.stride(0), proj.stride(1), n_lines, n_chunks, n_dblk)
    meta = dict(NDIR=ndir, REVERSE=bool(reverse) and not bidirectional, **launch.kernel_constants(proj.dtype, config))
    return proj, B, L, H, ndir, (n_lines * n_chunks,), args, meta


def mingru_forward(proj: torch.Tensor, h0: Optional[torch.Tensor], reverse: bool, bidirectional: bool,
                   candidate_act: str) -> torch.Tensor:
    """``h`` (B, L, H | 2H), contiguous, in ``proj``'s dtype; ``h0`` (B, H | 2H) of any floating dtype,
    read in the accumulation dtype (float32, float64 for float64 ``proj``)."""
    proj, B, L, H, ndir, grid, args, meta = _launch_args(proj, reverse, bidirectional)
    out = proj.new_empty(B, L, ndir * H)
    if out.numel() == 0:
        return out
    h0_ = launch.aligned(h0.contiguous())[0] if h0 is not None else proj
    _mingru_fwd_kernel[grid](proj, h0_, out, *args, ACT_G=candidate_act == "g", HAS_H0=h0 is not None, **meta)
    return out


def mingru_backward(proj: torch.Tensor, h: torch.Tensor, h0: Optional[torch.Tensor], grad_h: torch.Tensor,
                    reverse: bool, bidirectional: bool, candidate_act: str
                    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``(grad_proj, grad_h0 or None)``: ``grad_proj`` contiguous in ``proj``'s shape and dtype, ``grad_h0``
    in ``h0``'s dtype; the gates are recomputed from ``proj``."""
    proj, B, L, H, ndir, grid, args, meta = _launch_args(proj, reverse, bidirectional)
    grad_proj = torch.empty((B, L, 2 * ndir * H), dtype=proj.dtype, device=proj.device)
    grad_h0 = None if h0 is None else torch.empty(h0.shape, dtype=h0.dtype, device=h0.device)
    if grad_proj.numel() == 0:
        return grad_proj.zero_(), None if grad_h0 is None else grad_h0.zero_()
    h0_ = launch.aligned(h0.contiguous())[0] if h0 is not None else proj   # placeholders when absent
    h, grad_h = launch.aligned(h.to(proj.dtype).contiguous(), grad_h.to(proj.dtype).contiguous())
    _mingru_bwd_kernel[grid](proj, h, h0_, grad_h, grad_proj, grad_h0 if grad_h0 is not None else proj, *args,
                             ACT_G=candidate_act == "g", HAS_H0=h0 is not None, **meta)
    return grad_proj, grad_h0
