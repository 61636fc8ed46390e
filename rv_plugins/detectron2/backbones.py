"""VisionGRU-FPN and Sequencer2D-FPN backbones for Detectron2 (``MODEL.BACKBONE.NAME``).

A thin :class:`~detectron2.modeling.Backbone` wrapper names the stage outputs ``res2..res5``
(strides 4, 8, 16, 32, as ResNet's) and Detectron2's own ``FPN`` with ``LastLevelMaxPool`` turns
them into ``p2..p6`` (``MODEL.FPN.IN_FEATURES`` must name a subset of the wrapper's
``OUT_FEATURES``). Settings: ``MODEL.VISIONGRU`` / ``MODEL.SEQUENCER2D`` (``add_rv_config``).

VisionGRU has strides 4/8/16/32 natively. Sequencer2D's paper archs use patch sizes
``[7, 2, 1, 1]``, i.e. strides 7/14/14/14, which an FPN cannot fuse (it needs each level at half
the previous resolution); the wrapper then resizes each stage map bilinearly to
``(H / s, W / s)`` for ``s`` in 4/8/16/32 and logs that once. ``MODEL.SEQUENCER2D.PATCH_SIZES:
[4, 2, 2, 2]`` gives native strides 4/8/16/32 and no resizing (the weights of a classifier
trained with other patch sizes then do not fit the stem and downsampling convs).

Pretrained backbone weights: ``MODEL.VISIONGRU.PRETRAINED`` / ``MODEL.SEQUENCER2D.PRETRAINED`` (a path
or URL) are loaded when the backbone is built, by the package's one loader
(:func:`rv_plugins.utils.checkpoint.load_pretrained`: ``backbone.`` / ``backbone.bottom_up.body.`` /
wrapper prefixes detected, positional embeddings resized, a one-line report, an error when no tensor
matched). ``MODEL.WEIGHTS``, which Detectron2 loads into the whole model afterwards, overrides them.
"""
import logging
from typing import Dict, Sequence

import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool

from rv_plugins.backbones.sequencer2d import ARCH_ALIASES as SEQ_ALIASES
from rv_plugins.backbones.sequencer2d import ARCH_SETTINGS as SEQ_ARCHS
from rv_plugins.backbones.sequencer2d import Sequencer2D
from rv_plugins.backbones.visiongru import VisionGRU

logger = logging.getLogger(__name__)
STAGE_NAMES = ("res2", "res3", "res4", "res5")
STAGE_STRIDES = (4, 8, 16, 32)
__all__ = ["RecurrentBackbone", "build_visiongru_fpn_backbone", "build_sequencer2d_fpn_backbone"]


def _pretrained(node):
    """``init_cfg`` for the node's ``PRETRAINED`` path (``None`` when empty)."""
    path = node.get("PRETRAINED", "")
    return dict(type="Pretrained", checkpoint=path) if path else None


def _stage_indices(out_features: Sequence[str], owner: str):
    unknown = [name for name in out_features if name not in STAGE_NAMES]
    if unknown or not out_features:
        raise ValueError(f"{owner}.OUT_FEATURES={list(out_features)}: use a non-empty subset of "
                         f"{list(STAGE_NAMES)}")
    return tuple(STAGE_NAMES.index(name) for name in out_features)


class RecurrentBackbone(Backbone):
    """Detectron2 ``Backbone`` around a plain-PyTorch backbone returning a tuple of stage maps.

    Args:
        body: module mapping images ``(B, 3, H, W)`` to a tuple of ``(B, C_i, H_i, W_i)`` maps,
            one per entry of ``out_features`` (in that order).
        out_features: names from ``res2..res5`` (stage 0..3).
        channels: ``C_i`` per output.
        native_strides: the body's stride per output; where it differs from the named stride
            (4/8/16/32) the map is resized bilinearly to ``(ceil(H/s), ceil(W/s))``.

    ``forward(images (B, 3, H, W))`` -> ``{name: (B, C_i, ceil(H/s_i), ceil(W/s_i))}``.
    """

    def __init__(self, body: torch.nn.Module, out_features: Sequence[str], channels: Sequence[int],
                 native_strides: Sequence[int]):
        super().__init__()
        self.body = body
        self._out_features = list(out_features)
        self._out_feature_channels = dict(zip(self._out_features, channels))
        self._out_feature_strides = {name: STAGE_STRIDES[STAGE_NAMES.index(name)] for name in self._out_features}
        self._native_strides = dict(zip(self._out_features, native_strides))
        self.resized = [n for n in self._out_features if self._native_strides[n] != self._out_feature_strides[n]]
        if self.resized:
            logger.info("%s: stage strides %s differ from %s; resizing %s bilinearly", type(body).__name__,
                        list(native_strides), [self._out_feature_strides[n] for n in self._out_features],
                        self.resized)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        maps = self.body(x)
        height, width = x.shape[-2:]
        out = {}
        for name, feat in zip(self._out_features, maps):
            stride = self._out_feature_strides[name]
            size = (-(-height // stride), -(-width // stride))
            if tuple(feat.shape[-2:]) != size:
                feat = F.interpolate(feat, size=size, mode="bilinear", align_corners=False)
            out[name] = feat
        return out

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {name: ShapeSpec(channels=self._out_feature_channels[name],
                                stride=self._out_feature_strides[name]) for name in self._out_features}


def _fpn(cfg, bottom_up: Backbone) -> FPN:
    missing = [f for f in cfg.MODEL.FPN.IN_FEATURES if f not in bottom_up.output_shape()]
    if missing:
        raise ValueError(f"MODEL.FPN.IN_FEATURES {list(cfg.MODEL.FPN.IN_FEATURES)} names {missing}, which "
                         f"the backbone does not output ({list(bottom_up.output_shape())}); add them to "
                         "the backbone's OUT_FEATURES")
    return FPN(bottom_up=bottom_up, in_features=cfg.MODEL.FPN.IN_FEATURES,
               out_channels=cfg.MODEL.FPN.OUT_CHANNELS, norm=cfg.MODEL.FPN.NORM,
               top_block=LastLevelMaxPool(), fuse_type=cfg.MODEL.FPN.FUSE_TYPE)


@BACKBONE_REGISTRY.register()
def build_visiongru_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """VisionGRU (``MODEL.VISIONGRU``) + FPN -> ``p2..p6`` (with the default ``FPN.IN_FEATURES``)."""
    c = cfg.MODEL.VISIONGRU
    indices = _stage_indices(c.OUT_FEATURES, "MODEL.VISIONGRU")
    body = VisionGRU(arch=c.ARCH, in_channels=input_shape.channels, img_size=c.IMG_SIZE or None,
                     out_indices=indices, frozen_stages=c.FROZEN_STAGES,
                     drop_path_rate=c.DROP_PATH_RATE, with_cp=c.WITH_CP, preset=c.get("PRESET", "released"),
                     init_cfg=_pretrained(c))
    channels = [body.embed_dims[i] for i in indices]
    bottom_up = RecurrentBackbone(body, c.OUT_FEATURES, channels, [STAGE_STRIDES[i] for i in indices])
    return _fpn(cfg, bottom_up)


@BACKBONE_REGISTRY.register()
def build_sequencer2d_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """Sequencer2D (``MODEL.SEQUENCER2D``) + FPN -> ``p2..p6`` (see the module docstring on strides)."""
    c = cfg.MODEL.SEQUENCER2D
    indices = _stage_indices(c.OUT_FEATURES, "MODEL.SEQUENCER2D")
    arch = c.ARCH
    if c.PATCH_SIZES:
        key = SEQ_ALIASES.get(arch.lower(), arch.lower())
        if key not in SEQ_ARCHS:
            raise ValueError(f"MODEL.SEQUENCER2D.ARCH={arch!r}: unknown; use one of {sorted(SEQ_ARCHS)}")
        if len(c.PATCH_SIZES) != len(SEQ_ARCHS[key]["depths"]):
            raise ValueError(f"MODEL.SEQUENCER2D.PATCH_SIZES={list(c.PATCH_SIZES)}: give one patch size "
                             f"per stage ({len(SEQ_ARCHS[key]['depths'])})")
        arch = dict(SEQ_ARCHS[key], patch_sizes=list(c.PATCH_SIZES))
    body = Sequencer2D(arch=arch, rnn_type=c.RNN_TYPE, in_channels=input_shape.channels,
                       out_indices=indices, frozen_stages=c.FROZEN_STAGES,
                       drop_path_rate=c.DROP_PATH_RATE, with_cp=c.WITH_CP, init_cfg=_pretrained(c))
    strides, stride = [], 1
    for p in body.arch["patch_sizes"]:
        stride *= p
        strides.append(stride)
    channels = [body.embed_dims[i] for i in indices]
    bottom_up = RecurrentBackbone(body, c.OUT_FEATURES, channels, [strides[i] for i in indices])
    return _fpn(cfg, bottom_up)
