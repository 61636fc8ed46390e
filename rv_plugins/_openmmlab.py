"""Glue shared by the OpenMMLab adapters (mmseg, mmpretrain): no model math here."""
import re
from typing import Type

from torch import nn


def openmmlab_backbone(core_cls: Type[nn.Module]) -> Type[nn.Module]:
    """Subclass a plain-PyTorch backbone so ``init_cfg`` behaves as in OpenMMLab backbones.

    ``init_cfg=dict(type='Pretrained', checkpoint=PATH_OR_URL, prefix='backbone.')`` loads weights
    (``prefix`` optional: keeps only keys under it and strips it) with mmengine's checkpoint loader;
    anything else falls back to the model's own ``init_weights``. The forward and the parameters
    are the core class's: one model definition serves every toolkit.
    """

    class Backbone(core_cls):
        def init_weights(self):
            cfg = getattr(self, "init_cfg", None)
            if isinstance(cfg, dict) and cfg.get("type") == "Pretrained":
                from mmengine.logging import print_log
                from mmengine.runner.checkpoint import CheckpointLoader, load_state_dict
                ckpt = CheckpointLoader.load_checkpoint(cfg["checkpoint"], map_location="cpu")
                state = ckpt.get("state_dict", ckpt.get("model", ckpt))
                prefix = cfg.get("prefix")
                if prefix:
                    prefix = prefix if prefix.endswith(".") else prefix + "."
                    state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
                    if not state:
                        raise ValueError(f"no key of {cfg['checkpoint']} starts with prefix {prefix!r}")
                state = {re.sub(r"^module\.", "", k): v for k, v in state.items()}
                load_state_dict(self, state, strict=False, logger="current")
                print_log(f"{core_cls.__name__}: loaded {cfg['checkpoint']}", logger="current")
            else:
                super().init_weights()
            self._is_init = True

        @property
        def is_init(self):  # mmengine's BaseModule skips children that report themselves initialised
            return getattr(self, "_is_init", False)

    Backbone.__name__ = Backbone.__qualname__ = core_cls.__name__
    Backbone.__doc__ = core_cls.__doc__
    return Backbone
