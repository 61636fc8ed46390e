"""Our backbones in mmpretrain's ``MODELS`` registry (the model code lives in ``rv_plugins.backbones``)."""
from mmpretrain.registry import MODELS

from rv_plugins._openmmlab import openmmlab_backbone
from rv_plugins.backbones.visiongru import VisionGRU as _VisionGRU

VisionGRU = MODELS.register_module(name="VisionGRU", module=openmmlab_backbone(_VisionGRU))

__all__ = ["VisionGRU"]
