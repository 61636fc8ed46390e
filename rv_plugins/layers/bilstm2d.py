"""BiLSTM2D: the token mixer of Sequencer2D (Tatsunami & Taki, NeurIPS 2022), and its RNN variants.

For a channels-last map ``x`` of shape ``(B, H, W, C)``::

    vertical:   every column x[b, :, w] is a sequence of H tokens -> bidirectional RNN (weights rnn_v)
    horizontal: every row    x[b, h, :] is a sequence of W tokens -> bidirectional RNN (weights rnn_h)
    y = fc(concat[v_fwd, v_bwd, h_fwd, h_bwd])          (B, H, W, 4D) -> (B, H, W, C)

with hidden size ``D`` per direction (the paper's ``D = C / 4``). The vertical and horizontal RNNs
have separate weights, so they cannot share one batched RNN call; what *can* be shared is work
that has no weights (the minGRU scans) or a batched matmul over the four directions.

``rnn_type``: ``'lstm'`` (the paper), ``'gru'`` and ``'rnn'`` (tanh; the paper's Table 2e), and
``'mingru'``: two :class:`~rv_plugins.layers.mingru.MinGRU` (``proj_out=False``) per axis, one
scanned forward and one with ``reverse=True``, on the shared scan op.

Implementations (``impl``), all computing the same function with the same parameters:

* ``'native'``: one ``nn.LSTM``/``nn.GRU``/``nn.RNN`` call per axis (``bidirectional=True``: both
  directions in one call; oneDNN on the CPU for the LSTM, cuDNN on CUDA), time-major inputs so
  the RNN makes no extra layout copy. For ``'mingru'``: each MinGRU module on its own.
* ``'fused'``: one input-projection GEMM for all four directions, one gather into sequence
  layout, then for LSTM/GRU/RNN a loop over time steps where one batched cell call
  (:func:`lstm_cell_batched`, :func:`gru_cell_batched`, :func:`rnn_tanh_cell_batched`: PyTorch's cell
  formulas and gate order for ``K`` weight sets, one ``bmm``) serves all directions of equal length
  (all four when ``H == W``); for minGRU two bidirectional scans in all (columns and rows;
  :class:`~rv_plugins.layers.mingru.BiMinGRU`'s ``in_proj``/``scan``, gates computed inside ``mingru_scan``).
* ``'auto'`` (default), from timings on a 2-core CPU (Sequencer2D-S, batch 8, 224x224, 2 threads,
  ``tools/benchmark_sequencer.py``): ``'native'`` for the LSTM (oneDNN: 1.10x the step loop for
  inference, ~1.5x for a training step of one mixer); ``'fused'`` for minGRU (~1.02x);
  GRU/RNN ``'fused'`` for CPU inference (1.14x / 1.12x PyTorch's per-direction C++ loop) and
  ``'native'`` when autograd records (PyTorch's backward is faster) or on CUDA (cuDNN). On one
  thread (one mixer at Sequencer2D-S stage 1/2 shapes, batch 8; two runs on a shared 2-core machine)
  the fused GRU/RNN inference gain is 1.00-1.05x / 1.09-1.18x.

Why batched cells and not ``torch.lstm_cell`` / ``gru_cell`` / ``rnn_tanh_cell``: torch's cells take
one weight set and the raw input (``x W_ih^T + b_ih`` is computed inside), so the step loop would
need one call per direction and either the input GEMM inside every step or an undocumented 2-D
``b_ih`` carrying the precomputed input gates. Measured that way (1 thread, same shapes, in one run
with the batched cells; two runs), torch's cells are 1.02-1.17x slower for inference and 1.2-2.7x
slower for a training step (the measuring script is in the message of the commit that added this
note). torch's fused-gates cells (``aten::_thnn_fused_lstm_cell``) exist for CUDA only. The batched
cells are pinned against ``nn.LSTMCell`` / ``nn.GRUCell`` / ``nn.RNNCell`` in ``tests/test_bilstm2d.py``.

Parameters are named as in ``nn.LSTM`` (``rnn_v.weight_ih_l0``, ``..._reverse``) so checkpoints of
the reference implementation (timm ``sequencer2d_*``) load unchanged.
"""
import functools
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from rv_plugins.layers.mingru import BiMinGRU
from rv_plugins.ops.layout import (from_sequence_by_columns, from_sequence_by_rows, to_sequence_by_columns,
                                   to_sequence_by_rows)
from rv_plugins.ops.modes import is_tracing_or_exporting

__all__ = ["BiLSTM2D", "BiMinGRU", "RNN_TYPES", "IMPLS", "lstm_cell_batched", "gru_cell_batched",
           "rnn_tanh_cell_batched"]

RNN_TYPES = ("lstm", "gru", "rnn", "mingru")
IMPLS = ("auto", "native", "fused")
_TORCH_RNNS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
_GATES = {"lstm": 4, "gru": 3, "rnn": 1}  # rows of weight_ih per hidden unit
# The four directions, in the channel order of the concatenated output: (axis, reverse).
_DIRECTIONS = ((0, False), (0, True), (1, False), (1, True))  # v fwd, v bwd, h fwd, h bwd


@functools.lru_cache(maxsize=32)
def _direction_index(B: int, H: int, W: int, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """Row permutations between the natural layout and the per-direction time-major sequence layout.

    Natural layout: rows ``token * 4 + k`` of a ``(B*H*W*4, D)`` matrix, ``token = (b*H + h)*W + w``
    and ``k`` the direction in ``_DIRECTIONS`` order. Sequence layout: the four directions in
    ``_DIRECTIONS`` order one after another, each ``B*H*W`` rows laid out as ``(T, N)`` (reverse
    directions flipped in time, so a step loop reads every direction at the same index ``t``).
    Vertical: ``T = H``, ``N = B*W`` (sequence ``(b, w)``); horizontal: ``T = W``, ``N = B*H``.

    Returns ``(gather, scatter)``: ``seq = natural[gather]`` and ``natural = seq[scatter]``.
    """
    with torch.inference_mode(False):  # cached: must stay usable by autograd later
        return _build_direction_index(B, H, W, device)


def _build_direction_index(B, H, W, device):
    tok = torch.arange(B * H * W, device=device).view(B, H, W)
    rows = []
    for k, (axis, reverse) in enumerate(_DIRECTIONS):
        seq = tok.transpose(1, 2) if axis == 0 else tok  # (B, N', T): (B, W, H) or (B, H, W)
        seq = seq.reshape(-1, seq.shape[-1]).t()           # (T, N)
        if reverse:
            seq = seq.flip(0)
        rows.append(seq.reshape(-1) * 4 + k)
    gather = torch.cat(rows)
    scatter = torch.empty_like(gather)
    scatter[gather] = torch.arange(gather.numel(), device=device)
    return gather, scatter


# ----------------------------------------------------------------------------- batched cells
# PyTorch's LSTM / GRU / tanh-RNN cells for K directions with K recurrent weight sets in one call, the
# input part x W_ih^T + b_ih precomputed for all steps (why not torch's own cells: module docstring).
# Shapes: x_gates (K, N, G), h and c (K, N, D), w_hh (K, D, G) (= weight_hh^T), b_hh (K, 1, G) or None.
def lstm_cell_batched(x_gates: torch.Tensor, state: Tuple[torch.Tensor, torch.Tensor], w_hh: torch.Tensor,
                      b_hh: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """``nn.LSTMCell`` (gates i, f, g, o) of K directions: ``(h, c)`` -> ``(h', c')``, each ``(K, N, D)``."""
    h, c = state
    D = h.shape[-1]
    gates = torch.baddbmm(x_gates, h, w_hh)
    if b_hh is not None:
        gates = gates + b_hh
    s = torch.sigmoid(gates)
    c = torch.addcmul(s[..., D:2 * D] * c, s[..., :D], torch.tanh(gates[..., 2 * D:3 * D]))
    return s[..., 3 * D:] * torch.tanh(c), c


def gru_cell_batched(x_gates: torch.Tensor, h: torch.Tensor, w_hh: torch.Tensor,
                     b_hh: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``nn.GRUCell`` (gates r, z, n; ``n = tanh(x_n + r * (h W_hn^T + b_hn))``) of K directions:
    ``h`` -> ``h'``, ``(K, N, D)``. ``b_hh`` must stay separate from ``x_gates`` (the reset gate scales it)."""
    D = h.shape[-1]
    gh = torch.bmm(h, w_hh) if b_hh is None else torch.baddbmm(b_hh, h, w_hh)
    rz = torch.sigmoid(x_gates[..., :2 * D] + gh[..., :2 * D])
    n = torch.tanh(torch.addcmul(x_gates[..., 2 * D:], rz[..., :D], gh[..., 2 * D:]))
    return torch.lerp(n, h, rz[..., D:])                                              # (1 - z) n + z h


def rnn_tanh_cell_batched(x_gates: torch.Tensor, h: torch.Tensor, w_hh: torch.Tensor,
                          b_hh: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``nn.RNNCell(nonlinearity='tanh')`` of K directions: ``h`` -> ``tanh(x_gates + h W_hh^T + b_hh)``."""
    pre = torch.baddbmm(x_gates, h, w_hh)
    return torch.tanh(pre if b_hh is None else pre + b_hh)


_BATCHED_CELLS = {"lstm": lstm_cell_batched, "gru": gru_cell_batched, "rnn": rnn_tanh_cell_batched}


class BiLSTM2D(nn.Module):
    """Vertical and horizontal bidirectional RNNs in parallel, concatenated, then a channel-fusion fc.

    Args:
        dim: channels ``C`` of the input and output.
        hidden_dim: hidden size ``D`` of each of the four directional RNNs; ``None`` gives ``dim // 4``.
        rnn_type: ``'lstm'``, ``'gru'``, ``'rnn'`` (tanh) or ``'mingru'``.
        bias: biases in the RNNs (minGRU: in its input projections).
        impl: ``'auto'``, ``'native'`` or ``'fused'`` (see the module docstring; same results).
        scan_backend: ``mingru_scan`` backend for ``'mingru'`` (``None``: best for the device).

    Shapes: ``forward(x)``: ``(B, H, W, dim)`` -> ``(B, H, W, dim)``, any ``H, W >= 1``.
    ``mix(x)``: ``(B, H, W, dim)`` -> ``(B, H, W, 4D)``, the four directions before the fc;
    ``mix_vertical(x)`` / ``mix_horizontal(x)`` (native path): ``(B, H, W, 2D)`` each.
    """

    def __init__(self, dim: int, hidden_dim: Optional[int] = None, rnn_type: str = "lstm", bias: bool = True,
                 impl: str = "auto", scan_backend: Optional[str] = None):
        super().__init__()
        if rnn_type not in RNN_TYPES:
            raise ValueError(f"BiLSTM2D: unknown rnn_type {rnn_type!r}; choose one of {RNN_TYPES}")
        if impl not in IMPLS:
            raise ValueError(f"BiLSTM2D: unknown impl {impl!r}; choose one of {IMPLS}")
        hidden_dim = dim // 4 if hidden_dim is None else int(hidden_dim)
        if hidden_dim < 1:
            raise ValueError(f"BiLSTM2D: hidden_dim must be >= 1, got {hidden_dim} (dim={dim}); "
                             "pass hidden_dim explicitly for dim < 4")
        self.dim, self.hidden_dim, self.rnn_type = dim, hidden_dim, rnn_type
        self.bias, self.impl, self.scan_backend = bias, impl, scan_backend
        if rnn_type == "mingru":
            self.rnn_v = BiMinGRU(dim, hidden_dim, bias=bias, backend=scan_backend)
            self.rnn_h = BiMinGRU(dim, hidden_dim, bias=bias, backend=scan_backend)
        else:
            rnn = _TORCH_RNNS[rnn_type]
            kwargs = dict(nonlinearity="tanh") if rnn_type == "rnn" else {}
            self.rnn_v = rnn(dim, hidden_dim, bias=bias, bidirectional=True, **kwargs)
            self.rnn_h = rnn(dim, hidden_dim, bias=bias, bidirectional=True, **kwargs)
        self.fc = nn.Linear(4 * hidden_dim, dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, hidden_dim={self.hidden_dim}, rnn_type={self.rnn_type!r}, impl={self.impl!r}"

    # ------------------------------------------------------------------ dispatch
    def resolved_impl(self, device: torch.device) -> str:
        """The implementation ``impl='auto'`` picks on ``device`` now (``'native'`` or ``'fused'``);
        depends on ``torch.is_grad_enabled()`` for GRU/RNN. Under a tracer or exporter LSTM/GRU/RNN always
        take ``'native'`` (``nn.LSTM``/``GRU``/``RNN``: one op for any length; the fused step loop would be
        recorded with the traced size's step count)."""
        if self.rnn_type == "mingru":
            return "fused" if self.impl == "auto" else self.impl
        if is_tracing_or_exporting():  # a traced step loop would hold the traced size's step count
            return "native"
        if self.impl != "auto":
            return self.impl
        if self.rnn_type == "lstm" or torch.device(device).type != "cpu" or torch.is_grad_enabled():
            return "native"
        return "fused"  # GRU / RNN inference on the CPU

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, dim)`` -> ``(B, H, W, dim)``."""
        if x.dim() != 4 or x.shape[-1] != self.dim:
            raise ValueError(f"BiLSTM2D expects a channels-last map (B, H, W, {self.dim}), got "
                             f"{tuple(x.shape)}; permute (B, C, H, W) maps with x.permute(0, 2, 3, 1)")
        return self.fc(self.mix(x))

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        """The four directions before the fc: ``(B, H, W, C)`` -> ``(B, H, W, 4D)``, channels
        ``[vertical fwd (top->bottom), vertical bwd, horizontal fwd (left->right), horizontal bwd]``."""
        if x.numel() == 0:  # an empty batch: nothing to scan (the RNN paths reshape with -1, ambiguous at 0)
            return x.new_zeros(*x.shape[:3], 4 * self.hidden_dim)
        if self.resolved_impl(x.device) == "native":
            return torch.cat([self.mix_vertical(x), self.mix_horizontal(x)], dim=-1)
        if self.rnn_type == "mingru":
            return self._fused_mingru(x)
        return self._fused_rnn(x)

    # ------------------------------------------------------------------ native path
    def mix_vertical(self, x: torch.Tensor) -> torch.Tensor:
        """Vertical bidirectional RNN over the columns: ``(B, H, W, C)`` -> ``(B, H, W, 2D)``."""
        B, H, W, C = x.shape
        if self.rnn_type == "mingru":
            seq = self.rnn_v(to_sequence_by_columns(x, channels_last=True))         # (B*W, H, 2D)
            return from_sequence_by_columns(seq, B, channels_last=True)
        seq, _ = self.rnn_v(x.permute(1, 0, 2, 3).reshape(H, B * W, C))              # time-major (H, B*W, 2D)
        return seq.view(H, B, W, -1).permute(1, 0, 2, 3)

    def mix_horizontal(self, x: torch.Tensor) -> torch.Tensor:
        """Horizontal bidirectional RNN over the rows: ``(B, H, W, C)`` -> ``(B, H, W, 2D)``."""
        B, H, W, C = x.shape
        if self.rnn_type == "mingru":
            seq = self.rnn_h(to_sequence_by_rows(x, channels_last=True))            # (B*H, W, 2D)
            return from_sequence_by_rows(seq, B, channels_last=True)
        seq, _ = self.rnn_h(x.permute(2, 0, 1, 3).reshape(W, B * H, C))              # time-major (W, B*H, 2D)
        return seq.view(W, B, H, -1).permute(1, 2, 0, 3)

    # ------------------------------------------------------------------ fused paths
    def _torch_rnn_weights(self):
        """The four directions' weights, ``_DIRECTIONS`` order: input projection ``(4G, C)`` and its
        bias ``(4G,)``, recurrent ``(4, D, G)`` (transposed for ``bmm``), recurrent bias ``(4, 1, G)``
        (GRU only: its candidate gate multiplies ``W_hn h + b_hn`` by the reset gate)."""
        mods = [(self.rnn_v, ""), (self.rnn_v, "_reverse"), (self.rnn_h, ""), (self.rnn_h, "_reverse")]
        w_ih = torch.cat([getattr(m, "weight_ih_l0" + s) for m, s in mods])
        w_hh = torch.stack([getattr(m, "weight_hh_l0" + s) for m, s in mods]).transpose(1, 2)
        b_in = b_hh = None
        if self.bias:
            b_ih = [getattr(m, "bias_ih_l0" + s) for m, s in mods]
            b_hhs = [getattr(m, "bias_hh_l0" + s) for m, s in mods]
            if self.rnn_type == "gru":
                b_in, b_hh = torch.cat(b_ih), torch.stack(b_hhs).unsqueeze(1)
            else:  # LSTM / RNN: both biases are added before the non-linearity
                b_in = torch.cat(b_ih) + torch.cat(b_hhs)
        return w_ih, b_in, w_hh, b_hh

    def _fused_rnn(self, x: torch.Tensor) -> torch.Tensor:
        """LSTM/GRU/RNN, all four directions: ``(B, H, W, C)`` -> ``(B, H, W, 4D)``."""
        B, H, W, C = x.shape
        D, G = self.hidden_dim, _GATES[self.rnn_type] * self.hidden_dim
        w_ih, b_in, w_hh, b_hh = self._torch_rnn_weights()
        xp = F.linear(x.reshape(-1, C), w_ih, b_in)                                   # (BHW, 4G)
        gather, scatter = _direction_index(B, H, W, x.device)
        seq = xp.reshape(-1, G).index_select(0, gather).view(4, B * H * W, G)  # time-major per direction
        # Directions of equal length share one step loop (one bmm per step for all of them).
        groups = [(0, 4, H, B * W)] if H == W else [(0, 2, H, B * W), (2, 4, W, B * H)]
        outs = []
        for lo, hi, T, N in groups:
            xs = seq[lo:hi].view(hi - lo, T, N, G)
            bias = None if b_hh is None else b_hh[lo:hi]
            outs.append(self._step_loop(xs, w_hh[lo:hi], bias).reshape(-1, D))
        y = outs[0] if len(outs) == 1 else torch.cat(outs)
        return y.index_select(0, scatter).view(B, H, W, 4 * D)

    def _step_loop(self, xs: torch.Tensor, w_hh: torch.Tensor, b_hh: Optional[torch.Tensor]) -> torch.Tensor:
        """Recurrence of ``K`` directions at once: input projections ``xs`` ``(K, T, N, G)`` (biases
        in), ``w_hh`` ``(K, D, G)`` -> hidden states ``(K, T, N, D)``, one batched cell call per step."""
        K, T, N, _ = xs.shape
        cell = _BATCHED_CELLS[self.rnn_type]
        h = xs.new_zeros(K, N, self.hidden_dim)
        state = (h, h) if self.rnn_type == "lstm" else h
        hs: List[torch.Tensor] = []
        for t in range(T):
            state = cell(xs[:, t], state, w_hh, b_hh)
            hs.append(state[0] if self.rnn_type == "lstm" else state)
        return torch.stack(hs, dim=1)

    def _fused_mingru(self, x: torch.Tensor) -> torch.Tensor:
        """minGRU, all four directions: ``(B, H, W, C)`` -> ``(B, H, W, 4D)``.

        One GEMM for the four directions' input projections (``BiMinGRU.in_proj`` of the vertical then
        the horizontal pair: rows ``[v fwd, v bwd | h fwd, h bwd]``), then one bidirectional
        ``BiMinGRU.scan`` per axis (gates computed inside ``mingru_scan``): the columns ``(B*W, H, 4D)``
        and the rows ``(B*H, W, 4D)`` (a strided view, no copy), each writing ``[fwd, bwd]`` into one buffer.
        """
        if not (self.rnn_v.fusable and self.rnn_h.fusable):  # directions set up differently: one call each
            return torch.cat([self.mix_vertical(x), self.mix_horizontal(x)], dim=-1)
        B, H, W, C = x.shape
        D = self.hidden_dim
        (wv, bv), (wh, bh) = self.rnn_v.in_proj(), self.rnn_h.in_proj()
        xp = F.linear(x, torch.cat([wv, wh]), None if bv is None else torch.cat([bv, bh]))  # (B, H, W, 8D)
        hv = self.rnn_v.scan(to_sequence_by_columns(xp[..., :4 * D], channels_last=True))  # (B*W, H, 2D)
        hh = self.rnn_h.scan(to_sequence_by_rows(xp[..., 4 * D:], channels_last=True))     # (B*H, W, 2D)
        return torch.cat([from_sequence_by_columns(hv, B, channels_last=True),
                          from_sequence_by_rows(hh, B, channels_last=True)], dim=-1)
