"""mmpretrain adapter: importing it registers our backbones in mmpretrain's ``MODELS``.

Configs load it with ``custom_imports = dict(imports=['rv_plugins.mmpretrain'], allow_failed_imports=False)``.
Importing it also applies the ``rv_plugins::`` config rule (:mod:`rv_plugins.openmmlab.scope`) and
registers mmengine's checkpoint classes with torch's weights-only loader
(:mod:`rv_plugins.openmmlab.checkpoints`) and our ops with mmengine's FLOP counters
(:mod:`rv_plugins.openmmlab.counters`). It registers our model index with mmpretrain's ``ModelHub`` and lets
``mmpretrain.inference_model`` take our configs and models (:mod:`rv_plugins.mmpretrain.model_index`).
"""
from rv_plugins.openmmlab import checkpoints, counters, scope

scope.patch_now()
checkpoints.allow_mmengine_checkpoints()
counters.register_mmengine_counters()

from . import backbones, model_index  # noqa: E402,F401
from .backbones import *  # noqa: E402,F401,F403

model_index.register_model_index()
model_index.install_inference_model()
