"""Plain-PyTorch backbones (no toolkit import) and their registry.

``from rv_plugins.backbones import VisionGRU, Sequencer2D``; ``create_backbone("visiongru-ti")``,
``list_backbones()``, ``model_names()`` (see :mod:`rv_plugins.backbones.registry`). The toolkit adapters
register every registry entry: ``rv_plugins.mmseg``, ``rv_plugins.mmpretrain``, ``rv_plugins.detectron2``.
A new backbone is one model file plus one ``@register_backbone`` line (``docs/adding_a_backbone.md``).
"""
from rv_plugins.backbones.base import HierarchicalBackbone
from rv_plugins.backbones.registry import (BACKBONES, BackboneEntry, BackboneRegistry, create_backbone,
                                           create_test_backbone, get_backbone, list_backbones, model_names,
                                           register_backbone)
from rv_plugins.backbones.sequencer2d import Sequencer2D
from rv_plugins.backbones.visiongru import VisionGRU

__all__ = ["HierarchicalBackbone", "Sequencer2D", "VisionGRU", "BACKBONES", "BackboneEntry", "BackboneRegistry",
           "create_backbone", "create_test_backbone", "get_backbone", "list_backbones", "model_names",
           "register_backbone"]
