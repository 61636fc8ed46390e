"""``HGRUMaskHead``: Detectron2 glue for :class:`rv_plugins.heads.HGRUMaskPredictor`.

Select it with ``MODEL.ROI_MASK_HEAD.NAME: "HGRUMaskHead"`` and configure it under
``MODEL.ROI_MASK_HEAD.HGRU`` (see ``rv_plugins.detectron2.config``); ``HGRU.CELL: "coco"`` is the
C-RBP authors' COCO head, ``"pathfinder"`` (the default) this package's first head, or any cell
registered in :data:`rv_plugins.heads.cells.MASK_HEAD_CELLS`. The mask loss
and the inference are Detectron2's own (``mask_rcnn_loss`` / ``mask_rcnn_inference`` of
``BaseMaskRCNNHead``); training adds ``loss_mask_lcp`` (the weighted Lipschitz-constant penalty)
in the LCP modes ``'cbptt'`` / ``'crbp'``.

Event-storage scalars (when a Detectron2 ``EventStorage`` is active, i.e. in the trainer), named
by :meth:`rv_plugins.solvers.SolverInfo.log_scalars` with the prefix ``mask_hgru/``:
``mask_hgru/fixed_point_residual`` (``||h_N - h_{N-1}|| / ||h_N||``), ``mask_hgru/lcp``
(unweighted), ``mask_hgru/jacobian_colsum_max``, and for RBP modes ``mask_hgru/neumann_terms``,
``mask_hgru/neumann_residual`` and ``mask_hgru/rbp_unreliable`` (1 when the solver flagged the
RBP gradient: unconverged forward, or a Neumann series that diverged or was cut with a large
error) of the *previous* iteration (the series runs during ``backward``, after this forward has
returned). The reason goes to the log as a rate-limited warning on the logger
``detectron2.rv_plugins.mask_head`` (shown by Detectron2's ``setup_logger``).
"""
import logging
from typing import List, Optional

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec, get_norm
from detectron2.modeling.roi_heads.mask_head import (ROI_MASK_HEAD_REGISTRY, BaseMaskRCNNHead,
                                                      mask_rcnn_inference, mask_rcnn_loss)
from detectron2.structures import Instances
from detectron2.utils.events import get_event_storage

from rv_plugins.heads.cells import MASK_HEAD_CELLS
from rv_plugins.heads.hgru_mask_head import HGRUMaskPredictor
from rv_plugins.solvers import SolverInfo

__all__ = ["HGRUMaskHead"]

LOG_PREFIX = "mask_hgru/"  # + the names of SolverInfo.log_scalars


def _active_storage():
    """The open EventStorage, or None. Detectron2 main has ``has_event_storage()``; v0.6 only asserts in
    ``get_event_storage()`` (an IndexError instead under ``python -O``), so ask its stack directly."""
    from detectron2.utils import events
    if hasattr(events, "has_event_storage"):
        return get_event_storage() if events.has_event_storage() else None
    stack = getattr(events, "_CURRENT_STORAGE_STACK", None)
    return stack[-1] if stack else None


@ROI_MASK_HEAD_REGISTRY.register()
class HGRUMaskHead(BaseMaskRCNNHead):
    """Mask head: ROI features ``(N, C_in, S, S)`` -> hGRU fixed point -> mask logits
    ``(N, K, 2S, 2S)``; ``K = NUM_CLASSES`` (1 with ``CLS_AGNOSTIC_MASK``).

    ``forward(x, instances)`` returns ``{"loss_mask", ["loss_mask_lcp"]}`` in training and the
    instances with ``pred_masks`` in inference, as Detectron2's heads.
    """

    @configurable
    def __init__(self, input_shape: ShapeSpec, *, num_classes: int, cell: str = "pathfinder",
                 channels: int = 256, kernel_size: int = 3, input_kernel_size: int = 1,
                 solver_mode: str = "crbp", steps: int = 20, test_steps: Optional[int] = None,
                 neumann_terms: Optional[int] = 15, neumann_norm_cap: Optional[float] = None,
                 neumann_rule: str = "stop", lcp_lambda: float = 0.9, lcp_weight: float = 1e-3,
                 lcp_reduction: str = "sum",
                 norm: str = "group", norm_groups: int = 32, share_kernels: bool = False,
                 readout_norm: str = "SyncBN", **kwargs):
        super().__init__(**kwargs)
        readout = None
        spec = MASK_HEAD_CELLS.get(cell)  # an unknown name: the predictor's error lists the registered ones
        if spec is not None and spec.readout_norm:  # a Detectron2 norm name ("" = none), as the authors' OUTPUTNORM
            readout = get_norm(readout_norm, channels) if readout_norm else "none"
        self.predictor = HGRUMaskPredictor(
            in_channels=input_shape.channels, num_classes=num_classes, cell=cell, channels=channels,
            kernel_size=kernel_size, input_kernel_size=input_kernel_size, solver_mode=solver_mode,
            steps=steps, neumann_terms=neumann_terms, neumann_norm_cap=neumann_norm_cap,
            neumann_rule=neumann_rule, lcp_lambda=lcp_lambda, lcp_weight=lcp_weight,
            lcp_reduction=lcp_reduction, norm=norm, norm_groups=norm_groups, share_kernels=share_kernels,
            readout_norm=readout)
        self.predictor.solver.logger = logging.getLogger("detectron2.rv_plugins.mask_head")
        self.test_steps = test_steps
        self.last_info: Optional[SolverInfo] = None

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        h = cfg.MODEL.ROI_MASK_HEAD.HGRU
        for key in ("NEUMANN_TERMS", "TEST_STEPS"):
            if h[key] < 0:
                raise ValueError(f"MODEL.ROI_MASK_HEAD.HGRU.{key}={h[key]}; need an integer >= 0 "
                                 "(0 = STEPS)")
        if h.NEUMANN_NORM_CAP < 0:
            raise ValueError(f"MODEL.ROI_MASK_HEAD.HGRU.NEUMANN_NORM_CAP={h.NEUMANN_NORM_CAP}; "
                             "need a bound > 0 (the authors: 1.0) or 0 = off")
        ret.update(
            input_shape=input_shape,
            num_classes=1 if cfg.MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK else cfg.MODEL.ROI_HEADS.NUM_CLASSES,
            cell=h.CELL, channels=h.CHANNELS, kernel_size=h.KERNEL_SIZE,
            input_kernel_size=h.INPUT_KERNEL_SIZE, solver_mode=h.SOLVER_MODE, steps=h.STEPS,
            test_steps=h.TEST_STEPS or None, neumann_terms=h.NEUMANN_TERMS or None,
            neumann_norm_cap=h.NEUMANN_NORM_CAP or None, neumann_rule=h.NEUMANN_RULE,
            lcp_lambda=h.LCP_LAMBDA,
            lcp_weight=h.LCP_WEIGHT, lcp_reduction=h.LCP_REDUCTION, norm=h.NORM,
            norm_groups=h.NORM_GROUPS, share_kernels=h.SHARE_KERNELS, readout_norm=h.READOUT_NORM,
        )
        return ret

    def layers(self, x: torch.Tensor) -> torch.Tensor:
        """ROI features ``(N, C_in, S, S)`` -> mask logits ``(N, K, 2S, 2S)``; the solver's info
        is kept in ``self.last_info``."""
        steps = None if self.training else self.test_steps
        logits, self.last_info = self.predictor(x, steps=steps)
        return logits

    def forward(self, x: torch.Tensor, instances: List[Instances]):
        previous = self.last_info
        logits = self.layers(x)
        if not self.training:
            mask_rcnn_inference(logits, instances)
            return instances
        info = self.last_info
        losses = {"loss_mask": mask_rcnn_loss(logits, instances, self.vis_period) * self.loss_weight}
        if self.predictor.solver.uses_lcp:
            # always present in LCP modes (Detectron2 gathers the same keys from every worker)
            losses["loss_mask_lcp"] = info.weighted_lcp if info.weighted_lcp is not None else logits.sum() * 0.0
        self._log(info, previous)
        return losses

    @staticmethod
    def _log(info: SolverInfo, previous: Optional[SolverInfo]) -> None:
        storage = _active_storage()
        if storage is None:
            return
        scalars = info.log_scalars(LOG_PREFIX, backward=False)
        if previous is not None:
            scalars.update(previous.log_scalars(LOG_PREFIX, forward=False))
        for name, value in scalars.items():
            storage.put_scalar(name, value)
