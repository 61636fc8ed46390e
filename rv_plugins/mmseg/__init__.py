"""mmsegmentation adapter: importing it registers our backbones, datasets, transforms and segmentors in mmseg.

Configs load it with ``custom_imports = dict(imports=['rv_plugins.mmseg'], allow_failed_imports=False)``.
Importing it also applies the ``rv_plugins::`` config rule (:mod:`rv_plugins.openmmlab.scope`) and
registers mmengine's checkpoint classes with torch's weights-only loader
(:mod:`rv_plugins.openmmlab.checkpoints`) and our ops with mmengine's FLOP counters
(:mod:`rv_plugins.openmmlab.counters`).
"""
from rv_plugins.openmmlab.checks import require_mmcv_with_ops

require_mmcv_with_ops("rv_plugins.mmseg")

from rv_plugins.openmmlab import checkpoints, counters, scope  # noqa: E402

scope.patch_now()
checkpoints.allow_mmengine_checkpoints()
counters.register_mmengine_counters()

from . import backbones, datasets, pathfinder, segmentors  # noqa: E402,F401
from .backbones import *  # noqa: E402,F401,F403
from .datasets import *  # noqa: E402,F401,F403
from .pathfinder import *  # noqa: E402,F401,F403
from .segmentors import *  # noqa: E402,F401,F403
