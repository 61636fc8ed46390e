"""The one OpenMMLab adapter for the package's backbones (mmseg and mmpretrain both call it).

:func:`register_all` puts every entry of the backbone registry (:mod:`rv_plugins.backbones.registry`)
into a toolkit's ``MODELS`` registry under its class name (``VisionGRU``, ``Sequencer2D``), wrapped by
:func:`openmmlab_backbone` so that ``init_cfg`` behaves as in OpenMMLab backbones. A backbone added to
the registry is thereby available in both toolkits without touching this file.

Importing this module registers mmengine's checkpoint classes with torch's weights-only unpickler
(:func:`rv_plugins.openmmlab.checkpoints.allow_mmengine_checkpoints`), so our checkpoints load in the
toolkits' own tools under torch >= 2.6.
"""
from typing import Dict, Iterable, Optional, Type

from torch import nn

from rv_plugins.backbones.registry import BACKBONES, BackboneEntry
from rv_plugins.openmmlab.checkpoints import allow_mmengine_checkpoints
from rv_plugins.utils.checkpoint import is_pretrained_cfg

__all__ = ["openmmlab_backbone", "register_all"]

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


def register_all(registry, entries: Optional[Iterable[BackboneEntry]] = None) -> Dict[str, Type[nn.Module]]:
    """Register every backbone of the package's registry (or ``entries``) in an mmengine ``registry``
    (e.g. ``mmseg.registry.MODELS``) under its class name, wrapped by :func:`openmmlab_backbone`.

    Returns ``{class name: registered class}`` (the adapters export these names). A name the toolkit
    registry already holds raises mmengine's ``KeyError`` (no silent replacement of another model).
    """
    done = {}
    for entry in (BACKBONES.entries() if entries is None else entries):
        done[entry.class_name] = registry.register_module(name=entry.class_name,
                                                          module=openmmlab_backbone(entry.cls))
    return done
