"""Every registered backbone (``rv_plugins.backbones``) in mmpretrain's ``MODELS``, through the one OpenMMLab
adapter (:func:`rv_plugins.openmmlab.backbones.register_all`): ``VisionGRU``, ``Sequencer2D``, ..."""
from mmpretrain.registry import MODELS

from rv_plugins.openmmlab.backbones import register_all

_registered = register_all(MODELS)
globals().update(_registered)
__all__ = sorted(_registered)
