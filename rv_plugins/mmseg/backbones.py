"""Our backbones in mmseg's ``MODELS`` registry (the model code lives in ``rv_plugins.backbones``).

``init_cfg=dict(type='Pretrained', checkpoint=..., prefix='backbone.')`` loads through the package's one
loader when the runner initialises the model; importing this module (via ``rv_plugins._openmmlab``) also
makes mmengine's checkpoints loadable under torch >= 2.6 (see ``rv_plugins.utils.checkpoint``).
"""
from mmseg.registry import MODELS

from rv_plugins._openmmlab import openmmlab_backbone
from rv_plugins.backbones.sequencer2d import Sequencer2D as _Sequencer2D
from rv_plugins.backbones.visiongru import VisionGRU as _VisionGRU

VisionGRU = MODELS.register_module(name="VisionGRU", module=openmmlab_backbone(_VisionGRU))
Sequencer2D = MODELS.register_module(name="Sequencer2D", module=openmmlab_backbone(_Sequencer2D))

__all__ = ["VisionGRU", "Sequencer2D"]
