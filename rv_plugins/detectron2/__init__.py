"""Detectron2 adapter (``import rv_plugins.detectron2``).

Works with a normal Detectron2 build and with Detectron2's Python package alone (missing
``detectron2._C`` gets a logged stand-in: see ``compat.py``). Importing this package registers
``HGRUMaskHead`` (``ROI_MASK_HEAD_REGISTRY``) and ``build_visiongru_fpn_backbone`` /
``build_sequencer2d_fpn_backbone`` (``BACKBONE_REGISTRY``); ``config.get_cfg`` / ``add_rv_config``
give the config keys, ``datasets.register_synthetic_coco_panoptic`` the synthetic dataset. It also registers
our ops with fvcore's FLOP counters and makes ``detectron2.utils.analysis`` importable without Caffe2
(``analysis.py``).
"""
from .compat import ensure_detectron2_ops, has_compiled_ops

ensure_detectron2_ops()

import detectron2.modeling  # noqa: E402,F401  (registries our heads and backbones join)

from .analysis import ensure_detectron2_export, register_fvcore_counters  # noqa: E402

register_fvcore_counters()
ensure_detectron2_export()

from .backbones import build_sequencer2d_fpn_backbone, build_visiongru_fpn_backbone  # noqa: E402
from .config import add_rv_config, get_cfg  # noqa: E402
from .datasets import register_synthetic_coco_panoptic  # noqa: E402
from .mask_head import HGRUMaskHead  # noqa: E402

__all__ = ["ensure_detectron2_ops", "has_compiled_ops", "add_rv_config", "get_cfg", "HGRUMaskHead",
           "build_visiongru_fpn_backbone", "build_sequencer2d_fpn_backbone",
           "register_synthetic_coco_panoptic"]
