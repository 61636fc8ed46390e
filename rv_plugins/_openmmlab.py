"""Old name of :mod:`rv_plugins.openmmlab.backbones` (the one OpenMMLab backbone adapter).

Importing it, like importing the new module, registers mmengine's checkpoint classes with torch's
weights-only unpickler (:mod:`rv_plugins.openmmlab.checkpoints`). New code:
``from rv_plugins.openmmlab.backbones import openmmlab_backbone``.
"""
from rv_plugins.openmmlab.backbones import openmmlab_backbone  # noqa: F401
from rv_plugins.openmmlab.checkpoints import allow_mmengine_checkpoints  # noqa: F401
from rv_plugins.utils.checkpoint import is_pretrained_cfg  # noqa: F401

__all__ = ["openmmlab_backbone"]
