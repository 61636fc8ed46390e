"""A forward and a reverse :class:`~rv_plugins.layers.mingru.MinGRU` over one sequence, summed, as one
input GEMM, one bidirectional :func:`rv_plugins.ops.mingru_scan` and one output projection.

Weights without a copy per forward: :func:`pack_in_proj` puts both directions' ``in_proj`` weights into
one ``(4H, dim)`` buffer and makes the two parameters its row blocks (names, values and state-dict keys
unchanged; each parameter stays contiguous), so the bidirectional input projection is that buffer itself
(:func:`packed_in_proj` checks that the parameters still alias it: loading with ``assign=True``, a
``functional_call`` or an FSDP-style flattening make them separate tensors again and the weights are
concatenated as before). A state dict then holds the two ``in_proj`` weights as views of that one
storage, as the parameters are: ``torch.save`` writes it once; safetensors' ``save_file`` refuses tensors
that share memory (its ``save_model`` handles them). The output projection needs no concatenation off
the CPU: the two directions' GEMMs accumulate into one output (``addmm``). With autograd on the weights,
under ``torch.compile`` and while tracing the weights are concatenated (the graph then holds the
parameters themselves).

Training without storing the projection: :func:`projected_bidirectional_scan` recomputes the ``(B, L, 4H)``
projection in the backward (one more GEMM), in token chunks on long sequences.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from rv_plugins.layers.blocks import refuse_double_backward
from rv_plugins.layers.mingru import (MinGRU, bidirectional_in_proj, bidirectional_scan, can_scan_together,
                                      token_chunks)
from rv_plugins.ops import mingru_scan_backward, mingru_scan_forward, resolve_backend
from rv_plugins.ops.linear import linear
from rv_plugins.ops.modes import is_tracing_or_exporting

__all__ = ["bidirectional_weights", "bidirectional_sum", "projected_bidirectional_scan", "pack_in_proj",
           "packed_in_proj"]


def pack_in_proj(fwd: MinGRU, bwd: MinGRU) -> Optional[torch.Tensor]:
    """Make ``fwd.in_proj.weight`` and ``bwd.in_proj.weight`` the two row blocks of one new ``(4H, dim)``
    buffer (their values kept) and return it; ``None`` (nothing changed) when the pair cannot share one
    bidirectional scan or the two weights differ in shape, dtype or device. The parameters stay the same
    objects (an optimiser holding them is unaffected); ``.data`` is re-pointed."""
    wf, wb = fwd.in_proj.weight, bwd.in_proj.weight
    if (not can_scan_together(fwd, bwd) or wf.shape != wb.shape or wf.dtype != wb.dtype
            or wf.device != wb.device or wf.dim() != 2):
        return None
    with torch.no_grad():
        buffer = torch.cat([wf.detach(), wb.detach()])
    wf.data, wb.data = buffer[:wf.shape[0]], buffer[wf.shape[0]:]
    return buffer


def packed_in_proj(fwd: MinGRU, bwd: MinGRU, buffer: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """``buffer`` if it still holds both ``in_proj`` weights as its row blocks (so it equals
    :func:`bidirectional_in_proj`'s weight without a copy), else ``None``."""
    wf, wb = fwd.in_proj.weight, bwd.in_proj.weight
    n = wf.shape[0]
    if (buffer is None or buffer.dtype != wf.dtype or buffer.device != wf.device
            or buffer.shape != (n + wb.shape[0],) + tuple(wf.shape[1:])):
        return None
    if not (wf.is_contiguous() and wb.is_contiguous() and buffer.is_contiguous()):
        return None
    storage = buffer.untyped_storage().data_ptr()  # storages and offsets: no view is made (fake-tensor safe)
    if (wf.untyped_storage().data_ptr() != storage or wb.untyped_storage().data_ptr() != storage
            or wf.storage_offset() != buffer.storage_offset()
            or wb.storage_offset() != buffer.storage_offset() + wf.numel()):
        return None
    return buffer


def _weights_need_grad(*modules) -> bool:
    return torch.is_grad_enabled() and any(p.requires_grad for m in modules for p in m.parameters())


def _plain_graph() -> bool:
    """Compiling or tracing: the recorded graph must read the parameters themselves."""
    return torch.compiler.is_compiling() or is_tracing_or_exporting()


def _summed_out_bias(fwd: MinGRU, bwd: MinGRU) -> Optional[torch.Tensor]:
    """Both directions' output biases summed (``None`` without biases)."""
    return None if fwd.out_proj.bias is None else fwd.out_proj.bias + bwd.out_proj.bias


def _out_proj_weights(fwd: MinGRU, bwd: MinGRU):
    """``(w_out (out_dim, 2H), b_out (out_dim,) | None)``: the columns ``[h_fwd, h_bwd]`` and the summed bias."""
    return torch.cat([fwd.out_proj.weight, bwd.out_proj.weight], dim=1), _summed_out_bias(fwd, bwd)


def _summed_out_proj(fwd: MinGRU, bwd: MinGRU, h: torch.Tensor) -> torch.Tensor:
    """``fwd.out_proj(h_fwd) + bwd.out_proj(h_bwd)`` for ``h`` ``(B, L, 2H)`` as one GEMM and one ``addmm``
    accumulating into its output (no weight concatenation); ``(B, L, out_dim)``."""
    H = fwd.hidden_dim
    y = F.linear(h[..., :H], fwd.out_proj.weight, _summed_out_bias(fwd, bwd))
    out = torch.addmm(y.reshape(-1, y.shape[-1]), h[..., H:].reshape(-1, H), bwd.out_proj.weight.t())
    return out.view(y.shape)


def bidirectional_weights(fwd: MinGRU, bwd: MinGRU):
    """Both directions' weights as one input and one output projection:
    ``(w_in (4H, dim), b_in (4H,) | None, w_out (out_dim, 2H), b_out (out_dim,) | None)``; ``w_in`` rows are
    ``[gate_fwd, cand_fwd, gate_bwd, cand_bwd]`` (:func:`bidirectional_in_proj`), ``w_out`` columns
    ``[h_fwd, h_bwd]``, ``b_out`` the sum of both output biases (so ``F.linear(h, w_out, b_out)`` is the
    sum of both directions' outputs). Differentiable."""
    return (*bidirectional_in_proj(fwd, bwd), *_out_proj_weights(fwd, bwd))


def bidirectional_sum(fwd: MinGRU, bwd: MinGRU, seq: torch.Tensor, recompute_proj: bool = True,
                      train_chunk_elems: float = 2 ** 21, owner: str = "bidirectional_sum",
                      switch: str = "recompute_proj", packed: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``fwd(seq) + bwd(seq)`` as one input GEMM, one bidirectional scan and one output GEMM.

    ``seq`` ``(B, L, dim)`` -> ``(B, L, out_dim)``; ``fwd``/``bwd`` must pass :func:`can_scan_together`.
    With autograd and ``recompute_proj`` the projection is not stored (:func:`projected_bidirectional_scan`,
    in token chunks when one direction's projection exceeds ``train_chunk_elems`` elements); tracing and
    exporting, the ``'reference'`` backend and ``recompute_proj=False`` run the plain ops (twice
    differentiable). ``owner``/``switch`` name the caller's switch in the double-backward error.
    ``packed``: the buffer :func:`pack_in_proj` returned for this pair, used as the input projection's
    weight when the weights need no gradient (see the module docstring).
    """
    plain = _plain_graph()
    need_grad = _weights_need_grad(fwd, bwd)
    w_in = None if need_grad or plain else packed_in_proj(fwd, bwd, packed)
    b_in = None
    if w_in is None or fwd.in_proj.bias is not None:
        w_in, b_in = bidirectional_in_proj(fwd, bwd)
    backend = resolve_backend(fwd.backend, seq.device)
    if recompute_proj and torch.is_grad_enabled() and backend != "reference" and not is_tracing_or_exporting():
        chunk = max(1, int(train_chunk_elems // max(w_in.shape[0] // 2, 1)))
        h = projected_bidirectional_scan(seq, w_in, b_in, fwd.candidate_act, backend, chunk, owner, switch)
    else:
        h = bidirectional_scan(fwd, bwd, linear(seq, w_in, b_in))
    if seq.device.type != "cpu" and not need_grad:  # the CPU's one fused GEMM stays (oneDNN, tuned)
        return _summed_out_proj(fwd, bwd, h)
    return linear(h, *_out_proj_weights(fwd, bwd))


def projected_bidirectional_scan(seq: torch.Tensor, w_in: torch.Tensor, b_in: Optional[torch.Tensor],
                                 candidate_act: str, backend: str, chunk: int,
                                 owner: str = "projected_bidirectional_scan",
                                 switch: str = "the caller's recompute switch") -> torch.Tensor:
    """``mingru_scan(F.linear(seq, w_in, b_in), bidirectional=True)`` that stores only ``seq`` and the state
    for the backward: the ``(B, L, 4H)`` projection is recomputed there (one more GEMM) instead of kept.

    ``seq`` ``(B, L, dim)``, ``w_in`` ``(4H, dim)`` in :func:`bidirectional_in_proj`'s layout -> ``(B, L, 2H)``;
    ``backend``: a resolved op backend (``'torch'`` / ``'triton'``, not ``'reference'``). Sequences longer
    than ``chunk`` tokens run per direction in token chunks, forward and backward, the state carried through
    ``h0`` and its gradient through ``grad_h0``, so neither the full projection nor its gradient ever
    exists (under autocast the carried state is rounded to the autocast dtype at chunk boundaries; the
    recomputed projection has the forward's dtype). Not twice differentiable: the backward names
    ``owner`` and the ``switch`` that selects the plain ops.
    """
    return _ProjectedBiScan.apply(seq, w_in, b_in, candidate_act, backend, chunk, (owner, switch))


def _direction_slices(two_h: int, d: int) -> Tuple[slice, slice]:
    """Direction ``d``'s rows of the bidirectional ``w_in`` (``[gate, cand]``, ``two_h`` rows) and columns of
    the bidirectional state."""
    return slice(d * two_h, (d + 1) * two_h), slice(d * two_h // 2, (d + 1) * two_h // 2)


class _ProjectedBiScan(torch.autograd.Function):
    """See :func:`projected_bidirectional_scan`."""

    @staticmethod
    def forward(ctx, seq, w_in, b_in, candidate_act, backend, chunk, names):
        B, L, _ = seq.shape
        ctx.args, ctx.chunk, ctx.names = (candidate_act, backend), chunk, names
        if L <= chunk:
            proj = F.linear(seq, w_in, b_in)
            h = mingru_scan_forward(proj, None, False, True, candidate_act, backend)
        else:
            two_h = w_in.shape[0] // 2                     # one direction's [gate, cand] width
            h = None
            for d, reverse in ((0, False), (1, True)):
                rows, cols = _direction_slices(two_h, d)
                w_d, b_d = w_in[rows], None if b_in is None else b_in[rows]
                state = None
                for t0, t1 in token_chunks(L, chunk, reverse):
                    p = F.linear(seq[:, t0:t1], w_d, b_d)
                    hc = mingru_scan_forward(p, state, reverse, False, candidate_act, backend)
                    if h is None:
                        h = p.new_empty(B, L, two_h)
                    h[:, t0:t1, cols] = hc
                    state = (hc[:, 0] if reverse else hc[:, -1]).contiguous()
        ctx.save_for_backward(seq, w_in, b_in, h)
        ctx.proj_dtype = h.dtype
        return h

    @staticmethod
    def backward(ctx, grad_h):
        refuse_double_backward(*ctx.names)
        seq, w_in, b_in, h = ctx.saved_tensors
        dt, (act, backend), chunk = ctx.proj_dtype, ctx.args, ctx.chunk
        B, L, C = seq.shape
        w = w_in.to(dt)
        b = None if b_in is None else b_in.to(dt)
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = b_in is not None and ctx.needs_input_grad[2]
        if L <= chunk:
            proj = F.linear(seq.to(dt), w, b)
            grad_proj, _ = mingru_scan_backward(proj, h, None, grad_h.to(dt), False, True, act, backend)
            del proj
            g = grad_proj.reshape(-1, grad_proj.shape[-1])
            grad_seq = (g @ w).view(seq.shape).to(seq.dtype) if need_x else None
            grad_w = (g.t() @ seq.reshape(-1, C).to(dt)).to(w_in.dtype) if need_w else None
            grad_b = g.sum(0).to(b_in.dtype) if need_b else None
            return grad_seq, grad_w, grad_b, None, None, None, None
        two_h = w.shape[0] // 2
        grad_seq = torch.zeros_like(seq) if need_x else None
        grad_w = torch.zeros_like(w_in) if need_w else None
        grad_b = torch.zeros_like(b_in) if need_b else None
        for d, reverse in ((0, False), (1, True)):
            rows, cols = _direction_slices(two_h, d)
            w_d, b_d = w[rows], None if b is None else b[rows]
            carry = None                                    # dL/dh at the neighbouring chunk's boundary
            for t0, t1 in reversed(token_chunks(L, chunk, reverse)):
                seq_c = seq[:, t0:t1].to(dt)
                p = F.linear(seq_c, w_d, b_d)
                gh = grad_h[:, t0:t1, cols].to(dt).contiguous()
                if carry is not None:
                    (gh[:, -1] if not reverse else gh[:, 0]).add_(carry)
                if reverse:
                    h0 = h[:, t1, cols].contiguous() if t1 < L else None
                else:
                    h0 = h[:, t0 - 1, cols].contiguous() if t0 > 0 else None
                gp, carry = mingru_scan_backward(p, h[:, t0:t1, cols].contiguous(), h0, gh, reverse, False, act,
                                                 backend)  # carry: None at the sequence's first chunk
                del p
                g = gp.reshape(-1, two_h)
                if need_x:
                    grad_seq[:, t0:t1] += (g @ w_d).view(B, t1 - t0, C).to(seq.dtype)
                if need_w:
                    grad_w[rows] += (g.t() @ seq_c.reshape(-1, C)).to(w_in.dtype)
                if need_b:
                    grad_b[rows] += g.sum(0).to(b_in.dtype)
        return grad_seq, grad_w, grad_b, None, None, None, None
