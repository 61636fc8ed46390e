"""Old name of :mod:`rv_plugins.openmmlab.checks`. New code: ``from rv_plugins.openmmlab.checks import
require_mmcv_with_ops``."""
from rv_plugins.openmmlab.checks import SETUP_HINT, require_mmcv_with_ops  # noqa: F401

__all__ = ["SETUP_HINT", "require_mmcv_with_ops"]
