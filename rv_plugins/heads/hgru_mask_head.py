"""Recurrent Mask R-CNN mask predictor: an hGRU run to a fixed point replaces the 4-conv stack.

Plain PyTorch (no toolkit imports); ``rv_plugins.detectron2.mask_head`` wraps it for Detectron2.
Pipeline for ROI features ``x`` of shape ``(N, C_in, S, S)`` (``S = 14`` in Mask R-CNN)::

    drive = relu(conv_k(x))                    (N, C, S, S)   input projection, k = 1 or 3
    h*    = fixed point of h <- hGRU(drive, h) (N, C, S, S)   3x3 horizontal kernels, h0 = 0,
                                                              run by FixedPointSolver
    up    = relu(deconv2x2/2(h*))              (N, D, 2S, 2S) as Detectron2's head
    logits = conv1x1(up)                       (N, K, 2S, 2S) K = num_classes (1 if class-agnostic)

Training with ``mode='crbp'`` (C-RBP: RBP + Lipschitz-constant penalty) keeps the memory saved
for the backward pass constant in the number of steps; the caller adds ``info.weighted_lcp``
to its loss.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from rv_plugins.layers.hgru import HGRUCell
from rv_plugins.solvers.fixed_point import MODES, FixedPointSolver, SolverInfo

__all__ = ["HGRUMaskPredictor"]


class HGRUMaskPredictor(nn.Module):
    """ROI features ``(N, in_channels, S, S)`` -> mask logits ``(N, num_classes, 2S, 2S)`` and a
    :class:`~rv_plugins.solvers.fixed_point.SolverInfo`.

    Args:
        in_channels: channels of the ROI features (FPN width, 256 in Mask R-CNN).
        num_classes: mask classes ``K`` (1 for class-agnostic masks).
        channels: hGRU channels ``C``.
        kernel_size: hGRU horizontal kernel size (3 in the paper's Mask R-CNN head).
        input_kernel_size: 1 or 3, the input projection ``C_in -> C``.
        deconv_channels: channels ``D`` of the 2x deconvolution (``None``: ``channels``).
        solver_mode, steps, neumann_terms, lcp_lambda, lcp_weight: passed to
            :class:`FixedPointSolver` (``lcp_lambda=0.9`` as in the paper's COCO runs).
        norm, norm_groups, share_kernels: passed to :class:`HGRUCell`. ``'group'`` (default here)
            keeps every ROI independent of the others in the batch; ``'batch'`` is the authors'
            Pathfinder choice (batch statistics also at inference).
    """

    def __init__(self, in_channels: int = 256, num_classes: int = 80, channels: int = 256,
                 kernel_size: int = 3, input_kernel_size: int = 1, deconv_channels: Optional[int] = None,
                 solver_mode: str = "crbp", steps: int = 20, neumann_terms: Optional[int] = None,
                 lcp_lambda: float = 0.9, lcp_weight: float = 1.0, norm: str = "group",
                 norm_groups: int = 32, share_kernels: bool = False):
        super().__init__()
        if input_kernel_size not in (1, 3):
            raise ValueError(f"HGRUMaskPredictor: input_kernel_size={input_kernel_size}; use 1 or 3")
        if solver_mode not in MODES:
            raise ValueError(f"HGRUMaskPredictor: unknown solver_mode {solver_mode!r}; choose one of {MODES}")
        if num_classes < 1:
            raise ValueError(f"HGRUMaskPredictor: num_classes={num_classes}; need >= 1 "
                             "(1 for class-agnostic masks)")
        if norm == "group" and channels % norm_groups != 0:
            raise ValueError(f"HGRUMaskPredictor: channels ({channels}) must be divisible by "
                             f"norm_groups ({norm_groups}) for norm='group'; change either")
        deconv_channels = channels if deconv_channels is None else deconv_channels
        self.in_channels, self.channels, self.num_classes = in_channels, channels, num_classes
        self.input_proj = nn.Conv2d(in_channels, channels, input_kernel_size,
                                    padding=input_kernel_size // 2)
        self.cell = HGRUCell(channels, kernel_size, share_kernels=share_kernels, norm=norm,
                             norm_groups=norm_groups)
        self.solver = FixedPointSolver(mode=solver_mode, steps=steps, neumann_terms=neumann_terms,
                                       lcp_lambda=lcp_lambda, lcp_weight=lcp_weight)
        self.deconv = nn.ConvTranspose2d(channels, deconv_channels, kernel_size=2, stride=2)
        self.predictor = nn.Conv2d(deconv_channels, num_classes, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """MSRA (He) fan-out init for the projection and deconvolution (as Detectron2's head),
        N(0, 0.001) for the predictor, zero biases; the hGRU keeps its own initialisation."""
        for layer in (self.input_proj, self.deconv):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(layer.bias)
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.zeros_(self.predictor.bias)

    def forward(self, x: torch.Tensor, steps: Optional[int] = None) -> Tuple[torch.Tensor, SolverInfo]:
        """x ``(N, in_channels, S, S)`` -> ``(logits (N, num_classes, 2S, 2S), info)``.

        ``steps`` overrides the solver's step count for this call. ``N = 0`` (no ROIs) returns
        empty logits and an info with ``fixed_point_residual = 0`` and no LCP.
        """
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"HGRUMaskPredictor expects ROI features (N, {self.in_channels}, S, S), "
                             f"got {tuple(x.shape)}; set in_channels to the ROI feature channels")
        n, _, height, width = x.shape
        if n == 0:
            logits = x.new_zeros(0, self.num_classes, 2 * height, 2 * width)
            zero = sum(p.sum() for p in self.parameters()) * 0.0  # keeps every parameter in the graph
            return logits + zero, SolverInfo(self.solver.mode, steps or self.solver.steps, 0.0)
        drive = F.relu(self.input_proj(x))
        h, info = self.solver(self.cell, drive, torch.zeros_like(drive), steps=steps)
        logits = self.predictor(F.relu(self.deconv(h)))
        return logits, info
