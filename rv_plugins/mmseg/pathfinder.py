"""mmsegmentation glue for the C-RBP Pathfinder experiment (hGRU trained with BPTT / RBP +- LCP).

Registers, in mmseg's registries:

* ``PathfinderSegDataset`` (DATASETS): ``num_samples`` procedural Pathfinder images, deterministic
  in ``(seed, index)``; classes ``background`` / ``contour`` (the target contour with its marker).
* ``LoadPathfinderSample`` (TRANSFORMS): renders one sample into ``img`` (H, W) or (H, W, 3) uint8
  and ``gt_seg_map`` (H, W) uint8 in {0, 1}, as ``LoadImageFromFile`` + ``LoadAnnotations`` would.
* ``PathfinderHGRU`` (MODELS): the plain model ``rv_plugins.models.pathfinder_hgru.PathfinderHGRU``
  (Gabor layer -> hGRU run by ``FixedPointSolver`` -> BN + 1x1 read-out), used as the backbone.
* ``RecurrentSegmentor`` (MODELS): a thin ``BaseSegmentor`` around it. Its losses are
  ``loss_ce`` (per-pixel cross-entropy) and, in the LCP modes, ``loss_lcp`` (``lcp_weight * LCP``);
  the solver diagnostics go to the training log under keys without ``loss`` (so mmengine logs them
  but does not add them to the loss): ``fp_residual``, ``lcp`` (unweighted), ``jac_colsum_max``
  and, after the backward pass of the RBP modes, ``neumann_terms`` / ``neumann_residual`` and
  ``rbp_unreliable`` (1 when the solver flagged this step's RBP gradient: unconverged forward,
  or a Neumann series that diverged or was cut with a large error). The solver's rate-limited
  warning that says why goes to mmengine's current logger (the run's log file).

All model math lives in ``rv_plugins.models`` / ``rv_plugins.solvers``; this file is glue.
"""
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from mmcv.transforms import BaseTransform
from mmengine.dataset import BaseDataset
from mmengine.logging import MMLogger
from mmseg.models.segmentors.base import BaseSegmentor
from mmseg.registry import DATASETS, MODELS, TRANSFORMS

from rv_plugins.datasets.pathfinder import PathfinderConfig, pathfinder_sample
from rv_plugins.models.pathfinder_hgru import PathfinderHGRU

MODELS.register_module(name="PathfinderHGRU", module=PathfinderHGRU)

_CONFIG_FIELDS = ("dash_length", "dash_gap", "dash_width", "clutter_dashes", "max_turn_deg",
                  "marker_radius", "min_separation", "max_attempts")


@DATASETS.register_module()
class PathfinderSegDataset(BaseDataset):
    """``num_samples`` Pathfinder images of ``image_size`` px with contours of ``length`` dashes.

    Each data-list entry carries a ``pathfinder`` spec that ``LoadPathfinderSample`` renders;
    ``channels`` is 1 (grey, ``img`` (H, W)) or 3 (``img`` (H, W, 3)). Further geometry arguments
    (``dash_length``, ``dash_gap``, ``dash_width``, ``max_turn_deg``, ...) go to ``PathfinderConfig``.
    """

    METAINFO = dict(classes=("background", "contour"), palette=[[0, 0, 0], [255, 255, 255]])

    def __init__(self, num_samples: int = 1000, image_size: int = 64, length: int = 6,
                 num_distractors: int = 2, seed: int = 0, channels: int = 1,
                 pathfinder_cfg: Optional[dict] = None, **kwargs):
        if num_samples < 1:
            raise ValueError(f"PathfinderSegDataset: num_samples must be >= 1, got {num_samples}")
        if channels not in (1, 3):
            raise ValueError(f"PathfinderSegDataset: channels={channels}; use 1 (grey) or 3 (RGB)")
        geometry = dict(pathfinder_cfg or {})
        unknown = set(geometry) - set(_CONFIG_FIELDS)
        if unknown:
            raise ValueError(f"PathfinderSegDataset: unknown pathfinder_cfg keys {sorted(unknown)}; "
                             f"allowed: {_CONFIG_FIELDS}")
        self.pathfinder_config = PathfinderConfig(image_size=int(image_size), length=int(length),
                                                  num_distractors=int(num_distractors),
                                                  **geometry).resolved()
        self.num_samples, self.seed, self.channels = int(num_samples), int(seed), int(channels)
        kwargs.setdefault("serialize_data", False)
        super().__init__(**kwargs)

    def load_data_list(self) -> List[dict]:
        cfg, name = self.pathfinder_config, f"pathfinder{self.pathfinder_config.image_size}"
        return [dict(pathfinder=dict(config=cfg, seed=self.seed, index=i, channels=self.channels),
                     img_path=f"{name}/len{cfg.length}/seed{self.seed}/{i:06d}.png",
                     seg_map_path=None, reduce_zero_label=False, seg_fields=[])
                for i in range(self.num_samples)]


@TRANSFORMS.register_module()
class LoadPathfinderSample(BaseTransform):
    """Render ``results['pathfinder']`` into ``img`` (H, W) or (H, W, 3) uint8 in {0, 255} and
    ``gt_seg_map`` (H, W) uint8 in {0, 1} (1: target contour and marker)."""

    def transform(self, results: dict) -> dict:
        spec = results.get("pathfinder")
        if spec is None:
            raise KeyError("LoadPathfinderSample needs samples from PathfinderSegDataset (no "
                           "'pathfinder' key); use LoadImageFromFile for image files")
        sample = pathfinder_sample(spec["config"], spec["seed"], spec["index"])
        img = sample.img if spec.get("channels", 1) == 1 else np.repeat(sample.img[..., None], 3, -1)
        results["img"] = np.ascontiguousarray(img)
        results["img_shape"] = results["ori_shape"] = sample.img.shape[:2]
        results["gt_seg_map"] = sample.mask
        results["seg_fields"] = results.get("seg_fields", []) + ["gt_seg_map"]
        return results


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
    """

    def __init__(self, backbone: dict, class_weight: Optional[Sequence[float]] = None,
                 ignore_index: int = 255, test_steps: Optional[int] = None,
                 data_preprocessor: Optional[dict] = None, init_cfg: Optional[dict] = None):
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
        """Cross-entropy (+ LCP) and the solver diagnostics (keys without 'loss': logged only)."""
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
        device = logits.device
        losses["fp_residual"] = torch.tensor(info.fixed_point_residual, device=device)
        if info.lcp is not None:
            losses["lcp"] = info.lcp.detach()
        if info.jacobian_colsum_max is not None:
            losses["jac_colsum_max"] = torch.tensor(info.jacobian_colsum_max, device=device)
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
                            for name, value in self._last_info.backward_scalars().items())
        return log_vars


__all__ = ["PathfinderSegDataset", "LoadPathfinderSample", "RecurrentSegmentor"]
