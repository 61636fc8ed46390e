"""Running a stage's blocks, shared by every backbone."""
from typing import Iterable

import torch
import torch.utils.checkpoint as cp
from torch import nn


def run_blocks(blocks: Iterable[nn.Module], x: torch.Tensor, with_cp: bool = False) -> torch.Tensor:
    """Apply ``blocks`` in order. With ``with_cp`` (and autograd on) each block's activations are
    recomputed in the backward instead of stored (``torch.utils.checkpoint``, non-reentrant)."""
    for blk in blocks:
        x = cp.checkpoint(blk, x, use_reentrant=False) if with_cp and torch.is_grad_enabled() else blk(x)
    return x
