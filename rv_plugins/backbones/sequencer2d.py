"""Sequencer2D (Tatsunami & Taki, "Sequencer: Deep LSTM for Image Classification", NeurIPS 2022).

Layout (maps inside the network are channels-last ``(B, H, W, C)``)::

    image (B, 3, H, W)
    stem: p0 x p0 conv, stride p0 (patch embedding)                  (B, H/7, W/7, C0)
    stage i: (i > 0) pi x pi conv, stride pi, C(i-1) -> Ci; depths[i] Sequencer2D blocks
    classifier (num_classes > 0): LayerNorm on the last map -> token mean -> linear

    Sequencer2D block:  x = x + drop_path(BiLSTM2D(LN(x)))
                        x = x + drop_path(MLP(LN(x)))          MLP: C -> 3C, GELU, 3C -> C

With the paper's patch sizes ``[7, 2, 1, 1]`` the strides are 7, 14, 14, 14 (stages 2 and 3 keep
the resolution; their "downsampling" is a 1x1 conv, as in the authors' code). BiLSTM2D
(:mod:`rv_plugins.layers.bilstm2d`) runs a bidirectional RNN (hidden ``D = C/4``) down every column
and along every row, concatenates the four directions and fuses them with a linear layer;
``rnn_type`` picks LSTM (the paper), GRU, tanh-RNN (the paper's Table 2e) or minGRU (our scan op).

Parameter names follow the reference implementation (timm ``sequencer2d_*``), so its checkpoints
load with :func:`convert_timm_state_dict`; the forward pass is the same function.
"""
import math
from typing import Dict, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from rv_plugins.layers.bilstm2d import RNN_TYPES, BiLSTM2D
from rv_plugins.backbones.base import HierarchicalBackbone
from rv_plugins.backbones.registry import register_backbone
from rv_plugins.layers.blocks import run_blocks
from rv_plugins.layers.drop_path import DropPath
from rv_plugins.layers.mlp import Mlp
from rv_plugins.ops.modes import is_tracing_or_exporting

__all__ = ["Sequencer2D", "Sequencer2DBlock", "PatchConv", "PatchEmbed", "Downsample", "ARCH_SETTINGS", "ARCH_ALIASES", "convert_timm_state_dict"]

# The paper's Appendix B.2 / the authors' code. Parameters with the 1000-class classifier (LSTM):
# S 27.65M, M 38.31M, L 54.30M (paper: 28M, 38M, 54M); tests/test_sequencer2d.py checks +-2%.
_COMMON = dict(patch_sizes=[7, 2, 1, 1], embed_dims=[192, 384, 384, 384], hidden_dims=[48, 96, 96, 96],
               mlp_ratios=[3.0, 3.0, 3.0, 3.0])
ARCH_SETTINGS: Dict[str, Dict[str, list]] = {
    "s": dict(depths=[4, 3, 8, 3], **_COMMON),
    "m": dict(depths=[4, 3, 14, 3], **_COMMON),
    "l": dict(depths=[8, 8, 16, 4], **_COMMON),
}
ARCH_ALIASES = {"small": "s", "medium": "m", "large": "l"}
_ARCH_KEYS = ("depths", "embed_dims", "patch_sizes", "hidden_dims", "mlp_ratios")


def _pad_to_multiple(x: torch.Tensor, p: int) -> torch.Tensor:
    """Zero-pad a ``(B, C, H, W)`` map at the bottom/right so that ``H`` and ``W`` divide by ``p``.

    A tracer (``torch.jit.trace``, the ONNX exporters) records the padding even when it is zero: its amounts
    are then computed from the traced sizes, so the graph pads right at every other input size too (skipped,
    the padding of a size that ``p`` divides would be missing at every other size). The amounts are written
    with non-negative operands: ONNX's integer division truncates negative ones.
    """
    ph, pw = (p - x.shape[2] % p) % p, (p - x.shape[3] % p) % p
    if is_tracing_or_exporting():
        return F.pad(x, (0, pw, 0, ph))
    return F.pad(x, (0, pw, 0, ph)) if ph or pw else x


class PatchConv(nn.Module):
    """``p x p`` conv, stride ``p``, -> channels-last ``(B, ceil(H/p), ceil(W/p), dim)``: the stem
    (:class:`PatchEmbed`, image ``(B, C_in, H, W)`` in) and the downsampling between stages
    (:class:`Downsample`, map ``(B, H, W, C_in)`` in) are this one layer in two input layouts.

    A size that ``p`` does not divide is zero-padded at the bottom/right for the conv only (as Swin's
    patch merging does), so the following RNNs run on real tokens. ``floor = True`` (set by
    ``Sequencer2D(grid_rounding='floor')``): no padding, ``(B, floor(H/p), floor(W/p), dim)``, the last
    ``H mod p`` rows / ``W mod p`` columns dropped (timm's behaviour). The conv is stored under
    ``conv_name`` (``proj`` / ``down``: the reference implementation's parameter names).
    """

    floor = False
    channels_last_in = False
    conv_name = "proj"
    too_small = "input {size} is smaller than the {p}x{p} patch"

    def __init__(self, in_dim: int, dim: int, patch_size: int):
        super().__init__()
        self.patch_size = patch_size
        setattr(self, self.conv_name, nn.Conv2d(in_dim, dim, patch_size, stride=patch_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last_in:
            x = x.permute(0, 3, 1, 2)
        p = self.patch_size
        if not self.floor:
            x = _pad_to_multiple(x, p)
        elif min(x.shape[2:]) < p:
            raise ValueError(f"Sequencer2D(grid_rounding='floor'): {self.too_small.format(size=tuple(x.shape[2:]), p=p)}"
                             "; use a larger image or grid_rounding='ceil'")
        return getattr(self, self.conv_name)(x).permute(0, 2, 3, 1)


class PatchEmbed(PatchConv):
    """Stem: image ``(B, C_in, H, W)`` -> ``(B, ceil(H/p), ceil(W/p), dim)`` (see :class:`PatchConv`)."""


class Downsample(PatchConv):
    """Between stages: ``(B, H, W, C_in)`` -> ``(B, ceil(H/p), ceil(W/p), dim)`` (see :class:`PatchConv`)."""

    channels_last_in = True
    conv_name = "down"
    too_small = "a {size} map is smaller than the {p}x{p} downsampling"


class Sequencer2DBlock(nn.Module):
    """``(B, H, W, dim)`` -> ``(B, H, W, dim)``: BiLSTM2D token mixing, then the channel MLP."""

    def __init__(self, dim: int, hidden_dim: int, mlp_ratio: float = 3.0, drop_path: float = 0.0,
                 rnn_type: str = "lstm", rnn_impl: str = "auto", scan_backend: Optional[str] = None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.rnn_tokens = BiLSTM2D(dim, hidden_dim, rnn_type=rnn_type, impl=rnn_impl,
                                   scan_backend=scan_backend)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp_channels = Mlp(dim, mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.rnn_tokens(self.norm1(x)))
        return x + self.drop_path(self.mlp_channels(self.norm2(x)))


class Sequencer2DStage(nn.Module):
    """Optional downsampling, then ``len(drop_paths)`` blocks: ``(B, H, W, C_in)`` -> ``(B, H', W', dim)``."""

    def __init__(self, in_dim: int, dim: int, patch_size: int, hidden_dim: int, mlp_ratio: float,
                 drop_paths: Sequence[float], downsample: bool, with_cp: bool = False, **block_kwargs):
        super().__init__()
        self.with_cp = with_cp
        self.downsample = Downsample(in_dim, dim, patch_size) if downsample else nn.Identity()
        self.blocks = nn.Sequential(*[Sequencer2DBlock(dim, hidden_dim, mlp_ratio, dp, **block_kwargs)
                                      for dp in drop_paths])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_blocks(self.blocks, self.downsample(x), self.with_cp)


@register_backbone("sequencer2d", strides=(7, 14, 14, 14),
                   test_arch=dict(depths=[1, 1, 1, 1], embed_dims=[16, 32, 32, 32], patch_sizes=[7, 2, 1, 1]))
class Sequencer2D(HierarchicalBackbone):
    """Sequencer2D backbone (plain PyTorch; toolkit adapters wrap it).

    Args:
        arch: ``'s'``, ``'m'``, ``'l'`` (aliases ``'small'``, ``'medium'``, ``'large'``) or a dict
            with per-stage lists ``depths``, ``embed_dims``, ``patch_sizes`` and optionally
            ``hidden_dims`` (default ``C // 4``) and ``mlp_ratios`` (default 3).
        rnn_type: ``'lstm'`` (the paper), ``'gru'``, ``'rnn'`` or ``'mingru'`` in every BiLSTM2D.
        in_channels: image channels.
        out_indices: stages whose outputs ``forward`` returns (negatives count from the end).
            Stages after the last one listed are not run.
        frozen_stages: ``-1`` freezes nothing; ``0`` the stem; ``k >= 1`` also stages ``0..k-1``
            (with their downsampling convs; the final norm with the last stage). Frozen parts stay
            in eval mode (no drop path) with ``requires_grad=False``.
        norm_eval: keep normalisation layers in eval mode while training. Sequencer2D has only
            LayerNorms (no running statistics), so this changes nothing unless BatchNorms are added.
        drop_path_rate: stochastic depth, rising linearly from 0 to this value over all blocks
            (the authors' code; paper/timm recipe: S 0.1, M 0.2, L 0.4).
        with_cp: gradient checkpointing per block (``torch.utils.checkpoint``; recomputes in backward).
        final_norm: LayerNorm on the last stage's output (the classifier's norm; set it for
            classification with a separate pooling head, e.g. in mmpretrain).
        num_classes: ``> 0`` adds the classifier (implies ``final_norm``) used by :meth:`forward_head`.
        rnn_impl: BiLSTM2D implementation, ``'auto'``, ``'native'`` or ``'fused'`` (same results).
        scan_backend: ``linear_scan`` backend for ``rnn_type='mingru'``.
        grid_rounding: ``'ceil'`` (default): a size that the patch size does not divide is zero-padded
            up, so every pixel is seen (segmentation). ``'floor'``: the strided convolutions drop the
            border instead, as timm's ``sequencer2d_*`` does, so timm's weights give timm's logits at
            any input size (at multiples of 14 both are the same).
        init_cfg: ``None`` or ``dict(type='Pretrained', checkpoint=PATH_OR_URL, prefix=None)``, loaded by
            :meth:`init_weights` (at construction for this plain class; when the runner initialises the
            model for the mm adapters) via :func:`rv_plugins.utils.checkpoint.load_pretrained` (prefixes
            detected, one-line report, error if nothing matched). timm checkpoints: convert with
            :func:`convert_timm_state_dict` first.

    Shapes: ``forward(x)`` with ``x`` of shape ``(B, in_channels, H, W)``, any ``H, W >= 1``,
    returns a tuple with, for every ``i`` in ``out_indices`` (in order), a channels-first map
    ``(B, embed_dims[i], H_i, W_i)`` with ``H_i = ceil(H_(i-1) / patch_sizes[i])`` from
    ``H_(-1) = H`` (``ceil(H / 7)``, ``ceil(H / 14)``, ... for the paper's archs; exact strides
    when ``H`` divides by 14). ``forward_head(features)`` -> ``(B, num_classes)``.
    """

    arch_zoo, arch_aliases = ARCH_SETTINGS, ARCH_ALIASES
    arch_hint = "a dict with per-stage lists depths, embed_dims, patch_sizes (optional: hidden_dims, mlp_ratios)"
    maps_channels_last = True

    @classmethod
    def _check_arch(cls, arch: dict) -> dict:
        """Keys ``depths``, ``embed_dims``, ``patch_sizes`` (``hidden_dims`` default C/4, ``mlp_ratios`` 3),
        one entry per stage."""
        unknown = set(arch) - set(_ARCH_KEYS)
        missing = {"depths", "embed_dims", "patch_sizes"} - set(arch)
        if unknown or missing:
            raise ValueError(f"Sequencer2D: arch dict needs keys depths, embed_dims, patch_sizes (optional: "
                             f"hidden_dims, mlp_ratios); missing {sorted(missing)}, unknown {sorted(unknown)}")
        cfg = {k: list(v) for k, v in arch.items()}
        cfg.setdefault("hidden_dims", [c // 4 for c in cfg["embed_dims"]])
        cfg.setdefault("mlp_ratios", [3.0] * len(cfg["depths"]))
        lengths = {k: len(cfg[k]) for k in _ARCH_KEYS}
        if len(set(lengths.values())) != 1 or not cfg["depths"]:
            raise ValueError(f"Sequencer2D: every arch list needs one entry per stage, got lengths {lengths}")
        return cfg

    def _stage_strides(self):
        return [math.prod(self.arch["patch_sizes"][:i + 1]) for i in range(self.num_stages)]

    def __init__(self, arch: Union[str, dict] = "s", rnn_type: str = "lstm", in_channels: int = 3,
                 out_indices: Sequence[int] = (3,), frozen_stages: int = -1, norm_eval: bool = False,
                 drop_path_rate: float = 0.0, with_cp: bool = False, final_norm: bool = False,
                 num_classes: int = 0, rnn_impl: str = "auto", scan_backend: Optional[str] = None,
                 init_cfg: Optional[dict] = None, grid_rounding: str = "ceil"):
        super().__init__()
        if grid_rounding not in ("ceil", "floor"):
            raise ValueError(f"Sequencer2D: grid_rounding={grid_rounding!r}; choose 'ceil' (pad, every pixel "
                             "seen) or 'floor' (drop the border, as timm)")
        self.grid_rounding = grid_rounding
        if rnn_type not in RNN_TYPES:
            raise ValueError(f"Sequencer2D: unknown rnn_type {rnn_type!r}; choose one of {RNN_TYPES}")
        cfg = self._init_arch(arch)
        self.in_channels, self.rnn_type = in_channels, rnn_type
        self._setup_conventions(out_indices, frozen_stages, norm_eval)
        self.with_cp = with_cp
        self.init_cfg, self.num_classes = init_cfg, num_classes

        self.stem = PatchEmbed(in_channels, self.embed_dims[0], cfg["patch_sizes"][0])
        dpr = self.drop_path_schedule(drop_path_rate, self.depths)
        self.stages = nn.ModuleList(
            Sequencer2DStage(self.embed_dims[max(i - 1, 0)], self.embed_dims[i], cfg["patch_sizes"][i],
                             cfg["hidden_dims"][i], cfg["mlp_ratios"][i], dpr[i], downsample=i > 0, with_cp=with_cp,
                             rnn_type=rnn_type, rnn_impl=rnn_impl, scan_backend=scan_backend)
            for i in range(self.num_stages))
        self.final_norm = final_norm or num_classes > 0
        self.norm = nn.LayerNorm(self.embed_dims[-1], eps=1e-6) if self.final_norm else None
        self.head = nn.Linear(self.embed_dims[-1], num_classes) if num_classes > 0 else None
        for m in self.modules():
            if isinstance(m, (PatchEmbed, Downsample)):
                m.floor = grid_rounding == "floor"
        self.init_weights()
        self._freeze_stages()

    # ------------------------------------------------------------------ weights
    def init_weights(self) -> None:
        """The authors' initialisation: Xavier-uniform linear weights with zero biases (MLP biases
        N(0, 1e-6)), zero classifier, LeCun-normal convolutions, unit LayerNorms, RNN weights
        U(-1/sqrt(D), 1/sqrt(D)); then ``init_cfg``'s checkpoint if one is given."""
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                if name == "head":
                    nn.init.zeros_(m.weight)
                    nn.init.zeros_(m.bias)
                    continue
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    if "mlp" in name:
                        nn.init.normal_(m.bias, std=1e-6)
                    else:
                        nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                fan_in = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
                std = math.sqrt(1.0 / fan_in) / 0.87962566103423978  # std of N(0,1) truncated to +-2
                nn.init.trunc_normal_(m.weight, std=std, a=-2 * std, b=2 * std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.LSTM, nn.GRU, nn.RNN)):
                bound = 1.0 / math.sqrt(m.hidden_size)
                for p in m.parameters():
                    nn.init.uniform_(p, -bound, bound)
        self._apply_init_cfg()


def convert_timm_state_dict(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """A timm ``sequencer2d_*`` state dict -> ours (``Sequencer2D(num_classes=1000)``): only the
    classifier is renamed (``head.fc.*`` -> ``head.*``). For a backbone without classifier load
    with ``strict=False`` or drop ``head.*`` (and ``norm.*`` unless ``final_norm``)."""
    return {(k.replace("head.fc.", "head.", 1) if k.startswith("head.fc.") else k): v
            for k, v in state_dict.items()}
