"""mmsegmentation adapter: importing it registers our backbones, datasets and transforms in mmseg.

Configs load it with ``custom_imports = dict(imports=['rv_plugins.mmseg'], allow_failed_imports=False)``.
"""
from rv_plugins._toolkits import require_mmcv_with_ops

require_mmcv_with_ops("rv_plugins.mmseg")

from rv_plugins import _mmengine_scope  # noqa: E402

_mmengine_scope.patch_now()

from . import backbones, datasets  # noqa: E402,F401
from .backbones import *  # noqa: E402,F401,F403
from .datasets import *  # noqa: E402,F401,F403
from .pathfinder import *  # noqa: E402,F401,F403
