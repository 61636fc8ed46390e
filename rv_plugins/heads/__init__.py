"""Task heads in plain PyTorch (toolkit adapters wrap them)."""
from .hgru_mask_head import HGRUMaskPredictor

__all__ = ["HGRUMaskPredictor"]
