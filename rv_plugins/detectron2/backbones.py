"""Every registered backbone + FPN for Detectron2 (``MODEL.BACKBONE.NAME: build_<family>_fpn_backbone``).

For each entry of the backbone registry (:mod:`rv_plugins.backbones.registry`) this module registers
``build_<family>_fpn_backbone`` in Detectron2's ``BACKBONE_REGISTRY`` (``build_visiongru_fpn_backbone``,
``build_sequencer2d_fpn_backbone``, ...), configured by ``MODEL.<FAMILY>`` (generated from the constructor:
see :mod:`rv_plugins.detectron2.config`). A thin :class:`~detectron2.modeling.Backbone` wrapper names the
stage outputs ``res2, res3, ...`` (stage 0 is ``res2``) and Detectron2's own ``FPN`` with
``LastLevelMaxPool`` turns them into ``p2..p6`` (``MODEL.FPN.IN_FEATURES`` must name a subset of the
wrapper's ``OUT_FEATURES``).

Strides: the wrapper reads each stage's stride from the model (``feature_info``). Detectron2's FPN needs
the levels at strides 4, 8, 16, 32 (each half the previous resolution; the zoo's anchors and Panoptic
FPN's semantic head assume them), which ``res2..res5`` then report, as ResNet's. VisionGRU has these
strides natively. Sequencer2D's paper archs (patch sizes ``[7, 2, 1, 1]``) have 7/14/14/14, which no FPN
can fuse; for such a stage the wrapper resizes the map bilinearly to ``(ceil(H/s), ceil(W/s))`` and logs
that once (``RecurrentBackbone.resized``). ``MODEL.SEQUENCER2D.PATCH_SIZES: [4, 2, 2, 2]`` gives native
strides 4/8/16/32 and no resizing (the weights of a classifier trained with other patch sizes then do
not fit the stem and downsampling convs).

Pretrained backbone weights: ``MODEL.<FAMILY>.PRETRAINED`` (a path or URL) is loaded when the backbone is
built, by the package's one loader (:func:`rv_plugins.utils.checkpoint.load_pretrained`: ``backbone.`` /
``backbone.bottom_up.body.`` / wrapper prefixes detected, positional embeddings resized, a one-line
report, an error when no tensor matched). ``MODEL.WEIGHTS``, which Detectron2 loads into the whole model
afterwards, overrides them.
"""
import logging
from typing import Callable, Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool

from rv_plugins.backbones.registry import BACKBONES, BackboneEntry
from rv_plugins.detectron2.config import backbone_kwargs, node_name, stage_names

logger = logging.getLogger(__name__)
__all__ = ["RecurrentBackbone", "build_backbone_fpn", "fpn_builder", "build_visiongru_fpn_backbone",
           "build_sequencer2d_fpn_backbone"]


def fpn_stride(index: int) -> int:
    """The stride Detectron2's FPN expects of stage ``index`` (``res{index + 2}``): 4, 8, 16, 32, ..."""
    return 2 ** (index + 2)


def _stage_indices(out_features: Sequence[str], owner: str, num_stages: int):
    names = stage_names(num_stages)
    unknown = [name for name in out_features if name not in names]
    if unknown or not out_features:
        raise ValueError(f"{owner}.OUT_FEATURES={list(out_features)}: use a non-empty subset of {names}")
    return tuple(names.index(name) for name in out_features)


class RecurrentBackbone(Backbone):
    """Detectron2 ``Backbone`` around a plain-PyTorch backbone returning a tuple of stage maps.

    Args:
        body: module mapping images ``(B, 3, H, W)`` to a tuple of ``(B, C_i, H_i, W_i)`` maps,
            one per entry of ``out_features`` (in that order).
        out_features: names ``res{i + 2}`` of the stages ``i`` the body returns.
        channels: ``C_i`` per output.
        native_strides: the body's stride per output; where it differs from the FPN's stride of that name
            (4/8/16/32 for ``res2..res5``) the map is resized bilinearly to ``(ceil(H/s), ceil(W/s))``.

    ``forward(images (B, 3, H, W))`` -> ``{name: (B, C_i, ceil(H/s_i), ceil(W/s_i))}``.
    """

    def __init__(self, body: torch.nn.Module, out_features: Sequence[str], channels: Sequence[int],
                 native_strides: Sequence[int]):
        super().__init__()
        self.body = body
        self._out_features = list(out_features)
        self._out_feature_channels = dict(zip(self._out_features, channels))
        self._out_feature_strides = {name: fpn_stride(int(name[3:]) - 2) for name in self._out_features}
        self.resized = [n for n, s in zip(self._out_features, native_strides) if s != self._out_feature_strides[n]]
        if self.resized:
            logger.info("%s: stage strides %s differ from %s; resizing %s bilinearly for the FPN",
                        type(body).__name__, list(native_strides),
                        [self._out_feature_strides[n] for n in self._out_features], self.resized)

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
    top_block = LastLevelMaxPool()  # p6 from the last level: p5 for res2..res5 (as Detectron2's), p3 for res2..res3
    top_block.in_feature = "p" + cfg.MODEL.FPN.IN_FEATURES[-1][len("res"):]
    return FPN(bottom_up=bottom_up, in_features=cfg.MODEL.FPN.IN_FEATURES,
               out_channels=cfg.MODEL.FPN.OUT_CHANNELS, norm=cfg.MODEL.FPN.NORM,
               top_block=top_block, fuse_type=cfg.MODEL.FPN.FUSE_TYPE)


def build_backbone_fpn(cfg, input_shape: ShapeSpec, entry: BackboneEntry) -> FPN:
    """A registered backbone (``MODEL.<FAMILY>``) + FPN -> ``p2..p6`` (with the default ``FPN.IN_FEATURES``)."""
    where = f"MODEL.{node_name(entry)}"
    if node_name(entry) not in cfg.MODEL:
        raise KeyError(f"{where} is missing from the config; build it with rv_plugins.detectron2.config.get_cfg "
                       "or call add_rv_config(cfg) before merging the yaml")
    node = cfg.MODEL[node_name(entry)]
    indices = _stage_indices(node.OUT_FEATURES, where, len(entry.strides))
    body = entry.create(**backbone_kwargs(entry, node, input_shape.channels, indices))
    info = body.feature_info
    bottom_up = RecurrentBackbone(body, node.OUT_FEATURES, [info[i]["num_chs"] for i in indices],
                                  [info[i]["reduction"] for i in indices])
    return _fpn(cfg, bottom_up)


def fpn_builder(entry: BackboneEntry) -> Callable:
    """``build_<family>_fpn_backbone(cfg, input_shape)`` for Detectron2's ``BACKBONE_REGISTRY``."""

    def build(cfg, input_shape: ShapeSpec) -> FPN:
        return build_backbone_fpn(cfg, input_shape, entry)

    build.__name__ = build.__qualname__ = f"build_{entry.name}_fpn_backbone"
    build.__doc__ = (f"{entry.class_name} (``MODEL.{node_name(entry)}``) + FPN -> ``p2..p6`` "
                     "(see :mod:`rv_plugins.detectron2.backbones` on strides).")
    return build


def _register(entry: BackboneEntry) -> Optional[Callable]:
    build = fpn_builder(entry)
    if build.__name__ not in BACKBONE_REGISTRY:
        BACKBONE_REGISTRY.register(build)
    return BACKBONE_REGISTRY.get(build.__name__)


for _entry in BACKBONES.entries():
    globals()[f"build_{_entry.name}_fpn_backbone"] = _register(_entry)
del _entry
