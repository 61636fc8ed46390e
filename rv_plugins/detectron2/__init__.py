"""Detectron2 adapter (``import rv_plugins.detectron2``).

Works with a normal Detectron2 build and with Detectron2's Python package alone (missing
``detectron2._C`` gets a logged stand-in: see ``compat.py``).
"""
from .compat import ensure_detectron2_ops, has_compiled_ops

ensure_detectron2_ops()

import detectron2.modeling  # noqa: E402,F401  (registries our heads and backbones join)

__all__ = ["ensure_detectron2_ops", "has_compiled_ops"]
