"""``HGRUMaskHead``: Detectron2 glue for :class:`rv_plugins.heads.HGRUMaskPredictor`.

Select it with ``MODEL.ROI_MASK_HEAD.NAME: "HGRUMaskHead"`` and configure it under
``MODEL.ROI_MASK_HEAD.HGRU`` (see ``rv_plugins.detectron2.config``). The mask loss and the
inference are Detectron2's own (``mask_rcnn_loss`` / ``mask_rcnn_inference`` of
``BaseMaskRCNNHead``); training adds ``loss_mask_lcp`` (the weighted Lipschitz-constant penalty)
in the LCP modes ``'cbptt'`` / ``'crbp'``.

Event-storage scalars (when a Detectron2 ``EventStorage`` is active, i.e. in the trainer):
``mask_hgru/fixed_point_residual`` (``||h_N - h_{N-1}|| / ||h_N||``), ``mask_hgru/lcp``
(unweighted), ``mask_hgru/jacobian_colsum_max``, and for RBP modes ``mask_hgru/neumann_terms``
and ``mask_hgru/neumann_residual`` of the *previous* iteration's backward (the series runs
during ``backward``, after this forward has returned).
"""
from typing import List, Optional

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads.mask_head import (ROI_MASK_HEAD_REGISTRY, BaseMaskRCNNHead,
                                                      mask_rcnn_inference, mask_rcnn_loss)
from detectron2.structures import Instances
from detectron2.utils.events import get_event_storage

from rv_plugins.heads.hgru_mask_head import HGRUMaskPredictor
from rv_plugins.solvers.fixed_point import SolverInfo

__all__ = ["HGRUMaskHead"]


def _active_storage():
    try:
        return get_event_storage()
    except AssertionError:  # Detectron2 asserts when no EventStorage context is open
        return None


@ROI_MASK_HEAD_REGISTRY.register()
class HGRUMaskHead(BaseMaskRCNNHead):
    """Mask head: ROI features ``(N, C_in, S, S)`` -> hGRU fixed point -> mask logits
    ``(N, K, 2S, 2S)``; ``K = NUM_CLASSES`` (1 with ``CLS_AGNOSTIC_MASK``).

    ``forward(x, instances)`` returns ``{"loss_mask", ["loss_mask_lcp"]}`` in training and the
    instances with ``pred_masks`` in inference, as Detectron2's heads.
    """

    @configurable
    def __init__(self, input_shape: ShapeSpec, *, num_classes: int, channels: int = 256,
                 kernel_size: int = 3, input_kernel_size: int = 1, solver_mode: str = "crbp",
                 steps: int = 20, test_steps: Optional[int] = None, neumann_terms: Optional[int] = None,
                 lcp_lambda: float = 0.9, lcp_weight: float = 1.0, norm: str = "group",
                 norm_groups: int = 32, share_kernels: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.predictor = HGRUMaskPredictor(
            in_channels=input_shape.channels, num_classes=num_classes, channels=channels,
            kernel_size=kernel_size, input_kernel_size=input_kernel_size, solver_mode=solver_mode,
            steps=steps, neumann_terms=neumann_terms, lcp_lambda=lcp_lambda, lcp_weight=lcp_weight,
            norm=norm, norm_groups=norm_groups, share_kernels=share_kernels)
        self.test_steps = test_steps
        self.last_info: Optional[SolverInfo] = None

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        h = cfg.MODEL.ROI_MASK_HEAD.HGRU
        ret.update(
            input_shape=input_shape,
            num_classes=1 if cfg.MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK else cfg.MODEL.ROI_HEADS.NUM_CLASSES,
            channels=h.CHANNELS, kernel_size=h.KERNEL_SIZE, input_kernel_size=h.INPUT_KERNEL_SIZE,
            solver_mode=h.SOLVER_MODE, steps=h.STEPS, test_steps=h.TEST_STEPS or None,
            neumann_terms=h.NEUMANN_TERMS or None, lcp_lambda=h.LCP_LAMBDA, lcp_weight=h.LCP_WEIGHT,
            norm=h.NORM, norm_groups=h.NORM_GROUPS, share_kernels=h.SHARE_KERNELS,
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
        storage.put_scalar("mask_hgru/fixed_point_residual", info.fixed_point_residual)
        if info.lcp is not None:
            storage.put_scalar("mask_hgru/lcp", float(info.lcp.detach()))
        if info.jacobian_colsum_max is not None:
            storage.put_scalar("mask_hgru/jacobian_colsum_max", info.jacobian_colsum_max)
        if previous is not None and previous.neumann_terms is not None:
            storage.put_scalar("mask_hgru/neumann_terms", previous.neumann_terms)
            storage.put_scalar("mask_hgru/neumann_residual", previous.neumann_residual)
