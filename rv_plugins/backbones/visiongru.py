"""VisionGRU (Yang Liu et al., 2024, arXiv:2412.18178): a hierarchical backbone of 2DGRU blocks.

Layout (every map inside the network is channels-last ``(B, H, W, C)``)::

    image (B, 3, H, W)
    stem: 3x3 s2 conv -> C0/2, LN, GELU, 3x3 s2 conv -> C0, LN     (B, H/4, W/4, C0)
          + learned positional embedding (bicubic-resized to the grid)
    stage 0: depths[0] x GRU2DBlock(C0)                               stride 4
    stage i (i = 1..3): 3x3 s2 conv Ci-1 -> Ci, LN; depths[i] blocks  stride 4 * 2**i
    classifier (num_classes > 0): token mean of the last map -> linear

    GRU2DBlock:  x = x + drop_path(GRU2DMixer(LN(x)))
                 x = x + drop_path(MLP(LN(x)))          MLP: C -> 4C, GELU, 4C -> C
    GRU2DMixer:  y = dwconv3x3(x);  minGRU_fwd(raster(y)) + minGRU_bwd(reverse raster(y))

Both minGRUs (:class:`rv_plugins.layers.mingru.MinGRU`, expansion 2, output projection back to the
width, no biases) have their own weights. The reverse raster is the map flipped in H and W (what the
authors' code does); here it is the same sequence scanned with ``reverse=True``, so no flipped copy
is made. Widths and depths follow the authors' code (see ``ARCH_SETTINGS``).

Execution: the mixer runs both directions as one input GEMM (the two ``in_proj`` weights
concatenated), one bidirectional :func:`rv_plugins.ops.mingru_scan` (gates computed inside the scan)
and one output GEMM (the two ``out_proj`` weights concatenated along their input: the sum of the two
directions); the parameters stay ``gru_fwd.*`` / ``gru_bwd.*``. Without autograd on the CPU these GEMMs and
the MLP's run through oneDNN (:mod:`rv_plugins.ops.linear`, GELU fused). Memory-lean inference: without
autograd and outside training, every map of more than ``infer_chunk_elems`` elements (tokens x channels;
stem, downsampling, blocks; the default ``"auto"`` picks the chunk by device and image size, see
``set_infer_chunk``) runs in row chunks of about that size: 3x3 convolutions from row slabs with a one-row
halo, each scan direction chunk by chunk with its state carried through ``h0``, the MLP in place per
chunk. A block then holds its input, its output and one chunk's temporaries; outputs equal the one-call
path to float rounding.
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from rv_plugins.backbones.base import HierarchicalBackbone
from rv_plugins.backbones.registry import register_backbone
from rv_plugins.layers.blocks import run_blocks
from rv_plugins.layers.drop_path import DropPath
from rv_plugins.layers.mingru import (CANDIDATE_ACTIVATIONS, MinGRU, bidirectional_in_proj, bidirectional_scan,
                                      can_scan_together, token_chunks)
from rv_plugins.layers.mlp import Mlp
from rv_plugins.ops import mingru_scan, mingru_scan_backward, resolve_backend
from rv_plugins.ops.layout import from_sequence, to_sequence
from rv_plugins.ops.linear import linear, linear_module

__all__ = ["VisionGRU", "GRU2DBlock", "GRU2DMixer", "ARCH_SETTINGS", "ARCH_ALIASES", "set_infer_chunk", "PRESETS"]

# Widths: base width 72 (Ti) / 104 (B), doubled at every downsampling, as in the authors' code
# (``dim = 288 // 4`` and ``416 // 4``); depths are the paper's ([2, 2, 8, 2] and [2, 2, 15, 2]).
# With the 1000-class classifier and the 56x56 positional embedding of img_size=224 this gives
# 30.44M (Ti) and 87.23M (B) parameters (paper: 30M and 86M); ``tests/test_visiongru.py`` checks +-5%.
ARCH_SETTINGS: Dict[str, Dict[str, list]] = {
    "tiny": dict(embed_dims=[72, 144, 288, 576], depths=[2, 2, 8, 2]),
    "base": dict(embed_dims=[104, 208, 416, 832], depths=[2, 2, 15, 2]),
}
ARCH_ALIASES = {"ti": "tiny", "t": "tiny", "b": "base"}

# The two published descriptions of VisionGRU differ in two points (README, "Pretrained weights"):
#   'released': the authors' released code and ImageNet weights: minGRU candidate through g(.)
#               (minGRU-pytorch 0.0.12), no positional embedding. Converted authors' checkpoints
#               (tools/convert_visiongru_checkpoint.py) need it; it is the default.
#   'paper':    the paper's text: linear candidate (its Eq. 8) and a learned positional embedding.
PRESETS: Dict[str, Dict[str, object]] = {
    "released": dict(candidate_act="g", pos_embed=False),
    "paper": dict(candidate_act="identity", pos_embed=True),
}

_STEM_NORM_EPS = 1e-6  # stem and downsampling LayerNorms (the authors' value; blocks use 1e-5)


# Memory-lean inference: maps of more elements (tokens x channels) than this run in row chunks of
# about this size (see the module docstring): 2**16 = 256 KiB of float32 map, i.e. 910 tokens of
# VisionGRU-Ti's first stage, whose chunk then holds a 1 MiB projection per direction. Measured on the
# CPU (1 thread, VisionGRU-Ti): peak inference RSS at 1024^2 112 / 132 MiB with 2**16 / 2**18, time at
# 448^2 +10% / +2% over unchunked. On a GPU that chunk means many small launches: H200, fp32, 1024^2,
# batch 3: 10 img/s at 2**16, 82 at 2**20, 102 unchunked, peak 114 / 288 / 1404 MiB (DeiT-S: 70 img/s,
# 216 MiB; tools/benchmark_gpu.py). The default, ``"auto"``, is 2**16 on the CPU and 2**20 elsewhere;
# ``set_infer_chunk`` changes it per model.
INFER_CHUNK_ELEMS = 2 ** 16
INFER_CHUNK_ELEMS_ACCELERATOR = 2 ** 20
INFER_CHUNK_AUTO = "auto"
# ... but under "auto" on the CPU 2**16 is for large images only: when the first-stage map of the whole
# batch (B x tokens x C0) holds at most INFER_LARGE_IMAGE_ELEMS elements (8 MiB of float32; VisionGRU-Ti,
# batch 1: up to 680^2), the image's maps run in chunks of INFER_CHUNK_ELEMS_SMALL_IMAGE. Measured (1 thread,
# oneDNN GEMMs, VisionGRU-Ti, in one process): at 448^2 563 / 531 / 470 / 479 / 485 ms per image (medians
# of 5) with chunks of 2**16 / 2**17 / 2**18 / 2**19 / none, peak RSS increase 78 / 104 / 122 / 159 / 200
# MiB; at 512^2 719 / 685 ms (2**16 / 2**18; DeiT-S 769), 88 / 120 MiB; at 672^2 1303 / 1135 ms (DeiT-S
# 1644), 93 / 140 MiB. Larger images (896^2 and up) chunk every map above INFER_CHUNK_ELEMS, the last
# stage's too, so the first stage's two maps set the peak (1024^2: 116 MiB, DeiT-S 147). Each module
# estimates the image's first-stage map from its own map with its ``first_stage_ratio`` (set by VisionGRU
# per stage: 4**i * C0 / Ci; 1 for a module used on its own), so the rule needs no state passed at run
# time (torch.compile traces it without a graph break).
INFER_CHUNK_ELEMS_SMALL_IMAGE = 2 ** 18
INFER_LARGE_IMAGE_ELEMS = 2 ** 21


def set_infer_chunk(model: nn.Module, elems: Union[float, str, None]) -> nn.Module:
    """Set the inference chunk (map elements, tokens x channels) of every module of ``model`` that has
    one; ``None`` disables chunking (every map runs in one call), a number chunks every map larger than
    that into chunks of about that size, ``"auto"`` (the default) chunks at ``INFER_CHUNK_ELEMS`` on the CPU
    (at ``INFER_CHUNK_ELEMS_SMALL_IMAGE`` for images whose first-stage map holds at most
    ``INFER_LARGE_IMAGE_ELEMS`` elements) and at ``INFER_CHUNK_ELEMS_ACCELERATOR`` elsewhere. Returns ``model``."""
    elems = math.inf if elems is None else elems
    if elems != INFER_CHUNK_AUTO and not (isinstance(elems, (int, float)) and elems >= 1):
        raise ValueError(f"set_infer_chunk: elems must be >= 1, 'auto' or None (no chunking), got {elems!r}")
    for m in model.modules():
        if hasattr(m, "infer_chunk_elems"):
            m.infer_chunk_elems = elems
    return model


def _chunk_elems(module: nn.Module, device: torch.device, map_elems: int) -> float:
    """``module``'s inference chunk on ``device`` for a map of ``map_elems`` elements (whole batch); see
    ``set_infer_chunk`` and ``INFER_LARGE_IMAGE_ELEMS``."""
    elems = module.infer_chunk_elems
    if elems != INFER_CHUNK_AUTO:
        return elems
    if device.type != "cpu":
        return INFER_CHUNK_ELEMS_ACCELERATOR
    large = map_elems * module.first_stage_ratio > INFER_LARGE_IMAGE_ELEMS  # the image's first-stage map
    return INFER_CHUNK_ELEMS if large else INFER_CHUNK_ELEMS_SMALL_IMAGE


def _lean(module: nn.Module, tokens: int, dim: int, device: torch.device, batch: int = 1) -> bool:
    """Whether ``module`` takes its chunked inference path for a map of ``batch`` x ``tokens`` x ``dim`` on
    ``device``."""
    return (not module.training and not torch.is_grad_enabled()
            and tokens * dim > _chunk_elems(module, device, batch * tokens * dim))


def _chunk_rows(module: nn.Module, device: torch.device, batch: int, height: int, width: int, dim: int) -> int:
    """Rows per chunk (at least one) for a ``(batch, height, width, dim)`` map on ``device``."""
    return max(1, int(_chunk_elems(module, device, batch * height * width * dim) // max(width * dim, 1)))


def _assemble_rows(n_out: int, rows: int, compute) -> torch.Tensor:
    """Run ``compute(o0, o1)`` -> ``(B, o1 - o0, ...)`` for row chunks ``[o0, o1)`` of ``rows`` rows covering
    ``0..n_out`` and write the results into one ``(B, n_out, ...)`` tensor (allocated at the first chunk)."""
    out = None
    for o0 in range(0, n_out, rows):
        o1 = min(o0 + rows, n_out)
        y = compute(o0, o1)
        if out is None:
            out = y.new_empty(y.shape[0], n_out, *y.shape[2:])
        out[:, o0:o1] = y
    return out


def _conv3x3_rows(conv: nn.Conv2d, get_rows, n_in: int, o0: int, o1: int) -> torch.Tensor:
    """Output rows ``[o0, o1)`` of ``conv`` (3x3, padding 1, any stride and groups) from input row slabs.

    ``get_rows(a, b)`` returns input rows ``[a, b)`` as ``(B, C_in, b - a, W_in)`` (any strides) of a map
    with ``n_in`` rows. Rows outside the map are the conv's zero padding. Returns ``(B, C_out, o1 - o0,
    W_out)``, equal to ``conv(full_map)[:, :, o0:o1]``.
    """
    s = conv.stride[0]
    i0, i1 = o0 * s - 1, (o1 - 1) * s + 2            # input rows [i0, i1) that the outputs read
    a, b = max(i0, 0), min(i1, n_in)
    x = get_rows(a, b)
    if a > i0 or b < i1:
        x = F.pad(x, (0, 0, a - i0, i1 - b))
    return F.conv2d(x, conv.weight, conv.bias, stride=conv.stride, padding=(0, conv.padding[1]),
                    groups=conv.groups)


class _RowChunked:
    """Mixin of the modules with a memory-lean (row-chunked) inference path."""

    infer_chunk_elems = INFER_CHUNK_AUTO  # see set_infer_chunk
    first_stage_ratio = 1.0  # the image's first-stage map elements per element of this module's map


_NO_DOUBLE_BACKWARD = ("{}: double backward (create_graph=True) through this memory-saving path is not supported; "
                       "set {} = False to run the plain ops (twice differentiable)")


class _ProjectedBiScan(torch.autograd.Function):
    """``h = mingru_scan(linear(seq, w_in, b_in), bidirectional=True)`` that keeps only ``seq`` and ``h``
    for the backward: the ``(B, L, 4h)`` projection is recomputed (one GEMM) instead of stored.

    ``seq`` ``(B, L, dim)``, ``w_in`` ``(4h, dim)`` -> ``h`` ``(B, L, 2h)``; ``backend`` is a resolved op
    backend (``'torch'`` / ``'triton'``). Sequences longer than ``chunk`` tokens run per direction in token
    chunks, forward and backward, the state carried through ``h0`` and the state gradient through
    ``grad_h0``: the full-size projection and its gradient never exist (under autocast the carried state
    is rounded to the autocast dtype at chunk boundaries). Under autocast the recomputed projection uses
    the forward's dtype.
    """

    @staticmethod
    def forward(ctx, seq, w_in, b_in, candidate_act, backend, chunk):
        B, L, _ = seq.shape
        ctx.args, ctx.chunk = (candidate_act, backend), chunk
        if L <= chunk:
            proj = F.linear(seq, w_in, b_in)
            h = torch.ops.rv_plugins.mingru_scan(proj, None, False, True, candidate_act, backend)
        else:
            two_h = w_in.shape[0] // 2                     # one direction's [gate, cand] width
            h = None
            for d, reverse in ((0, False), (1, True)):
                rows = slice(d * two_h, (d + 1) * two_h)
                cols = slice(d * two_h // 2, (d + 1) * two_h // 2)
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
        if torch.is_grad_enabled():
            raise RuntimeError(_NO_DOUBLE_BACKWARD.format("GRU2DMixer", "GRU2DMixer.recompute_proj"))
        seq, w_in, b_in, h = ctx.saved_tensors
        dt, (act, backend), chunk = ctx.proj_dtype, ctx.args, ctx.chunk
        B, L, C = seq.shape
        w = w_in.to(dt)
        b = None if b_in is None else b_in.to(dt)
        need_x, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], b_in is not None and ctx.needs_input_grad[2]
        if L <= chunk:
            proj = F.linear(seq.to(dt), w, b)
            grad_proj, _ = mingru_scan_backward(proj, h, None, grad_h.to(dt), False, True, act, backend)
            del proj
            g = grad_proj.reshape(-1, grad_proj.shape[-1])
            grad_seq = (g @ w).view(seq.shape).to(seq.dtype) if need_x else None
            grad_w = (g.t() @ seq.reshape(-1, C).to(dt)).to(w_in.dtype) if need_w else None
            grad_b = g.sum(0).to(b_in.dtype) if need_b else None
            return grad_seq, grad_w, grad_b, None, None, None
        two_h = w.shape[0] // 2
        grad_seq = torch.zeros_like(seq) if need_x else None
        grad_w = torch.zeros_like(w_in) if need_w else None
        grad_b = torch.zeros_like(b_in) if need_b else None
        for d, reverse in ((0, False), (1, True)):
            rows = slice(d * two_h, (d + 1) * two_h)
            cols = slice(d * two_h // 2, (d + 1) * two_h // 2)
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
        return grad_seq, grad_w, grad_b, None, None, None


class _GeluLinear(torch.autograd.Function):
    """``linear(gelu(u), w, b)`` keeping only ``u`` for the backward (the GELU is recomputed there):
    the MLP then stores one ``(..., 4 dim)`` hidden tensor instead of two. ``u`` ``(..., k)``, ``w`` ``(n, k)``."""

    @staticmethod
    def forward(ctx, u, w, b, approximate):
        g = F.gelu(u, approximate=approximate)
        out = F.linear(g, w, b)
        ctx.save_for_backward(u, w)
        ctx.has_bias, ctx.approximate, ctx.dtype = b is not None, approximate, out.dtype
        return out

    @staticmethod
    def backward(ctx, grad_out):
        if torch.is_grad_enabled():
            raise RuntimeError(_NO_DOUBLE_BACKWARD.format("GRU2DBlock MLP", "GRU2DBlock.recompute_gelu"))
        u, w = ctx.saved_tensors
        dt = ctx.dtype
        go = grad_out.reshape(-1, grad_out.shape[-1]).to(dt)
        grad_u = grad_w = grad_b = None
        if ctx.needs_input_grad[1]:
            g = F.gelu(u, approximate=ctx.approximate).reshape(-1, u.shape[-1]).to(dt)
            grad_w = (go.t() @ g).to(w.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = go.sum(0).to(w.dtype)
        if ctx.needs_input_grad[0]:
            grad_g = (go @ w.to(dt)).view(u.shape).to(u.dtype)
            grad_u = torch.ops.aten.gelu_backward(grad_g, u, approximate=ctx.approximate)
        return grad_u, grad_w, grad_b, None


class ConvLN(_RowChunked, nn.Module):
    """3x3 stride-2 conv then LayerNorm: ``(B, Cin, H, W)`` -> ``(B, ceil(H/2), ceil(W/2), Cout)``.

    ``channels_last_in=True`` takes ``(B, H, W, Cin)`` instead (the maps between stages).
    """

    def __init__(self, in_dim: int, out_dim: int, channels_last_in: bool = False):
        super().__init__()
        self.channels_last_in = channels_last_in
        self.conv = nn.Conv2d(in_dim, out_dim, 3, stride=2, padding=1)
        self.norm = nn.LayerNorm(out_dim, eps=_STEM_NORM_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last_in:
            x = x.permute(0, 3, 1, 2)
        n_in, w_in = x.shape[2], x.shape[3]
        n_out, w_out = (n_in + 1) // 2, (w_in + 1) // 2
        c_out = self.conv.out_channels
        if not _lean(self, n_out * w_out, c_out, x.device, x.shape[0]):
            return self.norm(self.conv(x).permute(0, 2, 3, 1))
        return _assemble_rows(n_out, _chunk_rows(self, x.device, x.shape[0], n_out, w_out, c_out),
                              lambda o0, o1: self.rows(lambda a, b: x[:, :, a:b], n_in, o0, o1))

    def rows(self, get_rows, n_in: int, o0: int, o1: int) -> torch.Tensor:
        """Output rows ``[o0, o1)``, ``(B, o1 - o0, W_out, out_dim)``, from input row slabs
        ``get_rows(a, b)`` -> ``(B, in_dim, b - a, W_in)`` of a map with ``n_in`` rows."""
        return self.norm(_conv3x3_rows(self.conv, get_rows, n_in, o0, o1).permute(0, 2, 3, 1))


class Stem(_RowChunked, nn.Module):
    """``(B, in_channels, H, W)`` -> ``(B, ceil(H/4), ceil(W/4), dim)``: two ConvLN with a GELU between."""

    def __init__(self, in_channels: int, dim: int):
        super().__init__()
        self.conv1 = ConvLN(in_channels, max(dim // 2, 1))
        self.act = nn.GELU()
        self.conv2 = ConvLN(max(dim // 2, 1), dim, channels_last_in=True)

    # With autograd: store only the stem's input and recompute its stride-2 maps in the backward
    # (1.7% of VisionGRU-Ti's MACs; at 1024^2 the stem otherwise keeps ~150 MB for the backward).
    recompute = True

    def _full(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.act(self.conv1(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n_in, w_in = x.shape[2], x.shape[3]
        n1 = (n_in + 1) // 2
        n_out, w_out = (n1 + 1) // 2, (w_in + 3) // 4
        c_out = self.conv2.conv.out_channels
        if self.recompute and torch.is_grad_enabled():  # keep the image only; ~4 full-resolution maps less
            return checkpoint(self._full, x, use_reentrant=False)
        if not _lean(self, n_out * w_out, c_out, x.device, x.shape[0]):
            return self._full(x)
        # Row chunks of the output; the first conv's rows (one-row halo) are recomputed per chunk, so
        # neither full-resolution intermediate map is ever held.
        def first(a: int, b: int) -> torch.Tensor:
            return self.act(self.conv1.rows(lambda i, j: x[:, :, i:j], n_in, a, b)).permute(0, 3, 1, 2)

        return _assemble_rows(n_out, _chunk_rows(self, x.device, x.shape[0], n_out, w_out, c_out),
                              lambda o0, o1: self.conv2.rows(first, n1, o0, o1))


class GRU2DMixer(_RowChunked, nn.Module):
    """The 2DGRU token mixer: 3x3 depthwise conv, then a raster-order and a reverse-raster minGRU, summed.

    Input and output ``(B, H, W, dim)``. ``scan_forward`` / ``scan_reverse`` expose the two
    directions on an already-convolved map (each ``(B, H, W, dim)`` -> ``(B, H, W, dim)``); ``mix``
    runs both at once (one input GEMM, one bidirectional ``mingru_scan``, one output GEMM).
    """

    # With autograd: keep only the mixer's input and state for the backward and recompute the (B, L, 4h)
    # projection there (one extra GEMM; at 1024^2 that is 151 MB per first-stage block not stored).
    recompute_proj = True
    # ... and, on sequences whose one-direction projection exceeds this many elements, in token chunks.
    train_chunk_elems = 2 ** 21

    def __init__(self, dim: int, expansion: float = 2.0, backend: Optional[str] = None):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.gru_fwd = MinGRU(dim, expansion=expansion, bias=False, reverse=False, backend=backend)
        self.gru_bwd = MinGRU(dim, expansion=expansion, bias=False, reverse=True, backend=backend)

    @staticmethod
    def _scan(gru: MinGRU, x: torch.Tensor) -> torch.Tensor:
        return from_sequence(gru(to_sequence(x, channels_last=True)), x.shape[1:3], channels_last=True)

    def scan_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raster order (row by row, left to right): output at token t sees tokens 0..t."""
        return self._scan(self.gru_fwd, x)

    def scan_reverse(self, x: torch.Tensor) -> torch.Tensor:
        """Reverse raster order (= the map flipped in H and W): output at token t sees tokens t..L-1."""
        return self._scan(self.gru_bwd, x)

    def fused_weights(self):
        """Both directions' weights as one input and one output projection:
        ``(w_in (4h, dim), b_in (4h,) | None, w_out (dim, 2h), b_out (dim,) | None)``, ``h = hidden_dim``;
        ``w_in`` rows are ``[gate_fwd, cand_fwd, gate_bwd, cand_bwd]`` (``mingru_scan``'s bidirectional
        layout), ``w_out`` columns ``[h_fwd, h_bwd]``, ``b_out`` the sum of both output biases."""
        f, b = self.gru_fwd, self.gru_bwd
        w_in, b_in = bidirectional_in_proj(f, b)
        w_out = torch.cat([f.out_proj.weight, b.out_proj.weight], dim=1)
        b_out = None if f.out_proj.bias is None else f.out_proj.bias + b.out_proj.bias
        return w_in, b_in, w_out, b_out

    def mix(self, y: torch.Tensor) -> torch.Tensor:
        """Both directions on an already-convolved map, summed: ``(B, H, W, dim)`` -> ``(B, H, W, dim)``.

        Equal to ``scan_forward(y) + scan_reverse(y)``; one GEMM ``(B, L, dim) -> (B, L, 4h)``, one
        bidirectional scan into ``(B, L, 2h)``, one GEMM back to ``(B, L, dim)``.
        """
        f, b = self.gru_fwd, self.gru_bwd
        if not can_scan_together(f, b):
            return self.scan_forward(y) + self.scan_reverse(y)  # the directions differ: one call each
        w_in, b_in, w_out, b_out = self.fused_weights()
        seq = to_sequence(y, channels_last=True)
        backend = resolve_backend(f.backend, y.device)
        if self.recompute_proj and torch.is_grad_enabled() and backend != "reference":
            chunk = max(1, int(self.train_chunk_elems // max(w_in.shape[0] // 2, 1)))
            h = _ProjectedBiScan.apply(seq, w_in, b_in, f.candidate_act, backend, chunk)
        else:
            h = bidirectional_scan(f, b, linear(seq, w_in, b_in))
        return from_sequence(linear(h, w_out, b_out), y.shape[1:3], channels_last=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        if _lean(self, H * W, C, x.device, B):
            return self.accumulate_(x, x.new_zeros(B, H, W, self.gru_fwd.out_proj.weight.shape[0]))
        y = self.dwconv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.mix(y)

    def accumulate_(self, x: torch.Tensor, out: torch.Tensor, pre=None) -> torch.Tensor:
        """No-autograd, memory-lean ``out += forward(pre(x))`` in row chunks; returns ``out``.

        ``x``, ``out``: ``(B, H, W, dim)``; ``pre``: an optional per-token module (the block's LayerNorm),
        applied per row slab. Each chunk of about ``infer_chunk_elems`` map elements recomputes ``pre`` and the
        depthwise conv on its rows (one-row halo) and runs one direction's projection, scan (state carried
        in ``h0``) and output projection; the forward direction goes top to bottom, the reverse one
        bottom to top. Nothing of full size is allocated.
        """
        B, H, W, C = x.shape
        rows = _chunk_rows(self, x.device, B, H, W, C)

        def slab(a: int, b: int) -> torch.Tensor:
            t = x[:, a:b] if pre is None else pre(x[:, a:b])
            return t.permute(0, 3, 1, 2)

        starts = list(range(0, H, rows))
        for gru in (self.gru_fwd, self.gru_bwd):
            state = None
            for r0 in (reversed(starts) if gru.reverse else starts):
                r1 = min(r0 + rows, H)
                y = _conv3x3_rows(self.dwconv, slab, H, r0, r1).permute(0, 2, 3, 1).reshape(B, -1, C)
                h = mingru_scan(linear_module(gru.in_proj, y), state, reverse=gru.reverse,
                                candidate_act=gru.candidate_act, backend=gru.backend)
                state = (h[:, 0] if gru.reverse else h[:, -1]).contiguous()
                out[:, r0:r1].add_(linear_module(gru.out_proj, h).view(B, r1 - r0, W, -1))
        return out


class GRU2DBlock(_RowChunked, nn.Module):
    """Pre-norm 2DGRU block, ``(B, H, W, dim)`` -> ``(B, H, W, dim)``."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0, drop_path: float = 0.0,
                 backend: Optional[str] = None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.mixer = GRU2DMixer(dim, backend=backend)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_ratio)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``x`` ``(B, H, W, dim)`` -> ``(B, H, W, dim)``. ``out``: optional buffer of ``x``'s shape that the
        memory-lean inference path writes its result into (its content is overwritten; otherwise ignored)."""
        if _lean(self, x.shape[1] * x.shape[2], x.shape[3], x.device, x.shape[0]):
            return self._forward_lean(x, out)
        x = x + self.drop_path(self.mixer(self.norm1(x)))
        return x + self.drop_path(self._mlp(self.norm2(x)))

    # With autograd: the MLP keeps its GELU input only and recomputes the GELU in the backward.
    recompute_gelu = True

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        mlp = self.mlp
        if self.recompute_gelu and torch.is_grad_enabled() and type(mlp.act) is nn.GELU:
            return _GeluLinear.apply(mlp.fc1(x), mlp.fc2.weight, mlp.fc2.bias, mlp.act.approximate)
        return mlp(x)

    def _forward_lean(self, x: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Inference in row chunks (eval, no autograd: drop path is the identity). Holds ``x``, the output
        and one chunk's temporaries (mixer projections, MLP hidden)."""
        out = x.clone() if out is None or out.shape != x.shape or out.dtype != x.dtype else out.copy_(x)
        out = self.mixer.accumulate_(x, out, pre=self.norm1)
        rows = _chunk_rows(self, x.device, *x.shape)
        for r0 in range(0, out.shape[1], rows):
            chunk = out[:, r0:r0 + rows]
            chunk += self.mlp(self.norm2(chunk))
        return out


class VisionGRUStage(nn.Module):
    """Optional downsampling (ConvLN, width ``in_dim`` -> ``dim``) then ``depth`` blocks.

    ``(B, H, W, in_dim)`` -> ``(B, ceil(H/2), ceil(W/2), dim)`` with downsampling, else the same size.
    """

    def __init__(self, in_dim: int, dim: int, depth: int, drop_paths: Sequence[float], downsample: bool,
                 with_cp: bool = False, backend: Optional[str] = None):
        super().__init__()
        self.with_cp = with_cp
        self.downsample = ConvLN(in_dim, dim, channels_last_in=True) if downsample else nn.Identity()
        self.blocks = nn.ModuleList(GRU2DBlock(dim, drop_path=drop_paths[i], backend=backend)
                                    for i in range(depth))

    def forward(self, x: Union[torch.Tensor, List[torch.Tensor]]) -> torch.Tensor:
        """``x``: the map, or a one-element list holding it (handed over: the list is emptied, so that
        without autograd the input can be freed as soon as the first block is done with it)."""
        if isinstance(x, list):
            x, spare = self.downsample(x.pop()), None
            for blk in self.blocks:  # ping-pong between two maps: no full-size allocation per block
                x, spare = blk(x, out=spare), x
            return x
        return run_blocks(self.blocks, self.downsample(x), self.with_cp)


@register_backbone("visiongru", test_arch=dict(embed_dims=[8, 16, 32, 64], depths=[1, 1, 1, 1]),
                   test_kwargs=dict(pos_embed=True, img_size=32), strides=(4, 8, 16, 32),
                   arch_names={"tiny": "ti", "base": "b"})
class VisionGRU(HierarchicalBackbone):
    """VisionGRU backbone (plain PyTorch; toolkit adapters wrap it).

    Args:
        arch: ``'tiny'`` (aliases ``'ti'``, ``'t'``), ``'base'`` (``'b'``), or
            ``dict(embed_dims=[c0, c1, c2, c3], depths=[d0, d1, d2, d3])``.
        in_channels: image channels.
        img_size: int or (H, W) the learned positional embedding (if the preset or ``pos_embed``
            asks for one) is made for; it lives on the ``ceil(H/4) x ceil(W/4)`` stem grid and is
            bicubic-resized to other grids (in ``forward`` and when a checkpoint is loaded).
            ``None``: no positional embedding whatever the preset.
        out_indices: stages whose outputs ``forward`` returns (0..3, negatives count from the end).
            Stages after the last one listed are not run.
        frozen_stages: ``-1`` freezes nothing; ``0`` freezes the stem and positional embedding;
            ``k >= 1`` also stages ``0..k-1`` (each with its downsampling conv). Frozen parts stay
            in eval mode (no drop path) with ``requires_grad=False``.
        norm_eval: keep BatchNorm layers in eval mode while training. VisionGRU has only
            LayerNorms (no running statistics), so this only matters for BN added by subclasses.
        drop_path_rate: stochastic depth, rising linearly from 0 to this value over all blocks.
        with_cp: gradient checkpointing per block (``torch.utils.checkpoint``; recomputes in backward).
        scan_backend: ``linear_scan`` backend for every minGRU (``None``: best for the device).
        init_cfg: ``None`` or ``dict(type='Pretrained', checkpoint=PATH_OR_URL, prefix=None)``: loaded
            by :meth:`init_weights` (at construction for this plain class; when the runner initialises
            the model for the mm adapters) through :func:`rv_plugins.utils.checkpoint.load_pretrained`
            (prefixes detected, positional embedding resized, one-line report, error if nothing matched).
        num_classes: ``> 0`` adds the classifier used by :meth:`forward_head`.
        preset: ``'released'`` (default: the authors' released code and weights, minGRU candidate
            through ``g``, no positional embedding) or ``'paper'`` (the paper's text: linear candidate,
            positional embedding). See ``PRESETS``.
        candidate_act: ``'identity'`` or ``'g'``; overrides the preset's.
        pos_embed: ``True``/``False`` overrides the preset's choice of a positional embedding.

    Shapes: ``forward(x)`` with ``x`` of shape ``(B, in_channels, H, W)``, any ``H, W >= 1``, returns
    a tuple with, for every ``i`` in ``out_indices`` (in order), a channels-first map
    ``(B, embed_dims[i], ceil(H / s_i), ceil(W / s_i))`` with ``s_i = 4 * 2**i`` (4, 8, 16, 32).
    No padding is needed for this: every 3x3 stride-2 conv (padding 1) maps ``n`` to ``ceil(n/2)``,
    so the scans run on the real tokens only (as in the authors' segmentation code).
    ``forward_head(features)`` -> ``(B, num_classes)``.
    """

    num_stages = 4
    arch_zoo, arch_aliases = ARCH_SETTINGS, ARCH_ALIASES
    arch_hint = "dict(embed_dims=[c0, c1, c2, c3], depths=[d0, d1, d2, d3])"
    maps_channels_last = True

    @classmethod
    def _check_arch(cls, arch: dict) -> dict:
        """Four stages (strides 4/8/16/32): ``embed_dims`` >= 1 and ``depths`` >= 0, as ints."""
        if not {"embed_dims", "depths"} <= set(arch):
            raise ValueError(f"VisionGRU: a custom arch must be a dict with keys 'embed_dims' and 'depths', "
                             f"got {arch!r}")
        dims, depths = [int(c) for c in arch["embed_dims"]], [int(d) for d in arch["depths"]]
        if len(dims) != 4 or len(depths) != 4:
            raise ValueError(f"VisionGRU: arch needs 4 stages (strides 4/8/16/32), got embed_dims={dims} "
                             f"and depths={depths}; give 4 values for each")
        if min(dims) < 1 or min(depths) < 0:
            raise ValueError(f"VisionGRU: embed_dims must be >= 1 and depths >= 0, got {dims} and {depths}")
        return dict(arch, embed_dims=dims, depths=depths)

    def _stage_strides(self):
        return [4 * 2 ** i for i in range(self.num_stages)]

    def __init__(self, arch: Union[str, dict] = "tiny", in_channels: int = 3,
                 img_size: Optional[Union[int, Tuple[int, int]]] = 224, out_indices: Sequence[int] = (3,),
                 frozen_stages: int = -1, norm_eval: bool = False, drop_path_rate: float = 0.1,
                 with_cp: bool = False, scan_backend: Optional[str] = None, init_cfg: Optional[dict] = None,
                 num_classes: int = 0, preset: str = "released", candidate_act: Optional[str] = None,
                 pos_embed: Optional[bool] = None):
        super().__init__()
        self._init_arch(arch)
        if preset not in PRESETS:
            raise ValueError(f"VisionGRU: unknown preset {preset!r}; choose 'released' (the authors' released "
                             "code and weights) or 'paper' (the paper's text)")
        self.preset = preset
        self.candidate_act = candidate_act or PRESETS[preset]["candidate_act"]
        if self.candidate_act not in CANDIDATE_ACTIVATIONS:
            raise ValueError(f"VisionGRU: candidate_act={candidate_act!r}; choose one of {CANDIDATE_ACTIVATIONS}")
        use_pos_embed = PRESETS[preset]["pos_embed"] if pos_embed is None else bool(pos_embed)
        if pos_embed and img_size is None:
            raise ValueError("VisionGRU: pos_embed=True needs img_size (the image size the embedding is made for)")
        self.in_channels = in_channels
        self._setup_conventions(out_indices, frozen_stages, norm_eval)
        self.with_cp = with_cp
        self.init_cfg, self.num_classes = init_cfg, num_classes

        self.stem = Stem(in_channels, self.embed_dims[0])
        if img_size is None or not use_pos_embed:
            self.pos_embed = None
        else:
            ih, iw = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
            grid = (math.ceil(ih / 4), math.ceil(iw / 4))
            self.pos_embed = nn.Parameter(torch.zeros(1, self.embed_dims[0], *grid))  # (1, C0, h, w)

        dpr = self.drop_path_schedule(drop_path_rate, self.depths)
        self.stages = nn.ModuleList(
            VisionGRUStage(self.embed_dims[max(i - 1, 0)], dim, depth, dpr[i], downsample=i > 0, with_cp=with_cp,
                           backend=scan_backend)
            for i, (dim, depth) in enumerate(zip(self.embed_dims, self.depths)))
        self.head = nn.Linear(self.embed_dims[-1], num_classes) if num_classes > 0 else None
        for m in self.modules():  # the preset's candidate activation in every minGRU
            if isinstance(m, MinGRU):
                m.candidate_act = self.candidate_act
        for i, stage in enumerate(self.stages):  # chunking judges the image by its first-stage map
            for m in stage.modules():
                if isinstance(m, _RowChunked):
                    m.first_stage_ratio = 4 ** i * self.embed_dims[0] / self.embed_dims[i]
        self.init_weights()
        self._freeze_stages()

    weights_record_informative = ("arch", "preset")

    def weights_record(self) -> dict:
        """The preset's two settings (checked on load: the same tensors compute otherwise), its name, the arch."""
        return dict(super().weights_record(), preset=self.preset, candidate_act=self.candidate_act,
                    pos_embed=self.pos_embed is not None)

    def init_weights(self) -> None:
        """Truncated-normal (std 0.02) linear weights and positional embedding, zero biases, unit LN,
        then ``init_cfg``'s checkpoint if one is given (see the class docstring).

        Convolutions keep PyTorch's default initialisation.
        """
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self._apply_init_cfg()

    def _pos_embed(self, hw: Tuple[int, int]) -> torch.Tensor:
        """Positional embedding for a stem grid ``hw`` -> ``(1, h, w, C0)``."""
        pe = self.pos_embed
        if tuple(pe.shape[2:]) != tuple(hw):
            pe = F.interpolate(pe, size=hw, mode="bicubic", align_corners=False)
        return pe.permute(0, 2, 3, 1)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """Stem, plus the positional embedding: ``(B, in_channels, H, W)`` -> ``(B, ceil(H/4), ceil(W/4), C0)``."""
        x = self.stem(x)
        if self.pos_embed is not None:  # in place without autograd: no second full-size map
            pe = self._pos_embed(x.shape[1:3])
            x = x.add_(pe) if not torch.is_grad_enabled() else x + pe
        return x

    def _run_stage(self, i: int, box: List[torch.Tensor]) -> torch.Tensor:
        if torch.is_grad_enabled():
            return self.stages[i](box.pop())
        return self.stages[i](box)  # without autograd the stage takes the map out of ``box`` and frees it early
