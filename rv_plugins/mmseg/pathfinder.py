"""mmsegmentation glue for the C-RBP Pathfinder experiment (hGRU trained with BPTT / RBP +- LCP).

Registers, in mmseg's registries:

* ``PathfinderSegDataset`` (DATASETS): ``num_samples`` procedural Pathfinder images, deterministic
  in ``(seed, index)``; classes ``background`` / ``contour`` (the target contour with its marker).
* ``LoadPathfinderSample`` (TRANSFORMS): renders one sample into ``img`` (H, W) or (H, W, 3) uint8
  and ``gt_seg_map`` (H, W) uint8 in {0, 1}, as ``LoadImageFromFile`` + ``LoadAnnotations`` would.
  Both are built on the procedural-dataset bases of ``rv_plugins.mmseg.datasets``.
* ``PathfinderHGRU`` (MODELS): the plain model ``rv_plugins.models.pathfinder_hgru.PathfinderHGRU``
  (Gabor layer -> hGRU run by ``FixedPointSolver`` -> BN + 1x1 read-out), used as the backbone of
  ``RecurrentSegmentor`` (``rv_plugins.mmseg.segmentors``; still importable from here).

All model math lives in ``rv_plugins.models`` / ``rv_plugins.solvers``; this file is glue.
"""
from typing import Optional

import numpy as np
from mmseg.registry import DATASETS, MODELS, TRANSFORMS

from rv_plugins.datasets.pathfinder import PathfinderConfig, check_integer, pathfinder_sample
from rv_plugins.mmseg.datasets import LoadProceduralSample, ProceduralSegDataset
from rv_plugins.mmseg.segmentors import RecurrentSegmentor
from rv_plugins.models.pathfinder_hgru import PathfinderHGRU

MODELS.register_module(name="PathfinderHGRU", module=PathfinderHGRU)

_CONFIG_FIELDS = ("dash_length", "dash_gap", "dash_width", "clutter_dashes", "max_turn_deg",
                  "marker_radius", "min_separation", "max_attempts")


@DATASETS.register_module()
class PathfinderSegDataset(ProceduralSegDataset):
    """``num_samples`` Pathfinder images of ``image_size`` px with contours of ``length`` dashes.

    Each data-list entry carries a ``pathfinder`` spec that ``LoadPathfinderSample`` renders;
    ``channels`` is 1 (grey, ``img`` (H, W)) or 3 (``img`` (H, W, 3)). Further geometry arguments
    (``dash_length``, ``dash_gap``, ``dash_width``, ``max_turn_deg``, ...) go to ``PathfinderConfig``.
    """

    METAINFO = dict(classes=("background", "contour"), palette=[[0, 0, 0], [255, 255, 255]])
    SPEC_KEY, LOADER = "pathfinder", "LoadPathfinderSample"

    def __init__(self, num_samples: int = 1000, image_size: int = 64, length: int = 6,
                 num_distractors: int = 2, seed: int = 0, channels: int = 1,
                 pathfinder_cfg: Optional[dict] = None, **kwargs):
        if channels not in (1, 3):
            raise ValueError(f"PathfinderSegDataset: channels={channels}; use 1 (grey) or 3 (RGB)")
        geometry = dict(pathfinder_cfg or {})
        unknown = set(geometry) - set(_CONFIG_FIELDS)
        if unknown:
            raise ValueError(f"PathfinderSegDataset: unknown pathfinder_cfg keys {sorted(unknown)}; "
                             f"allowed: {_CONFIG_FIELDS}")
        self.pathfinder_config = PathfinderConfig(image_size=image_size, length=length,  # checked there
                                                  num_distractors=num_distractors, **geometry).resolved()
        self.channels = int(channels)
        for name, value, minimum in (("num_samples", num_samples, 1), ("seed", seed, 0)):
            check_integer("PathfinderSegDataset", name, value, minimum)
        super().__init__(num_samples=num_samples, seed=seed, **kwargs)

    def sample_spec(self, index: int) -> dict:
        return dict(config=self.pathfinder_config, seed=self.seed, index=index, channels=self.channels)

    def sample_path(self, index: int) -> str:
        cfg = self.pathfinder_config
        return f"pathfinder{cfg.image_size}/len{cfg.length}/seed{self.seed}/{index:06d}.png"


@TRANSFORMS.register_module()
class LoadPathfinderSample(LoadProceduralSample):
    """Render ``results['pathfinder']`` into ``img`` (H, W) or (H, W, 3) uint8 in {0, 255} and
    ``gt_seg_map`` (H, W) uint8 in {0, 1} (1: target contour and marker)."""

    SPEC_KEY, DATASET = "pathfinder", "PathfinderSegDataset"

    def render(self, spec):
        sample = pathfinder_sample(spec["config"], spec["seed"], spec["index"])
        img = sample.img if spec.get("channels", 1) == 1 else np.repeat(sample.img[..., None], 3, -1)
        return img, sample.mask


__all__ = ["PathfinderSegDataset", "LoadPathfinderSample", "RecurrentSegmentor"]
