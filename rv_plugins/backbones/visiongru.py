"""VisionGRU (Shicheng Yin et al., 2024, arXiv:2412.18178): a hierarchical backbone of 2DGRU blocks.

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

Execution: the mixer runs both directions as one input GEMM, one bidirectional
:func:`rv_plugins.ops.mingru_scan` (gates computed inside the scan) and one output projection (the sum
of the two directions); the parameters stay ``gru_fwd.*`` / ``gru_bwd.*``. Without autograd the input
weights are used without a copy (they share one buffer) and, off the CPU, the output weights too
(:mod:`rv_plugins.layers.bidirectional_mingru`); on the CPU these GEMMs and the MLP's run through oneDNN
(:mod:`rv_plugins.ops.linear`, GELU fused). Under autocast the LayerNorms return the autocast dtype
(statistics in float32), so the residual stream stays in it. With autograd the mixer stores no
projection (``projected_bidirectional_scan``), the MLP no GELU output (``gelu_linear``) and the stem
only its input (checkpointed). Without autograd and outside training, every map of more than
``infer_chunk_elems`` elements (tokens x channels; stem, downsampling, blocks; the default ``"auto"``
picks the chunk by device and image size, see ``set_infer_chunk``) runs in row chunks of about that
size (:mod:`rv_plugins.layers.row_chunked`). Tracing and exporting take the plain one-call path.
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from rv_plugins.backbones.base import HierarchicalBackbone
from rv_plugins.backbones.registry import register_backbone
from rv_plugins.layers.blocks import run_blocks
from rv_plugins.layers.conv_ln import ConvLN, Stem
from rv_plugins.layers.drop_path import DropPath
from rv_plugins.layers.bidirectional_mingru import bidirectional_sum, bidirectional_weights, pack_in_proj
from rv_plugins.layers.mingru import CANDIDATE_ACTIVATIONS, MinGRU, can_scan_together
from rv_plugins.layers.mlp import Mlp, gelu_linear
from rv_plugins.layers.norm import LayerNorm
from rv_plugins.layers.row_chunked import (INFER_CHUNK_AUTO, INFER_CHUNK_ELEMS,  # noqa: F401 - re-exported
                                           INFER_CHUNK_ELEMS_ACCELERATOR, INFER_CHUNK_ELEMS_SMALL_IMAGE,
                                           INFER_LARGE_IMAGE_ELEMS, RowChunked, accumulate_scans_in_rows_,
                                           chunk_rows, set_infer_chunk, takes_lean_path, update_rows_)
from rv_plugins.ops.layout import from_sequence, to_sequence
from rv_plugins.ops.modes import is_tracing_or_exporting

__all__ = ["VisionGRU", "GRU2DBlock", "GRU2DMixer", "ARCH_SETTINGS", "ARCH_ALIASES", "set_infer_chunk", "PRESETS"]

_lean = takes_lean_path  # this module's name for it before the row-chunked execution moved to a layer module

# Widths: base width 72 (Ti) / 104 (B), doubled at every downsampling, as in the authors' code
# (``dim = 288 // 4`` and ``416 // 4``); depths are the paper's ([2, 2, 8, 2] and [2, 2, 15, 2]).
# With the 1000-class classifier and the 56x56 positional embedding of img_size=224 this gives
# 30.44M (Ti) and 87.23M (B) parameters (paper: 30M and 86M); ``tests/test_visiongru.py`` checks +-5%.
ARCH_SETTINGS: Dict[str, Dict[str, list]] = {
    "tiny": dict(embed_dims=[72, 144, 288, 576], depths=[2, 2, 8, 2]),
    "base": dict(embed_dims=[104, 208, 416, 832], depths=[2, 2, 15, 2]),
}
ARCH_ALIASES = {"ti": "tiny", "t": "tiny", "b": "base"}

# The two published descriptions of VisionGRU differ in two points (docs/pretrained_weights.md):
#   'released': the authors' released code and ImageNet weights: minGRU candidate through g(.)
#               (minGRU-pytorch 0.0.12), no positional embedding. Converted authors' checkpoints
#               (tools/convert_visiongru_checkpoint.py) need it; it is the default.
#   'paper':    the paper's text: linear candidate (its Eq. 8) and a learned positional embedding.
PRESETS: Dict[str, Dict[str, object]] = {
    "released": dict(candidate_act="g", pos_embed=False),
    "paper": dict(candidate_act="identity", pos_embed=True),
}

class GRU2DMixer(RowChunked, nn.Module):
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
        self._pack()

    def _pack(self) -> None:
        # a plain attribute, not a registered buffer: the parameters are the state, they are views of it
        self._in_proj_buffer = pack_in_proj(self.gru_fwd, self.gru_bwd)

    def _apply(self, fn, recurse=True):
        module = super()._apply(fn, recurse)  # .to() / .half() / .cuda() give each parameter its own tensor
        self._pack()
        return module

    def __setstate__(self, state):  # copy.deepcopy and unpickling copy the parameters one by one
        super().__setstate__(state)
        self._pack()

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
        """Both directions' weights as one input and one output projection, concatenated
        (:func:`rv_plugins.layers.bidirectional_mingru.bidirectional_weights`):
        ``(w_in (4h, dim), b_in, w_out (dim, 2h), b_out)``."""
        return bidirectional_weights(self.gru_fwd, self.gru_bwd)

    def mix(self, y: torch.Tensor) -> torch.Tensor:
        """Both directions on an already-convolved map, summed: ``(B, H, W, dim)`` -> ``(B, H, W, dim)``.

        Equal to ``scan_forward(y) + scan_reverse(y)``; one GEMM ``(B, L, dim) -> (B, L, 4h)``, one
        bidirectional scan into ``(B, L, 2h)``, one GEMM back to ``(B, L, dim)``
        (:func:`rv_plugins.layers.mingru.bidirectional_sum`).
        """
        f, b = self.gru_fwd, self.gru_bwd
        if not can_scan_together(f, b):
            return self.scan_forward(y) + self.scan_reverse(y)  # the directions differ: one call each
        seq = to_sequence(y, channels_last=True)
        out = bidirectional_sum(f, b, seq, self.recompute_proj, self.train_chunk_elems, "GRU2DMixer",
                                "GRU2DMixer.recompute_proj", packed=self._in_proj_buffer)
        return from_sequence(out, y.shape[1:3], channels_last=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        if takes_lean_path(self, H * W, C, x.device, B):
            return self.accumulate_(x, x.new_zeros(B, H, W, self.gru_fwd.out_proj.weight.shape[0]))
        y = self.dwconv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.mix(y)

    def accumulate_(self, x: torch.Tensor, out: torch.Tensor, pre=None) -> torch.Tensor:
        """No-autograd, memory-lean ``out += forward(pre(x))`` in row chunks of about ``infer_chunk_elems``
        map elements (:func:`rv_plugins.layers.row_chunked.accumulate_scans_in_rows_`); returns ``out``.

        ``x``, ``out``: ``(B, H, W, dim)``; ``pre``: an optional per-token module (the block's LayerNorm),
        applied per row slab. Nothing of full size is allocated.
        """
        rows = chunk_rows(self, x.device, *x.shape)
        return accumulate_scans_in_rows_(self.dwconv, (self.gru_fwd, self.gru_bwd), x, out, rows, pre)


class GRU2DBlock(RowChunked, nn.Module):
    """Pre-norm 2DGRU block, ``(B, H, W, dim)`` -> ``(B, H, W, dim)``."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0, drop_path: float = 0.0,
                 backend: Optional[str] = None):
        super().__init__()
        self.norm1 = LayerNorm(dim)
        self.mixer = GRU2DMixer(dim, backend=backend)
        self.norm2 = LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_ratio)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``x`` ``(B, H, W, dim)`` -> ``(B, H, W, dim)``. ``out``: optional buffer of ``x``'s shape that the
        memory-lean inference path writes its result into (its content is overwritten; otherwise ignored)."""
        if takes_lean_path(self, x.shape[1] * x.shape[2], x.shape[3], x.device, x.shape[0]):
            return self._forward_lean(x, out)
        x = x + self.drop_path(self.mixer(self.norm1(x)))
        return x + self.drop_path(self._mlp(self.norm2(x)))

    # With autograd: the MLP keeps its GELU input only and recomputes the GELU in the backward.
    recompute_gelu = True

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        mlp = self.mlp
        if (self.recompute_gelu and torch.is_grad_enabled() and type(mlp.act) is nn.GELU
                and not is_tracing_or_exporting()):
            return gelu_linear(mlp.fc1(x), mlp.fc2.weight, mlp.fc2.bias, mlp.act.approximate,
                               "GRU2DBlock MLP", "GRU2DBlock.recompute_gelu")
        return mlp(x)

    def _forward_lean(self, x: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Inference in row chunks (eval, no autograd: drop path is the identity). Holds ``x``, the output
        and one chunk's temporaries (mixer projections, MLP hidden)."""
        out = x.clone() if out is None or out.shape != x.shape or out.dtype != x.dtype else out.copy_(x)
        out = self.mixer.accumulate_(x, out, pre=self.norm1)
        return update_rows_(out, chunk_rows(self, x.device, *x.shape), lambda chunk: self.mlp(self.norm2(chunk)))


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
                if isinstance(m, RowChunked):
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
        # a tracer records the resize even to the embedding's own size (an identity): skipped, the traced
        # graph would add the unresized embedding at every other size
        if tuple(pe.shape[2:]) != tuple(hw) or is_tracing_or_exporting():
            pe = F.interpolate(pe, size=hw, mode="bicubic", align_corners=False)
        return pe.permute(0, 2, 3, 1)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """Stem, plus the positional embedding: ``(B, in_channels, H, W)`` -> ``(B, ceil(H/4), ceil(W/4), C0)``."""
        x = self.stem(x)
        if self.pos_embed is not None:  # in place without autograd: no second full-size map
            pe = self._pos_embed(x.shape[1:3]).to(x.dtype)  # the stem's dtype (autocast's): the residual stream's
            x = x.add_(pe) if not torch.is_grad_enabled() else x + pe
        return x

    def _run_stage(self, i: int, box: List[torch.Tensor]) -> torch.Tensor:
        if torch.is_grad_enabled():
            return self.stages[i](box.pop())
        return self.stages[i](box)  # without autograd the stage takes the map out of ``box`` and frees it early
