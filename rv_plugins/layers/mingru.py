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
call on that projection); :mod:`rv_plugins.layers.bidirectional_mingru` builds the summed
bidirectional layer on them. Those are the only places besides ``MinGRU.forward`` that know the
``[gate, candidate]`` layout; the gates themselves exist only inside :func:`rv_plugins.ops.mingru_scan`.
"""
from typing import List, Optional, Tuple

import torch
from torch import nn

from rv_plugins.ops import mingru_scan
from rv_plugins.ops.linear import linear_module
from rv_plugins.ops.checks import CANDIDATE_ACTIVATIONS  # noqa: F401 - re-exported
from rv_plugins.ops.gates import g_activation  # noqa: F401 - re-exported
from rv_plugins.ops.modes import is_tracing_or_exporting

__all__ = ["MinGRU", "BiMinGRU", "token_chunks", "can_scan_together", "bidirectional_in_proj",
           "bidirectional_scan", "CANDIDATE_ACTIVATIONS", "g_activation"]


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

