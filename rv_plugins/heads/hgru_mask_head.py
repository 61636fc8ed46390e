"""Recurrent Mask R-CNN mask predictor: an hGRU run to a fixed point replaces the 4-conv stack.

Plain PyTorch (no toolkit imports); ``rv_plugins.detectron2.mask_head`` wraps it for Detectron2.
The cell is looked up by name in :data:`rv_plugins.heads.cells.MASK_HEAD_CELLS` (a new cell is one
registration there; ``docs/adding_a_recurrent_cell.md``). The two registered here, for ROI features
``x`` of shape ``(N, C_in, S, S)`` (``S = 14`` in Mask R-CNN):

``'coco'``: the C-RBP authors' COCO head (``c-rbp/panoptic_segmentation``,
``RecurrentMaskRCNNConvUpsampleHead`` with ``GALA: True``, ``OUTPUTNORM: SyncBN``)::

    h*     = fixed point of h <- CocoHGRUCell(x, h)  (N, C_in, S, S)  the ROI features are the
                                                                      drive (no projection), h0 = 0
    up     = relu(deconv2x2/2(norm(h*)))             (N, D, 2S, 2S)   norm: BatchNorm (theirs: SyncBN)
    logits = conv1x1(up)                             (N, K, 2S, 2S)

``'pathfinder'`` (this package's first head; the Pathfinder form of the cell)::

    drive  = relu(conv_k(x))                         (N, C, S, S)     input projection, k = 1 or 3
    h*     = fixed point of h <- HGRUCell(drive, h)  (N, C, S, S)     h0 = 0
    up     = relu(deconv2x2/2(h*))                   (N, D, 2S, 2S)   as Detectron2's head
    logits = conv1x1(up)                             (N, K, 2S, 2S)   K = num_classes (1 if class-agnostic)

At 256 channels, 80 classes and 3x3 kernels, ``'coco'`` has 1,859,728 parameters (783,552 fewer
than Detectron2's 4-conv head, the paper's "0.78M fewer") and ``'pathfinder'`` 1,662,288.

Training with ``solver_mode='crbp'`` (C-RBP: RBP + Lipschitz-constant penalty) keeps the memory
saved for the backward pass constant in the number of steps; the caller adds
``info.weighted_lcp`` to its loss. Solver defaults follow the authors' COCO runs: penalty summed,
weight 1e-3, 15 Neumann terms, lambda 0.9 (the paper; their code has 0.95).
"""
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from rv_plugins.heads.cells import MASK_HEAD_CELLS, CellSettings
from rv_plugins.solvers.fixed_point import MODES, FixedPointSolver, SolverInfo
from rv_plugins.utils.weights_record import RecordsWeights

__all__ = ["HGRUMaskPredictor", "CELLS", "READOUT_NORMS"]

CELLS = MASK_HEAD_CELLS  # the registry itself: the names registered, whenever asked
READOUT_NORMS = ("batch", "syncbatch", "group", "none")


def _readout_norm(norm: Union[str, nn.Module, None], channels: int, groups: int) -> nn.Module:
    """The read-out normalisation (cells registered with ``readout_norm=True``, e.g. ``'coco'``): a name
    in ``READOUT_NORMS`` or a module."""
    if isinstance(norm, nn.Module):
        return norm
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "syncbatch":  # plain BatchNorm when not distributed
        return nn.SyncBatchNorm(channels)
    if norm == "group":
        return nn.GroupNorm(groups, channels)
    if norm in ("none", "", None):
        return nn.Identity()
    raise ValueError(f"HGRUMaskPredictor: readout_norm={norm!r}; use one of {READOUT_NORMS} or "
                     "an nn.Module")


class HGRUMaskPredictor(RecordsWeights, nn.Module):
    """ROI features ``(N, in_channels, S, S)`` -> mask logits ``(N, num_classes, 2S, 2S)`` and a
    :class:`~rv_plugins.solvers.fixed_point.SolverInfo`.

    Args:
        in_channels: channels of the ROI features (FPN width, 256 in Mask R-CNN).
        num_classes: mask classes ``K`` (1 for class-agnostic masks).
        cell: a name registered in :data:`~rv_plugins.heads.cells.MASK_HEAD_CELLS`:
            ``'pathfinder'`` (default: this package's head, unchanged, so saved models and
            configs keep their meaning) or ``'coco'`` (the authors' COCO head; see the module
            docstring), or a cell you registered.
        channels: hGRU channels ``C``; for a cell that takes the ROI features as its drive
            (``'coco'``) it must equal ``in_channels``.
        kernel_size: hGRU horizontal kernel size (3 in the paper's Mask R-CNN head).
        input_kernel_size: 1 or 3, the input projection ``C_in -> C`` (cells with a projection).
        deconv_channels: channels ``D`` of the 2x deconvolution (``None``: ``channels``).
        readout_norm: cells registered with a read-out norm (``'coco'``) only: the norm before
            the deconvolution, a name in ``READOUT_NORMS`` or a module (default ``'batch'``; the
            authors: SyncBN).
        solver_mode, steps, neumann_terms, neumann_norm_cap, neumann_rule, lcp_lambda, lcp_weight,
            lcp_reduction: passed to :class:`FixedPointSolver`. Defaults: the authors' COCO runs
            (15 terms, weight 1e-3, summed; lambda 0.9 as the paper - their code: 0.95; their
            code also caps the Neumann sum's norm at 1.0 with its ``'skip'`` rule, off here by
            default: our COCO configs set both).
        norm, norm_groups: the hGRU's horizontal norms. ``'group'`` (default here and the
            authors' COCO choice) keeps every ROI independent of the others in the batch.
        share_kernels: one inhibition/excitation kernel (``'pathfinder'`` only).
    """

    def __init__(self, in_channels: int = 256, num_classes: int = 80, channels: int = 256,
                 kernel_size: int = 3, input_kernel_size: int = 1, deconv_channels: Optional[int] = None,
                 solver_mode: str = "crbp", steps: int = 20, neumann_terms: Optional[int] = 15,
                 lcp_lambda: float = 0.9, lcp_weight: float = 1e-3, norm: str = "group",
                 norm_groups: int = 32, share_kernels: bool = False, cell: str = "pathfinder",
                 readout_norm: Union[str, nn.Module, None] = "batch",
                 lcp_reduction: str = "sum", neumann_norm_cap: Optional[float] = None,
                 neumann_rule: str = "stop"):
        super().__init__()
        if cell not in MASK_HEAD_CELLS:
            raise ValueError(f"HGRUMaskPredictor: unknown cell {cell!r}; choose one of {MASK_HEAD_CELLS} "
                             "or register one (rv_plugins.heads.cells, docs/adding_a_recurrent_cell.md)")
        spec = MASK_HEAD_CELLS[cell]
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
        if spec.features_as_drive and channels != in_channels:
            raise ValueError(f"HGRUMaskPredictor(cell={cell!r}): channels={channels} but the ROI "
                             f"features have {in_channels}; this cell takes the ROI features as "
                             f"its drive (no projection), so set channels={in_channels}, or use "
                             "cell='pathfinder' (1x1 projection to any width)")
        deconv_channels = channels if deconv_channels is None else deconv_channels
        self.in_channels, self.channels, self.num_classes = in_channels, channels, num_classes
        self.cell_kind = cell
        self.input_proj = None if spec.features_as_drive else nn.Conv2d(
            in_channels, channels, input_kernel_size, padding=input_kernel_size // 2)
        self.cell = spec.build(CellSettings(channels=channels, kernel_size=kernel_size, norm=norm,
                                            norm_groups=norm_groups, share_kernels=share_kernels, steps=steps))
        self.readout_norm = _readout_norm(readout_norm, channels, norm_groups) if spec.readout_norm else None
        self.solver = FixedPointSolver(mode=solver_mode, steps=steps, neumann_terms=neumann_terms,
                                       neumann_norm_cap=neumann_norm_cap, neumann_rule=neumann_rule,
                                       lcp_lambda=lcp_lambda, lcp_weight=lcp_weight,
                                       lcp_reduction=lcp_reduction)
        self.deconv = nn.ConvTranspose2d(channels, deconv_channels, kernel_size=2, stride=2)
        self.predictor = nn.Conv2d(deconv_channels, num_classes, 1)
        self.reset_parameters()

    def weights_record(self) -> dict:
        """Checked on load (see :mod:`rv_plugins.utils.weights_record`): the cell and its norm (BatchNorm
        and GroupNorm have the same tensors)."""
        return dict(cell=self.cell_kind, norm=getattr(self.cell, "norm_kind", None))

    def reset_parameters(self) -> None:
        """MSRA (He) fan-out init for the projection and deconvolution (as Detectron2's head),
        N(0, 0.001) for the predictor, zero biases; the hGRU keeps its own initialisation."""
        for layer in (self.input_proj, self.deconv):
            if layer is not None:
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
        drive = x if self.input_proj is None else F.relu(self.input_proj(x))
        h, info = self.solver(self.cell, drive, torch.zeros_like(drive), steps=steps)
        if self.readout_norm is not None:
            h = self.readout_norm(h)
        logits = self.predictor(F.relu(self.deconv(h)))
        return logits, info
