"""Running a stage's blocks, shared by every backbone, and what the layers that recompute in the backward
(instead of storing activations) say when asked for a second derivative."""
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


def refuse_double_backward(what: str, switch: str) -> None:
    """Raise if a memory-saving ``autograd.Function``'s backward runs with ``create_graph=True``: ``what``
    names the layer, ``switch`` the attribute that selects its plain (twice differentiable) ops."""
    if torch.is_grad_enabled():
        raise RuntimeError(f"{what}: double backward (create_graph=True) through this memory-saving path is not "
                           f"supported; set {switch} = False to run the plain ops (twice differentiable)")
