"""Glue shared by the OpenMMLab adapters (mmseg, mmpretrain): no model math here.

Importing it (every adapter does, and every config imports an adapter through ``custom_imports``)
registers mmengine's checkpoint classes with torch's weights-only unpickler
(:func:`rv_plugins.utils.checkpoint.allow_mmengine_checkpoints`), so our checkpoints load in the
toolkits' own tools (``tools/train.py --resume``, ``tools/test.py``, ``init_model``, inferencers)
under torch >= 2.6.
"""
from typing import Type

from torch import nn

from rv_plugins.utils.checkpoint import allow_mmengine_checkpoints, is_pretrained_cfg

allow_mmengine_checkpoints()


def openmmlab_backbone(core_cls: Type[nn.Module]) -> Type[nn.Module]:
    """Subclass a plain-PyTorch backbone so ``init_cfg`` behaves as in OpenMMLab backbones.

    ``init_cfg=dict(type='Pretrained', checkpoint=PATH_OR_URL, prefix='backbone.')`` is loaded when the
    runner calls ``init_weights`` (mmengine's convention: not at construction, so ``tools/test.py`` with
    a trained checkpoint never reads the pretrained file), through the package's one loader
    (:func:`rv_plugins.utils.checkpoint.load_pretrained`: prefixes detected, positional embeddings
    resized, a one-line report, an error when nothing matched). Other initialisers (e.g.
    ``dict(type='TruncNormal', layer='Linear')``) run through mmengine's ``initialize`` after the
    model's own initialisation. The forward and the parameters are the core class's: one model
    definition serves every toolkit.
    """

    class Backbone(core_cls):
        def __init__(self, *args, init_cfg=None, **kwargs):
            super().__init__(*args, init_cfg=None, **kwargs)  # no loading at construction
            self.init_cfg = init_cfg
            self._is_init = False  # the constructor's own init_weights call must not count for mmengine

        def init_weights(self):
            cfg = self.init_cfg
            if cfg is None or is_pretrained_cfg(cfg):
                super().init_weights()  # own initialisation, then the checkpoint
            else:
                from mmengine.model import initialize
                self.init_cfg = None
                try:
                    super().init_weights()
                finally:
                    self.init_cfg = cfg
                initialize(self, cfg)
            self._is_init = True

        @property
        def is_init(self):  # mmengine's BaseModule skips children that report themselves initialised
            return getattr(self, "_is_init", False)

    Backbone.__name__ = Backbone.__qualname__ = core_cls.__name__
    Backbone.__doc__ = core_cls.__doc__
    return Backbone
