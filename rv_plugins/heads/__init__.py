"""Task heads in plain PyTorch (toolkit adapters wrap them); ``MASK_HEAD_CELLS`` is the registry of the
recurrent cells the hGRU mask head can run (:mod:`rv_plugins.heads.cells`)."""
from .cells import MASK_HEAD_CELLS, CellSettings
from .hgru_mask_head import HGRUMaskPredictor

__all__ = ["HGRUMaskPredictor", "MASK_HEAD_CELLS", "CellSettings"]
