"""``RecurrentSegmentor`` (mmseg ``MODELS``): a per-pixel segmentor around any recurrent model that
returns ``(logits, SolverInfo)``, e.g. ``PathfinderHGRU`` (``rv_plugins.mmseg.pathfinder``).

Its losses are ``loss_ce`` (per-pixel cross-entropy) and, in the LCP modes, ``loss_lcp``
(``lcp_weight * LCP``). The solver diagnostics go to the training log under the names of
:meth:`rv_plugins.solvers.SolverInfo.log_scalars` (none contains ``loss``, so mmengine logs them
but does not add them to the loss): ``fixed_point_residual``, ``lcp`` (unweighted),
``jacobian_colsum_max`` and, after the backward pass of the RBP modes, ``neumann_terms`` /
``neumann_residual`` and ``rbp_unreliable`` (1 when the solver flagged this step's RBP gradient:
unconverged forward, or a Neumann series that diverged or was cut with a large error). The
solver's rate-limited warning that says why goes to mmengine's current logger (the run's log file).
"""
from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from mmengine.logging import MMLogger
from mmseg.models.segmentors.base import BaseSegmentor
from mmseg.registry import MODELS

__all__ = ["RecurrentSegmentor"]


@MODELS.register_module()
class RecurrentSegmentor(BaseSegmentor):
    """Per-pixel segmentor around a recurrent model ``backbone(img, steps) -> (logits, info)``.

    Args:
        backbone: config of the model (e.g. ``dict(type='PathfinderHGRU', mode='crbp', ...)``);
            it maps ``(B, C, H, W)`` images to ``(B, num_classes, H, W)`` logits and a ``SolverInfo``.
        class_weight: cross-entropy weight per class (None: all 1).
        ignore_index: label value left out of the loss.
        test_steps: recurrent steps at test time (None: the training steps).
        data_preprocessor, init_cfg: as for every mmseg segmentor.
        pretrained, train_cfg: only ``None``, which ``mmseg.apis.init_model`` sets on every segmentor config
            it builds (load whole-model checkpoints with ``init_model(config, checkpoint)`` or ``load_from``).
    """

    def __init__(self, backbone: dict, class_weight: Optional[Sequence[float]] = None,
                 ignore_index: int = 255, test_steps: Optional[int] = None,
                 data_preprocessor: Optional[dict] = None, init_cfg: Optional[dict] = None,
                 pretrained: Optional[str] = None, train_cfg: Optional[dict] = None):
        for name, value in (("pretrained", pretrained), ("train_cfg", train_cfg)):
            if value is not None:
                raise ValueError(f"RecurrentSegmentor: {name}={value!r} is not supported (accepted as None for "
                                 "mmseg.apis.init_model); load a whole-model checkpoint with load_from=PATH or "
                                 "init_model(config, PATH), and set training options on the backbone")
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.backbone = MODELS.build(backbone)
        self.ignore_index, self.test_steps = ignore_index, test_steps
        self.align_corners = False  # used by BaseSegmentor.postprocess_result
        weight = None if class_weight is None else torch.tensor(class_weight, dtype=torch.float)
        self.register_buffer("class_weight", weight, persistent=False)
        self._last_info = None

    # the abstract interface of BaseSegmentor ------------------------------------------------
    def extract_feat(self, inputs: torch.Tensor):
        """inputs (B, C, H, W) -> (logits (B, K, H, W), SolverInfo)."""
        return self.backbone(inputs)

    def encode_decode(self, inputs: torch.Tensor, batch_data_samples=None) -> torch.Tensor:
        """inputs (B, C, H, W) -> logits (B, K, H, W) at ``test_steps``."""
        logits, self._last_info = self.backbone(inputs, steps=self.test_steps)
        return logits

    def _forward(self, inputs: torch.Tensor, data_samples=None) -> torch.Tensor:
        logits, _ = self.backbone(inputs)
        return logits

    def loss(self, inputs: torch.Tensor, data_samples) -> Dict[str, torch.Tensor]:
        """Cross-entropy (+ LCP) and the solver's forward diagnostics (0-d tensors without graph,
        keys without 'loss': logged only)."""
        logits, info = self.backbone(inputs)
        self._last_info = info
        target = torch.stack([s.gt_sem_seg.data for s in data_samples]).squeeze(1).long()
        if target.shape[-2:] != logits.shape[-2:]:
            raise ValueError(f"RecurrentSegmentor: labels {tuple(target.shape)} and logits "
                             f"{tuple(logits.shape)} differ in size; keep images and labels the "
                             "same size in the pipeline (no resize of one without the other)")
        losses = dict(loss_ce=F.cross_entropy(logits, target, weight=self.class_weight,
                                              ignore_index=self.ignore_index))
        if info.weighted_lcp is not None:
            losses["loss_lcp"] = info.weighted_lcp
        losses.update((name, torch.tensor(value, device=logits.device))
                      for name, value in info.log_scalars(backward=False).items())
        return losses

    def predict(self, inputs: torch.Tensor, data_samples=None):
        """inputs (B, C, H, W) -> data samples with ``pred_sem_seg`` / ``seg_logits``."""
        return self.postprocess_result(self.encode_decode(inputs, data_samples), data_samples)

    def train_step(self, data, optim_wrapper) -> Dict[str, torch.Tensor]:
        """mmengine's step, then the RBP backward's Neumann diagnostics of this very step."""
        solver = getattr(self.backbone, "solver", None)
        if solver is not None and hasattr(solver, "logger"):
            solver.logger = MMLogger.get_current_instance()  # warnings into the run's log
        log_vars = super().train_step(data, optim_wrapper)
        if self._last_info is not None:
            log_vars.update((name, torch.tensor(value))
                            for name, value in self._last_info.log_scalars(forward=False).items())
        return log_vars
