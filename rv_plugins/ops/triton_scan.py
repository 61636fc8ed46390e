"""Fused Triton kernels for the scan (the CUDA default backend).

Design (why this should run near the GPU's memory bandwidth):

* **One pass over memory per direction.** Program ``(b, d-block)`` owns ``BLOCK_D`` channels of one
  sequence and walks along ``L`` in tiles of ``BLOCK_L`` steps. Each tile of ``a`` and ``b`` is
  loaded once (coalesced: the channels of a step are contiguous), scanned in registers with
  ``tl.associative_scan`` over the pair operator ``(a1, b1) ∘ (a2, b2) = (a1 a2, a2 b1 + b2)``,
  combined with the carried state, and ``h`` is stored once. Nothing of size ``L × L`` or per chunk
  is materialised: the only state crossing tiles is one ``BLOCK_D`` vector in registers.
* **The backward is the same kernel shape**: a reverse scan of ``(a_{t+1}, dL/dh_t)`` that reads
  ``a``, ``dh`` and ``h`` once and writes ``da`` and ``db`` once (plus ``dh0``).
* **Latency hiding**: the tile loop's loads do not depend on the carried state, so the compiler
  pipelines the next tile's loads under the current tile's scan. With ``B × ceil(D / BLOCK_D)``
  programs (e.g. 8 × 96 / 16 = 48 at VisionGRU stage 1), small batches leave SMs idle; there
  ``BLOCK_D`` shrinks to raise the program count (see ``_block_sizes``).
* float16/bfloat16/float32 accumulate in float32 (float64 in float64) and are stored back in the
  input dtype.

On a machine without a GPU the kernels run under ``TRITON_INTERPRET=1`` (set before importing this
module) for testing against the reference; that path is slow and not meant for training.
"""
import os
from typing import Optional

import torch
import triton
import triton.language as tl

from .adjoint import linear_scan_adjoint
from .gates import composed_backward, composed_forward


def check_device(device: torch.device) -> None:
    """Raise a clear error when the Triton backend cannot run on ``device``."""
    if device.type == "cuda":
        return
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        return
    raise RuntimeError(f"linear_scan(backend='triton') needs CUDA tensors, got tensors on {device}. "
                       "Use backend='torch' (the CPU default) or backend=None, or set TRITON_INTERPRET=1 "
                       "before importing rv_plugins to run the Triton kernels in the (slow) interpreter.")


@triton.jit
def _combine(a1, b1, a2, b2):
    # a2 * b1 is skipped where b1 == 0: a product of decays may have overflowed to inf, and the
    # step-by-step scan never multiplies it by a zero state (inf * 0 would be NaN).
    return a1 * a2, tl.where(b1 == 0, b2, a2 * b1 + b2)


@triton.jit
def _apply(a_cum, b_cum, h):
    """``a_cum * h + b_cum`` for a carried-in state ``h`` (broadcast over rows), ``b_cum`` where ``h == 0``."""
    return tl.where(h[None, :] == 0, b_cum, a_cum * h[None, :] + b_cum)


@triton.jit
def _last_row(x, BLOCK_L: tl.constexpr):
    """Row ``BLOCK_L - 1`` of a ``(BLOCK_L, BLOCK_D)`` tile: the state carried into the next tile."""
    return tl.sum(tl.where((tl.arange(0, BLOCK_L) == BLOCK_L - 1)[:, None], x, 0.0), axis=0)


@triton.jit
def _load_state(H0, row, offs_d, mask_d, HAS_H0: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    """The initial state ``H0[row, offs_d]`` (zeros without ``HAS_H0``)."""
    if HAS_H0:
        h = tl.load(H0 + row + offs_d, mask=mask_d, other=0.0).to(ACC)
    else:
        h = tl.zeros([BLOCK_D], dtype=ACC)
    return h


@triton.jit
def _load_tile(A, X, base, k, L, D, offs_d, mask_d, REVERSE: tl.constexpr, ACC: tl.constexpr):
    """Scan positions ``k`` (``t = k``, or ``L - 1 - k`` with ``REVERSE``) of ``a`` and ``b``: returns
    ``(a, b, ptr, mask)``; padding is the identity ``(1, 0)``."""
    if REVERSE:
        t = L - 1 - k
    else:
        t = k
    mask = (k < L)[:, None] & mask_d[None, :]
    ptr = base + t.to(tl.int64)[:, None] * D + offs_d[None, :]
    a = tl.load(A + ptr, mask=mask, other=1.0).to(ACC)
    b = tl.load(X + ptr, mask=mask, other=0.0).to(ACC)
    return a, b, ptr, mask


@triton.jit
def _scan_fwd_kernel(A, X, H0, H, L, D, HAS_H0: tl.constexpr, REVERSE: tl.constexpr,
                     BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    pid_b = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    h = _load_state(H0, pid_b * D, offs_d, mask_d, HAS_H0, BLOCK_D, ACC)
    base = pid_b * L * D
    rows = tl.arange(0, BLOCK_L)
    for k0 in range(0, L, BLOCK_L):
        a, b, ptr, mask = _load_tile(A, X, base, k0 + rows, L, D, offs_d, mask_d, REVERSE, ACC)
        a_cum, b_cum = tl.associative_scan((a, b), 0, _combine)
        hs = _apply(a_cum, b_cum, h)
        tl.store(H + ptr, hs.to(H.dtype.element_ty), mask=mask)
        h = _last_row(hs, BLOCK_L)


@triton.jit
def _scan_bwd_kernel(A, H, H0, DH, DA, DB, DH0, L, D, HAS_H0: tl.constexpr, REVERSE: tl.constexpr,
                     BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    pid_b = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    base = pid_b * L * D
    rows = tl.arange(0, BLOCK_L)
    g = tl.zeros([BLOCK_D], dtype=ACC)
    h0 = _load_state(H0, pid_b * D, offs_d, mask_d, HAS_H0, BLOCK_D, ACC)
    for j0 in range(0, L, BLOCK_L):
        k = L - 1 - (j0 + rows)          # scan-order index, walked from the end
        valid = k >= 0
        if REVERSE:
            t = L - 1 - k
            t_next = t - 1
            t_prev = t + 1
        else:
            t = k
            t_next = t + 1
            t_prev = t - 1
        has_next = valid & (k + 1 < L)
        has_prev = valid & (k > 0)
        mask = valid[:, None] & mask_d[None, :]
        ptr = base + t.to(tl.int64)[:, None] * D + offs_d[None, :]
        ptr_next = base + t_next.to(tl.int64)[:, None] * D + offs_d[None, :]
        ptr_prev = base + t_prev.to(tl.int64)[:, None] * D + offs_d[None, :]
        a_next = tl.load(A + ptr_next, mask=has_next[:, None] & mask_d[None, :], other=0.0).to(ACC)
        a_next = tl.where(valid[:, None], a_next, 1.0)
        dh = tl.load(DH + ptr, mask=mask, other=0.0).to(ACC)
        a_cum, b_cum = tl.associative_scan((a_next, dh), 0, _combine)
        gs = _apply(a_cum, b_cum, g)
        h_prev = tl.load(H + ptr_prev, mask=has_prev[:, None] & mask_d[None, :], other=0.0).to(ACC)
        if HAS_H0:
            h_prev = tl.where((valid & (k == 0))[:, None], h0[None, :], h_prev)
        tl.store(DB + ptr, gs.to(DB.dtype.element_ty), mask=mask)
        tl.store(DA + ptr, (gs * h_prev).to(DA.dtype.element_ty), mask=mask)
        g = _last_row(gs, BLOCK_L)
    if HAS_H0:
        if REVERSE:
            t_first = L - 1
        else:
            t_first = 0
        a_first = tl.load(A + base + t_first * D + offs_d, mask=mask_d, other=0.0).to(ACC)
        tl.store(DH0 + pid_b * D + offs_d, (a_first * g).to(DH0.dtype.element_ty), mask=mask_d)


def _acc(dtype: torch.dtype):
    """Accumulation dtype: float64 stays float64, everything else accumulates in float32."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def _block_sizes(B: int, L: int, D: int):
    block_d = min(triton.next_power_of_2(D), 32)
    while block_d > 8 and B * triton.cdiv(D, block_d) < 128:  # more programs for small batches
        block_d //= 2
    block_l = min(triton.next_power_of_2(L), 64)
    return block_l, block_d


def scan_forward(a: torch.Tensor, b: torch.Tensor, h0: Optional[torch.Tensor], reverse: bool) -> torch.Tensor:
    """(B, L, D) -> h (B, L, D) in the inputs' dtype (the chunked scan when ``use_chunked``)."""
    a, b = a.contiguous(), b.contiguous()
    B, L, D = a.shape
    if a.numel() and use_chunked(B, L, D):
        return scan_forward_chunked(a, b, h0, reverse)
    h = torch.empty_like(a)
    if h.numel() == 0:  # B = 0 or D = 0: nothing to launch
        return h
    h0_ = h0.contiguous() if h0 is not None else a  # dummy pointer when absent
    block_l, block_d = _block_sizes(B, L, D)
    _scan_fwd_kernel[(B, triton.cdiv(D, block_d))](a, b, h0_, h, L, D, HAS_H0=h0 is not None,
                                                    REVERSE=bool(reverse), BLOCK_L=block_l, BLOCK_D=block_d, ACC=_acc(a.dtype))
    return h


def scan_backward(a, h, h0, grad_h, reverse):
    """Returns ``(grad_a, grad_b, grad_h0 or None)``."""
    a, h, grad_h = a.contiguous(), h.contiguous(), grad_h.contiguous()
    B, L, D = a.shape
    if a.numel() and use_chunked(B, L, D):
        return scan_backward_chunked(a, h, h0, grad_h, reverse)
    grad_a, grad_b = torch.empty_like(a), torch.empty_like(a)
    grad_h0 = torch.empty_like(h0) if h0 is not None else None
    if grad_a.numel() == 0:
        return grad_a, grad_b, grad_h0
    h0_ = h0.contiguous() if h0 is not None else a
    block_l, block_d = _block_sizes(B, L, D)
    _scan_bwd_kernel[(B, triton.cdiv(D, block_d))](
        a, h, h0_, grad_h, grad_a, grad_b, grad_h0 if grad_h0 is not None else a, L, D,
        HAS_H0=h0 is not None, REVERSE=bool(reverse), BLOCK_L=block_l, BLOCK_D=block_d, ACC=_acc(a.dtype))
    return grad_a, grad_b, grad_h0



# ----------------------------------------------------------------------------- chunked (time-parallel) scan
# When B x D is small and L large (VisionGRU at 1024²: B = 1, L = 65,536), one program per channel
# block walking all of L leaves most SMs idle. The chunked scan cuts L into chunks of CHUNK steps and
# runs three launches: (1) every (batch, chunk, channel block) scans its chunk from a zero state and
# writes the chunk's summary (product of decays, end state); (2) one short sequential pass per
# (batch, channel block) over the n_chunks summaries gives the state entering each chunk; (3) every
# chunk is replayed from its carry-in and h is stored. Reads a and b twice, writes h once.
@triton.jit
def _chunk_summary_kernel(A, X, S_A, S_B, L, D, n_chunks, REVERSE: tl.constexpr, CHUNK: tl.constexpr,
                          BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    pid_b = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1)
    offs_d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    base = pid_b * L * D
    rows = tl.arange(0, BLOCK_L)
    pa = tl.full([BLOCK_D], 1.0, ACC)
    pb = tl.zeros([BLOCK_D], dtype=ACC)
    for k0 in range(0, CHUNK, BLOCK_L):
        a, b, ptr, mask = _load_tile(A, X, base, c * CHUNK + k0 + rows, L, D, offs_d, mask_d, REVERSE, ACC)
        a_cum, b_cum = tl.associative_scan((a, b), 0, _combine)
        pa, pb = _combine(pa, pb, _last_row(a_cum, BLOCK_L), _last_row(b_cum, BLOCK_L))
    out = (pid_b * n_chunks + c) * D + offs_d
    tl.store(S_A + out, pa, mask=mask_d)
    tl.store(S_B + out, pb, mask=mask_d)


@triton.jit
def _chunk_carry_kernel(S_A, S_B, H0, CARRY, D, n_chunks, HAS_H0: tl.constexpr, BLOCK_D: tl.constexpr,
                        ACC: tl.constexpr):
    pid_b = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    h = _load_state(H0, pid_b * D, offs_d, mask_d, HAS_H0, BLOCK_D, ACC)
    for c in range(0, n_chunks):
        off = (pid_b * n_chunks + c) * D + offs_d
        tl.store(CARRY + off, h, mask=mask_d)
        sa = tl.load(S_A + off, mask=mask_d, other=1.0)
        sb = tl.load(S_B + off, mask=mask_d, other=0.0)
        h = tl.where(h == 0, sb, sa * h + sb)


@triton.jit
def _chunk_replay_kernel(A, X, CARRY, H, L, D, n_chunks, REVERSE: tl.constexpr, CHUNK: tl.constexpr,
                         BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    pid_b = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1)
    offs_d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    base = pid_b * L * D
    rows = tl.arange(0, BLOCK_L)
    h = tl.load(CARRY + (pid_b * n_chunks + c) * D + offs_d, mask=mask_d, other=0.0)
    for k0 in range(0, CHUNK, BLOCK_L):
        a, b, ptr, mask = _load_tile(A, X, base, c * CHUNK + k0 + rows, L, D, offs_d, mask_d, REVERSE, ACC)
        a_cum, b_cum = tl.associative_scan((a, b), 0, _combine)
        hs = _apply(a_cum, b_cum, h)
        tl.store(H + ptr, hs.to(H.dtype.element_ty), mask=mask)
        h = _last_row(hs, BLOCK_L)


CHUNK = 256
_CHUNK_BLOCK_D = {}  # (D, dtype) -> BLOCK_D chosen by timing on the GPU (autotuned on D)


def use_chunked(B: int, L: int, D: int) -> bool:
    """The chunked scan when one program per (batch, channel block) would leave an H100's 132 SMs
    mostly idle and the sequence is long enough to cut into >= 8 chunks."""
    _, block_d = _block_sizes(B, L, D)
    return B * triton.cdiv(D, block_d) < 132 and L >= 8 * CHUNK


def _chunk_launch(a, b, h0, reverse, block_d):
    B, L, D = a.shape
    n_chunks = triton.cdiv(L, CHUNK)
    block_l = min(64, CHUNK)
    s_a = torch.empty(B, n_chunks, D, device=a.device, dtype=torch.float32)
    s_b, carry = torch.empty_like(s_a), torch.empty_like(s_a)
    h = torch.empty_like(a)
    acc = _acc(a.dtype)
    if acc == tl.float64:
        s_a, s_b, carry = s_a.double(), s_b.double(), carry.double()
    nd = triton.cdiv(D, block_d)
    _chunk_summary_kernel[(B, n_chunks, nd)](a, b, s_a, s_b, L, D, n_chunks, REVERSE=bool(reverse), CHUNK=CHUNK,
                                             BLOCK_L=block_l, BLOCK_D=block_d, ACC=acc)
    h0_ = h0.to(s_a.dtype).contiguous() if h0 is not None else s_a
    _chunk_carry_kernel[(B, nd)](s_a, s_b, h0_, carry, D, n_chunks, HAS_H0=h0 is not None, BLOCK_D=block_d, ACC=acc)
    _chunk_replay_kernel[(B, n_chunks, nd)](a, b, carry, h, L, D, n_chunks, REVERSE=bool(reverse), CHUNK=CHUNK,
                                            BLOCK_L=block_l, BLOCK_D=block_d, ACC=acc)
    return h


def _chunk_block_d(a, b, h0, reverse) -> int:
    """BLOCK_D for the chunked scan: timed once per (D, dtype) on a GPU among 16/32/64; 32 otherwise."""
    D = a.shape[-1]
    if a.device.type != "cuda":
        return min(32, triton.next_power_of_2(D))
    key = (D, a.dtype)
    if key not in _CHUNK_BLOCK_D:
        from triton.testing import do_bench
        candidates = [bd for bd in (16, 32, 64) if bd <= max(16, triton.next_power_of_2(D))]
        _CHUNK_BLOCK_D[key] = min(candidates, key=lambda bd: do_bench(lambda: _chunk_launch(a, b, h0, reverse, bd),
                                                                         warmup=5, rep=20))
    return _CHUNK_BLOCK_D[key]


def scan_forward_chunked(a: torch.Tensor, b: torch.Tensor, h0: Optional[torch.Tensor], reverse: bool) -> torch.Tensor:
    """Time-parallel scan, (B, L, D) -> h (B, L, D) in the inputs' dtype (see above)."""
    a, b = a.contiguous(), b.contiguous()
    if a.numel() == 0:
        return torch.empty_like(a)
    return _chunk_launch(a, b, h0, reverse, _chunk_block_d(a, b, h0, reverse))


def scan_backward_chunked(a, h, h0, grad_h, reverse):
    """Backward through the chunked forward: ``g`` is the scan of ``(a_next, grad_h)`` the other way."""
    scan = lambda a_, b_, h0_, rev: scan_forward_chunked(a_.to(a.dtype), b_.to(a.dtype), h0_, rev)  # noqa: E731
    return linear_scan_adjoint(scan, a, h, h0, grad_h, reverse)


# ----------------------------------------------------------------------------- fused minGRU scan
@triton.jit
def _sigmoid_pair(gate):
    """``(z, a) = (sigmoid(gate), sigmoid(-gate))``, ``a`` without the cancellation of ``1 - z``."""
    e = tl.exp(-tl.abs(gate))
    s = 1.0 / (1.0 + e)          # sigmoid(|gate|)
    t = e * s                    # sigmoid(-|gate|)
    pos = gate >= 0
    return tl.where(pos, s, t), tl.where(pos, t, s)


@triton.jit
def _gate_ptr(P, b, t, stride_pb, stride_pt, direction, H, offs_d):
    """Pointers to one direction's gate columns at tokens ``t`` (the candidate columns are ``+ H``)."""
    return P + b * stride_pb + t[:, None] * stride_pt + direction * 2 * H + offs_d[None, :]


@triton.jit
def _gates(p_gate, H, mask, ACT_G: tl.constexpr, ACC: tl.constexpr):
    """Loads gate and candidate at ``p_gate`` / ``p_gate + H``; returns ``(z, a, act(cand), act'(cand))`` in
    the accumulation type, ``z = sigmoid(gate)``, ``a = sigmoid(-gate)``."""
    gate = tl.load(p_gate, mask=mask, other=0.0).to(ACC)
    cand = tl.load(p_gate + H, mask=mask, other=0.0).to(ACC)
    z, a = _sigmoid_pair(gate)
    if ACT_G:
        ec = tl.exp(-tl.abs(cand))
        sc = ec / (1.0 + ec)     # sigmoid(cand) for cand < 0
        c = tl.where(cand >= 0, cand + 0.5, sc)
        dc = tl.where(cand >= 0, 1.0, sc * (1.0 - sc))
    else:
        c = cand
        dc = tl.full(cand.shape, 1.0, cand.dtype)
    return z, a, c, dc


@triton.jit
def _mingru_fwd_kernel(P, H0, OUT, L, H, stride_pb, stride_pt, NDIR: tl.constexpr, REVERSE: tl.constexpr,
                       ACT_G: tl.constexpr, HAS_H0: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
                       ACC: tl.constexpr):
    """Program ``(b * NDIR + direction, channel block)``: gates from ``proj`` then the scan, tile by tile."""
    pid = tl.program_id(0).to(tl.int64)
    b = pid // NDIR
    direction = pid % NDIR
    rev = (direction == 1) | REVERSE
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < H
    W = NDIR * H
    h = _load_state(H0, b * W + direction * H, offs_d, mask_d, HAS_H0, BLOCK_D, ACC)
    rows = tl.arange(0, BLOCK_L)
    for k0 in range(0, L, BLOCK_L):
        k = k0 + rows
        valid = k < L
        t = tl.where(rev, L - 1 - k, k).to(tl.int64)
        mask = valid[:, None] & mask_d[None, :]
        z, a, c, dc = _gates(_gate_ptr(P, b, t, stride_pb, stride_pt, direction, H, offs_d), H, mask, ACT_G, ACC)
        a = tl.where(mask, a, 1.0)       # padding is the identity (1, 0)
        x = tl.where(mask, z * c, 0.0)
        a_cum, b_cum = tl.associative_scan((a, x), 0, _combine)
        hs = _apply(a_cum, b_cum, h)
        tl.store(OUT + (b * L + t[:, None]) * W + direction * H + offs_d[None, :], hs.to(OUT.dtype.element_ty),
                 mask=mask)
        h = _last_row(hs, BLOCK_L)


@triton.jit
def _mingru_bwd_kernel(P, OUT, H0, DOUT, DP, DH0, L, H, stride_pb, stride_pt, NDIR: tl.constexpr,
                       REVERSE: tl.constexpr, ACT_G: tl.constexpr, HAS_H0: tl.constexpr,
                       BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    """Walks scan positions from the last: ``g = dh + a_next g``; gates recomputed from ``proj``;
    writes ``d gate = g z a (c - h_prev)`` and ``d cand = g z act'(cand)`` into ``DP`` (contiguous)."""
    pid = tl.program_id(0).to(tl.int64)
    b = pid // NDIR
    direction = pid % NDIR
    rev = (direction == 1) | REVERSE
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < H
    W = NDIR * H
    col = direction * H + offs_d[None, :]
    rows = tl.arange(0, BLOCK_L)
    g = tl.zeros([BLOCK_D], dtype=ACC)
    h0 = _load_state(H0, b * W + direction * H, offs_d, mask_d, HAS_H0, BLOCK_D, ACC)
    for j0 in range(0, L, BLOCK_L):
        k = L - 1 - (j0 + rows)                      # scan positions, last first
        valid = k >= 0
        t = tl.where(rev, L - 1 - k, k).to(tl.int64)
        t_next = tl.where(rev, t - 1, t + 1)
        t_prev = tl.where(rev, t + 1, t - 1)
        has_next = valid & (k + 1 < L)
        has_prev = valid & (k > 0)
        mask = valid[:, None] & mask_d[None, :]
        z, a, c, dc = _gates(_gate_ptr(P, b, t, stride_pb, stride_pt, direction, H, offs_d), H, mask, ACT_G, ACC)
        gate_next = tl.load(_gate_ptr(P, b, t_next, stride_pb, stride_pt, direction, H, offs_d),
                            mask=has_next[:, None] & mask_d[None, :], other=0.0).to(ACC)
        _, a_next = _sigmoid_pair(gate_next)
        a_next = tl.where(has_next[:, None] & mask_d[None, :], a_next, 0.0)
        a_next = tl.where(valid[:, None], a_next, 1.0)
        dh = tl.load(DOUT + (b * L + t[:, None]) * W + col, mask=mask, other=0.0).to(ACC)
        a_cum, b_cum = tl.associative_scan((a_next, dh), 0, _combine)
        gs = _apply(a_cum, b_cum, g)
        h_prev = tl.load(OUT + (b * L + t_prev[:, None]) * W + col, mask=has_prev[:, None] & mask_d[None, :],
                         other=0.0).to(ACC)
        if HAS_H0:
            h_prev = tl.where((valid & (k == 0))[:, None], h0[None, :], h_prev)
        gz = gs * z
        p_dgate = DP + (b * L + t[:, None]) * (2 * W) + direction * 2 * H + offs_d[None, :]
        tl.store(p_dgate, (gz * a * (c - h_prev)).to(DP.dtype.element_ty), mask=mask)
        tl.store(p_dgate + H, (gz * dc).to(DP.dtype.element_ty), mask=mask)
        g = _last_row(gs, BLOCK_L)
    if HAS_H0:
        t_first = tl.where(rev, L - 1, 0).to(tl.int64)
        gate0 = tl.load(P + b * stride_pb + t_first * stride_pt + direction * 2 * H + offs_d, mask=mask_d,
                        other=0.0).to(ACC)
        _, a0 = _sigmoid_pair(gate0)
        tl.store(DH0 + b * W + direction * H + offs_d, (a0 * g).to(DH0.dtype.element_ty), mask=mask_d)


def _mingru_launch_args(proj, reverse, bidirectional):
    if proj.stride(-1) != 1:
        proj = proj.contiguous()
    ndir = 2 if bidirectional else 1
    B, L, P = proj.shape
    H = P // (2 * ndir)
    block_l, block_d = _block_sizes(B * ndir, L, H) if H > 0 else (1, 1)
    block_l = min(block_l, 32)  # the backward holds ~12 tiles live: 64 x 32 tiles spill registers
    grid = (B * ndir, triton.cdiv(H, block_d))
    meta = dict(NDIR=ndir, REVERSE=bool(reverse) and not bidirectional, BLOCK_L=block_l, BLOCK_D=block_d,
                ACC=_acc(proj.dtype))
    return proj, B, L, H, ndir, grid, meta


def _time_parallel(proj, bidirectional) -> bool:
    """The fused kernel runs one program per (batch, direction, channel block) along all of L; where that
    leaves the GPU idle (VisionGRU at 1024²: B = 1, L = 65,536) the gates are PyTorch ops in float32 and
    the recurrence the time-parallel chunked scan."""
    ndir = 2 if bidirectional else 1
    B, L, W = proj.shape
    return proj.numel() > 0 and use_chunked(B * ndir, L, W // (2 * ndir))


def mingru_forward(proj, h0, reverse, bidirectional, candidate_act):
    """minGRU scan: proj (B, L, 2H|4H) -> h (B, L, H|2H) (fused, or composed where time-parallel pays)."""
    if _time_parallel(proj, bidirectional):
        return composed_forward(scan_forward, proj, h0, reverse, bidirectional, candidate_act)
    return _mingru_forward_fused(proj, h0, reverse, bidirectional, candidate_act)


def mingru_backward(proj, h, h0, grad_h, reverse, bidirectional, candidate_act):
    """Returns ``(grad_proj, grad_h0 or None)`` (fused, or composed where time-parallel pays)."""
    if _time_parallel(proj, bidirectional):
        return composed_backward(scan_backward, proj, h, h0, grad_h, reverse, bidirectional, candidate_act)
    return _mingru_backward_fused(proj, h, h0, grad_h, reverse, bidirectional, candidate_act)


def _mingru_forward_fused(proj, h0, reverse, bidirectional, candidate_act):
    """Fused minGRU scan (see ``rv_plugins.ops.mingru``): proj (B, L, 2H|4H), channel stride 1 (else
    copied) -> h (B, L, H|2H), contiguous, in proj's dtype."""
    proj, B, L, H, ndir, grid, meta = _mingru_launch_args(proj, reverse, bidirectional)
    out = proj.new_empty(B, L, ndir * H)
    if out.numel() == 0:
        return out
    h0_ = h0.contiguous() if h0 is not None else proj
    _mingru_fwd_kernel[grid](proj, h0_, out, L, H, proj.stride(0), proj.stride(1), ACT_G=candidate_act == "g",
                             HAS_H0=h0 is not None, **meta)
    return out


def _mingru_backward_fused(proj, h, h0, grad_h, reverse, bidirectional, candidate_act):
    """Returns ``(grad_proj (B, L, 2H|4H) contiguous, grad_h0 or None)``; gates recomputed from proj."""
    proj, B, L, H, ndir, grid, meta = _mingru_launch_args(proj, reverse, bidirectional)
    grad_proj = torch.empty((B, L, 2 * ndir * H), dtype=proj.dtype, device=proj.device)
    grad_h0 = torch.empty(h0.shape, dtype=h0.dtype, device=proj.device) if h0 is not None else None
    if grad_proj.numel() == 0:
        return grad_proj.zero_(), None if h0 is None else grad_h0.zero_()
    h0_ = h0.contiguous() if h0 is not None else proj  # dummy pointers when absent
    _mingru_bwd_kernel[grid](proj, h.contiguous(), h0_, grad_h.to(proj.dtype).contiguous(), grad_proj,
                             grad_h0 if h0 is not None else proj, L, H, proj.stride(0), proj.stride(1),
                             ACT_G=candidate_act == "g", HAS_H0=h0 is not None, **meta)
    return grad_proj, grad_h0
