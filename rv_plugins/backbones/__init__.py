"""Plain-PyTorch backbones (no toolkit import): ``from rv_plugins.backbones import VisionGRU, Sequencer2D``.

The toolkit adapters register them: ``rv_plugins.mmseg``, ``rv_plugins.mmpretrain``, ``rv_plugins.detectron2``.
"""
from rv_plugins.backbones.base import HierarchicalBackbone
from rv_plugins.backbones.sequencer2d import Sequencer2D
from rv_plugins.backbones.visiongru import VisionGRU

__all__ = ["HierarchicalBackbone", "Sequencer2D", "VisionGRU"]
