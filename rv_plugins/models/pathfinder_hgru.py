"""The C-RBP paper's Pathfinder segmentation model (its section 2.1), in plain PyTorch.

    img (B, in_channels, H, W)
      -> GaborConv2d 7x7, squared output           x: (B, C, H, W)   (C = 25: 24 Gabors + 1 DoG)
      -> hGRU, h_0 = 0, run by FixedPointSolver    h: (B, C, H, W)   (mode 'bptt'/'cbptt'/'rbp'/'crbp')
      -> read-out: BatchNorm2d -> 1x1 conv          logits: (B, num_classes, H, W)
"""
import math
from typing import List, Optional, Tuple

import torch
from torch import nn

from rv_plugins.layers.hgru import GaborConv2d, HGRUCell
from rv_plugins.solvers.fixed_point import FixedPointSolver, SolverInfo
from rv_plugins.utils.weights_record import RecordsWeights


class PathfinderHGRU(RecordsWeights, nn.Module):
    """Gabor input layer + hGRU + per-pixel read-out; ``forward(img) -> (logits, info)``.

    Args:
        in_channels: image channels (1 grey, 3 RGB).
        channels: Gabor filters = hGRU channels (the paper: 25).
        kernel_size: hGRU horizontal kernel size (the paper: 15; smaller for small images).
        input_kernel_size: Gabor kernel size (the paper: 7).
        num_classes: read-out classes (2: background / target contour).
        mode, steps, neumann_terms, lcp_lambda, lcp_weight, lcp_reduction: the
            :class:`FixedPointSolver` settings. The penalty defaults are the authors' Pathfinder
            scale (``c-rbp/pathfinder_experiments``, ``mainclean.py``: ``penalty.mean() * 10``):
            the mean over every element of the state, weight 10, ``lambda = 0.9``. The sum
            (``lcp_reduction='sum'``, the authors' COCO choice) is ~``B*C*H*W`` times stronger.
        input_scale: the image is multiplied by this before the Gabor layer (images in [0, 1]
            with 1-px lines give squared responses ~0.3, too weak to move the hGRU state off
            its resting value; 3 gives a clear contrast on 64-px Pathfinder).
        target_prior: when set, the read-out bias starts at ``log(p / (1 - p))`` for class 1
            versus class 0 (``num_classes=2`` only), so training starts from the class frequency
            instead of 50/50 (with ~1 % target pixels, calibration otherwise takes the first
            hundreds of iterations).
        cell_kwargs: further :class:`HGRUCell` arguments (``norm``, ``share_kernels``, ...).

    Checkpoints record ``norm`` and ``input_scale`` (same tensors, other results: a load into a model
    with other values is refused, see :mod:`rv_plugins.utils.weights_record`).
    """

    def __init__(self, in_channels: int = 1, channels: int = 25, kernel_size: int = 15,
                 input_kernel_size: int = 7, num_classes: int = 2, mode: str = "crbp",
                 steps: int = 20, neumann_terms: Optional[int] = None, lcp_lambda: float = 0.9,
                 lcp_weight: float = 10.0, lcp_reduction: str = "mean", input_scale: float = 1.0,
                 target_prior: Optional[float] = None, **cell_kwargs):
        super().__init__()
        if target_prior is not None and (num_classes != 2 or not 0 < target_prior < 1):
            raise ValueError(f"PathfinderHGRU: target_prior={target_prior} needs num_classes=2 "
                             f"(got {num_classes}) and a value in (0, 1); pass None to keep the "
                             "default read-out initialisation")
        self.input_scale = float(input_scale)
        self.input_layer = GaborConv2d(in_channels, channels, input_kernel_size, square_output=True)
        self.cell = HGRUCell(channels, kernel_size, **cell_kwargs)
        self.solver = FixedPointSolver(mode, steps, neumann_terms=neumann_terms,
                                       lcp_lambda=lcp_lambda, lcp_weight=lcp_weight,
                                       lcp_reduction=lcp_reduction)
        self.readout = nn.Sequential(nn.BatchNorm2d(channels), nn.Conv2d(channels, num_classes, 1))
        if target_prior is not None:
            with torch.no_grad():
                self.readout[1].bias.copy_(torch.tensor(
                    [0.0, math.log(target_prior / (1 - target_prior))]))

    def weights_record(self) -> dict:
        """What the state-dict keys do not show: the hGRU's norm (BatchNorm and GroupNorm have the same
        tensors) and the image scale the weights were trained at."""
        return dict(norm=self.cell.norm_kind, input_scale=self.input_scale)

    def forward(self, img: torch.Tensor, steps: Optional[int] = None
                ) -> Tuple[torch.Tensor, SolverInfo]:
        """img ``(B, in_channels, H, W)`` -> logits ``(B, num_classes, H, W)`` and the solver info.

        ``steps`` overrides the solver's step count for this call (e.g. to test at t = T > N).
        Add ``info.weighted_lcp`` (not None in the LCP modes while training) to the loss.
        """
        drive = self.drive(img)
        state, info = self.solver(self.cell, drive, torch.zeros_like(drive), steps=steps)
        return self.readout(state), info

    def drive(self, img: torch.Tensor) -> torch.Tensor:
        """img ``(B, in_channels, H, W)`` -> the hGRU's constant drive ``x`` ``(B, C, H, W)``."""
        return self.input_layer(img * self.input_scale if self.input_scale != 1.0 else img)

    @torch.no_grad()
    def step_logits(self, img: torch.Tensor, steps: int) -> List[torch.Tensor]:
        """The read-out applied after every step: ``steps`` logits ``(B, num_classes, H, W)`` for
        ``h_1 .. h_steps`` (the states the solver iterates, here kept for inspection)."""
        drive = self.drive(img)
        state, logits = torch.zeros_like(drive), []
        for _ in range(steps):
            state = self.cell(drive, state)
            logits.append(self.readout(state))
        return logits
