"""minGRU (Feng et al., 2024, "Were RNNs all we needed?") on the shared scan op.

    z_t = sigmoid(W_z x_t),   h~_t = act(W_h x_t),   h_t = (1 - z_t) * h_{t-1} + z_t * h~_t,   y_t = W_o h_t

``act`` is the identity in the minGRU paper and in VisionGRU's paper (Eq. 8); the VisionGRU authors'
released code (minGRU-pytorch 0.0.12) applies ``g`` (:func:`g_activation`): ``g(x) = x + 0.5`` for
``x >= 0`` and ``sigmoid(x)`` below (positive, continuous, slope 1 for large ``x``). Their released
weights need ``candidate_act='g'``.

Neither gate depends on ``h_{t-1}``, so the whole sequence is one call of
:func:`rv_plugins.ops.mingru_scan` on the raw input projection: the gates ``sigmoid(-gate)`` (``1 - z``
without cancellation) and ``sigmoid(gate) * act(cand)`` are computed in float32 inside the scan and
recomputed in its backward, so no gate tensor is materialised (a parallel scan, no Python loop over
tokens).

Memory-lean inference: under ``torch.no_grad()`` / ``inference_mode`` and outside training, a sequence
longer than ``infer_chunk_tokens`` runs in token chunks (projection, scan, output projection per chunk)
that carry the state through ``h0``; the result equals the one-call path to float rounding.

Bidirectional use: :class:`BiMinGRU` (a forward and a ``reverse=True`` MinGRU, outputs concatenated) and,
for layers that run both directions as one op, :func:`bidirectional_in_proj` (the two ``in_proj`` in
``mingru_scan``'s bidirectional layout) with :func:`bidirectional_scan` (one ``bidirectional=True``
call on that projection), or :func:`projected_bidirectional_scan` (projection and scan as one
autograd node that stores no projection, for training); :func:`bidirectional_sum` runs both directions'
sum on either. Those are the only places besides
``MinGRU.forward`` that know the ``[gate, candidate]`` layout; the gates themselves exist only inside
:func:`rv_plugins.ops.mingru_scan`.
"""
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from rv_plugins.layers.blocks import refuse_double_backward
from rv_plugins.ops import mingru_scan, mingru_scan_backward, resolve_backend
from rv_plugins.ops.linear import linear, linear_module
from rv_plugins.ops.mingru import CANDIDATE_ACTIVATIONS, g_activation  # noqa: F401 - re-exported
from rv_plugins.ops.modes import is_tracing_or_exporting

__all__ = ["MinGRU", "BiMinGRU", "token_chunks", "can_scan_together", "bidirectional_in_proj",
           "bidirectional_scan", "bidirectional_weights", "bidirectional_sum", "projected_bidirectional_scan",
           "CANDIDATE_ACTIVATIONS", "g_activation"]


def token_chunks(L: int, chunk: int, reverse: bool) -> List[Tuple[int, int]]:
    """``[t0, t1)`` token ranges of at most ``chunk`` covering ``0..L``, in scan order."""
    spans = [(t0, min(t0 + chunk, L)) for t0 in range(0, L, chunk)]
    return spans[::-1] if reverse else spans


class MinGRU(nn.Module):
    """minGRU over ``(B, L, dim)`` sequences -> ``(B, L, out_dim)``.

    Args:
        dim: input channels.
        hidden_dim: state channels (``expansion * dim`` by default).
        out_dim: output channels; ``None`` gives ``dim``. ``proj_out=False`` returns the state itself.
        expansion: ``hidden_dim = expansion * dim`` when ``hidden_dim`` is not given.
        bias: biases in the projections (VisionGRU's code has none).
        reverse: scan from the last token to the first.
        backend: passed to :func:`linear_scan` (``None``: best for the device).
        candidate_act: ``'identity'`` (the papers) or ``'g'`` (the VisionGRU authors' released code).
    """

    def __init__(self, dim: int, hidden_dim: Optional[int] = None, out_dim: Optional[int] = None,
                 expansion: float = 2.0, bias: bool = False, proj_out: bool = True,
                 reverse: bool = False, backend: Optional[str] = None,
                 candidate_act: str = "identity"):
        super().__init__()
        if candidate_act not in CANDIDATE_ACTIVATIONS:
            raise ValueError(f"MinGRU: candidate_act={candidate_act!r}; choose one of "
                             f"{CANDIDATE_ACTIVATIONS} ('g' for the VisionGRU authors' released weights)")
        self.candidate_act = candidate_act
        self.hidden_dim = hidden_dim or int(round(expansion * dim))
        self.reverse, self.backend = reverse, backend
        self.in_proj = nn.Linear(dim, 2 * self.hidden_dim, bias=bias)  # gate and candidate together
        self.out_proj = nn.Linear(self.hidden_dim, out_dim or dim, bias=bias) if proj_out else nn.Identity()

    # Token chunk of the memory-lean inference path (no autograd, eval mode); an instance attribute
    # of the same name overrides it (tests use small values).
    infer_chunk_tokens = 4096

    def forward(self, x: torch.Tensor, h0: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: ``(B, L, dim)``; h0: optional ``(B, hidden_dim)`` -> ``(B, L, out_dim)``."""
        chunk = self.infer_chunk_tokens
        if not self.training and not torch.is_grad_enabled() and x.shape[1] > chunk and not is_tracing_or_exporting():
            return self._forward_chunked(x, h0, chunk)
        h = mingru_scan(linear_module(self.in_proj, x), h0, reverse=self.reverse, candidate_act=self.candidate_act,
                        backend=self.backend)
        return linear_module(self.out_proj, h)

    def _forward_chunked(self, x: torch.Tensor, h0: Optional[torch.Tensor], chunk: int) -> torch.Tensor:
        """No-autograd forward in token chunks of ``chunk``, the state carried between them through ``h0``.

        Peak extra memory: one chunk's projection ``(B, chunk, 2 * hidden_dim)`` and state instead of the
        whole sequence's. ``x`` ``(B, L, dim)`` -> ``(B, L, out_dim)``.
        """
        B, L, _ = x.shape
        out, state = None, h0
        for t0, t1 in token_chunks(L, chunk, self.reverse):
            h = mingru_scan(linear_module(self.in_proj, x[:, t0:t1]), state, reverse=self.reverse,
                            candidate_act=self.candidate_act, backend=self.backend)
            state = h[:, 0] if self.reverse else h[:, -1]
            y = linear_module(self.out_proj, h)
            if out is None:
                out = y.new_empty(B, L, y.shape[-1])
            out[:, t0:t1] = y
        return out

    def extra_repr(self) -> str:
        return (f"hidden_dim={self.hidden_dim}, reverse={self.reverse}, backend={self.backend}, "
                f"candidate_act={self.candidate_act!r}")


def can_scan_together(fwd: MinGRU, bwd: MinGRU) -> bool:
    """Whether ``fwd`` and ``bwd`` are one bidirectional ``mingru_scan`` call: ``fwd`` scans forward,
    ``bwd`` backward, same state width, ``candidate_act`` and backend, both with or both without bias."""
    return (not fwd.reverse and bwd.reverse and fwd.hidden_dim == bwd.hidden_dim
            and fwd.candidate_act == bwd.candidate_act and fwd.backend == bwd.backend
            and (fwd.in_proj.bias is None) == (bwd.in_proj.bias is None))


def bidirectional_in_proj(fwd: MinGRU, bwd: MinGRU) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Both input projections as one: weight ``(4H, dim)`` and bias ``(4H,)`` or ``None``, so that
    ``F.linear(x, weight, bias)`` is ``[gate_fwd, cand_fwd, gate_bwd, cand_bwd]``, the ``proj`` of
    :func:`bidirectional_scan` (``H = hidden_dim``). Differentiable: gradients reach both ``in_proj``."""
    if not can_scan_together(fwd, bwd):
        raise ValueError("bidirectional_in_proj: fwd and bwd cannot share one bidirectional scan (need a "
                         "forward and a reverse MinGRU with equal hidden_dim, candidate_act, backend and bias "
                         "setting); run them one by one (MinGRU.forward) or check can_scan_together first")
    weight = torch.cat([fwd.in_proj.weight, bwd.in_proj.weight])
    bias = None if fwd.in_proj.bias is None else torch.cat([fwd.in_proj.bias, bwd.in_proj.bias])
    return weight, bias


def bidirectional_scan(fwd: MinGRU, bwd: MinGRU, proj: torch.Tensor) -> torch.Tensor:
    """The states of ``fwd`` and ``bwd`` from a projection in :func:`bidirectional_in_proj`'s layout.

    ``proj``: ``(B, L, 4H)``, any strides -> ``(B, L, 2H)`` = ``[h_fwd, h_bwd]`` (before ``out_proj``), equal
    to ``cat([fwd.in_proj -> scan, bwd.in_proj -> reverse scan])`` in one ``mingru_scan`` call.
    """
    return mingru_scan(proj, bidirectional=True, candidate_act=fwd.candidate_act, backend=fwd.backend)


def bidirectional_weights(fwd: MinGRU, bwd: MinGRU):
    """Both directions' weights as one input and one output projection:
    ``(w_in (4H, dim), b_in (4H,) | None, w_out (out_dim, 2H), b_out (out_dim,) | None)``; ``w_in`` rows are
    ``[gate_fwd, cand_fwd, gate_bwd, cand_bwd]`` (:func:`bidirectional_in_proj`), ``w_out`` columns
    ``[h_fwd, h_bwd]``, ``b_out`` the sum of both output biases (so ``F.linear(h, w_out, b_out)`` is the
    sum of both directions' outputs). Differentiable."""
    w_in, b_in = bidirectional_in_proj(fwd, bwd)
    w_out = torch.cat([fwd.out_proj.weight, bwd.out_proj.weight], dim=1)
    b_out = None if fwd.out_proj.bias is None else fwd.out_proj.bias + bwd.out_proj.bias
    return w_in, b_in, w_out, b_out


def bidirectional_sum(fwd: MinGRU, bwd: MinGRU, seq: torch.Tensor, recompute_proj: bool = True,
                      train_chunk_elems: float = 2 ** 21, owner: str = "bidirectional_sum",
                      switch: str = "recompute_proj") -> torch.Tensor:
    """``fwd(seq) + bwd(seq)`` as one input GEMM, one bidirectional scan and one output GEMM.

    ``seq`` ``(B, L, dim)`` -> ``(B, L, out_dim)``; ``fwd``/``bwd`` must pass :func:`can_scan_together`.
    With autograd and ``recompute_proj`` the projection is not stored (:func:`projected_bidirectional_scan`,
    in token chunks when one direction's projection exceeds ``train_chunk_elems`` elements); tracing and
    exporting, the ``'reference'`` backend and ``recompute_proj=False`` run the plain ops (twice
    differentiable). ``owner``/``switch`` name the caller's switch in the double-backward error.
    """
    w_in, b_in, w_out, b_out = bidirectional_weights(fwd, bwd)
    backend = resolve_backend(fwd.backend, seq.device)
    if recompute_proj and torch.is_grad_enabled() and backend != "reference" and not is_tracing_or_exporting():
        chunk = max(1, int(train_chunk_elems // max(w_in.shape[0] // 2, 1)))
        h = projected_bidirectional_scan(seq, w_in, b_in, fwd.candidate_act, backend, chunk, owner, switch)
    else:
        h = bidirectional_scan(fwd, bwd, linear(seq, w_in, b_in))
    return linear(h, w_out, b_out)


class BiMinGRU(nn.Module):
    """Bidirectional minGRU: ``(N, L, dim)`` -> ``(N, L, 2 * hidden_dim)`` = [forward scan, reverse scan].

    ``fwd`` and ``bwd`` are :class:`MinGRU` layers without output projection (``proj_out=False``);
    ``bwd`` scans the same sequence with ``reverse=True`` (no flipped copy). ``forward`` runs each
    MinGRU on its own; :meth:`in_proj` + :meth:`scan` are the same function as one GEMM and one
    bidirectional scan (for callers that batch the GEMM with other work, like BiLSTM2D's fused path).
    """

    def __init__(self, dim: int, hidden_dim: int, bias: bool = True, backend: Optional[str] = None):
        super().__init__()
        self.hidden_dim = hidden_dim
        self.fwd = MinGRU(dim, hidden_dim=hidden_dim, bias=bias, proj_out=False, backend=backend)
        self.bwd = MinGRU(dim, hidden_dim=hidden_dim, bias=bias, proj_out=False, reverse=True,
                          backend=backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, L, dim)`` -> ``(N, L, 2 * hidden_dim)``."""
        return torch.cat([self.fwd(x), self.bwd(x)], dim=-1)

    @property
    def fusable(self) -> bool:
        """Whether :meth:`in_proj` / :meth:`scan` apply (the directions share activation, backend, bias)."""
        return can_scan_together(self.fwd, self.bwd)

    def in_proj(self) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Weight ``(4 * hidden_dim, dim)`` and bias of both directions (:func:`bidirectional_in_proj`)."""
        return bidirectional_in_proj(self.fwd, self.bwd)

    def scan(self, proj: torch.Tensor) -> torch.Tensor:
        """``(N, L, 4 * hidden_dim)`` projection (:meth:`in_proj`'s layout) -> ``(N, L, 2 * hidden_dim)``."""
        return bidirectional_scan(self.fwd, self.bwd, proj)


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
            h = torch.ops.rv_plugins.mingru_scan(proj, None, False, True, candidate_act, backend)
        else:
            two_h = w_in.shape[0] // 2                     # one direction's [gate, cand] width
            h = None
            for d, reverse in ((0, False), (1, True)):
                rows, cols = _direction_slices(two_h, d)
                w_d, b_d = w_in[rows], None if b_in is None else b_in[rows]
                state = None
                for t0, t1 in token_chunks(L, chunk, reverse):
                    p = F.linear(seq[:, t0:t1], w_d, b_d)
                    hc = torch.ops.rv_plugins.mingru_scan(p, state, reverse, False, candidate_act, backend)
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
