"""mmpretrain adapter: importing it registers our backbones in mmpretrain's ``MODELS``.

Configs load it with ``custom_imports = dict(imports=['rv_plugins.mmpretrain'], allow_failed_imports=False)``.
"""
from rv_plugins import _mmengine_scope

_mmengine_scope.patch_now()

from . import backbones  # noqa: E402,F401
from .backbones import *  # noqa: E402,F401,F403
