"""Procedural datasets for mmseg: generated on the fly, deterministic by seed, no files needed.

``SyntheticScenesDataset`` (textured shapes, ``rv_plugins.datasets.synthetic_scenes``) pairs with the
``LoadSyntheticScene`` transform, which renders sample ``idx`` into ``img`` / ``gt_seg_map`` the way
``LoadImageFromFile`` + ``LoadAnnotations`` do for files; the rest of an mmseg pipeline is unchanged.
"""
from typing import Sequence

import numpy as np
from mmcv.transforms import BaseTransform
from mmengine.dataset import BaseDataset
from mmseg.registry import DATASETS, TRANSFORMS

from rv_plugins.datasets import synthetic_scenes


@DATASETS.register_module()
class SyntheticScenesDataset(BaseDataset):
    """``num_samples`` scenes of ``img_size`` (H, W) from the stream ``seed`` (see ``synthetic_scenes``)."""

    METAINFO = dict(classes=synthetic_scenes.CLASSES, palette=synthetic_scenes.PALETTE)

    def __init__(self, num_samples: int = 1000, img_size: Sequence[int] = (128, 128), seed: int = 0,
                 num_classes: int = len(synthetic_scenes.CLASSES), max_objects: int = 5, **kwargs):
        if num_samples < 1:
            raise ValueError(f"SyntheticScenesDataset: num_samples must be >= 1, got {num_samples}")
        self.num_samples, self.img_size, self.seed = int(num_samples), tuple(img_size), int(seed)
        self.num_classes, self.max_objects = int(num_classes), int(max_objects)
        metainfo = dict(classes=synthetic_scenes.CLASSES[:num_classes], palette=synthetic_scenes.PALETTE[:num_classes])
        metainfo.update(kwargs.pop("metainfo", None) or {})
        kwargs.setdefault("serialize_data", False)
        super().__init__(metainfo=metainfo, **kwargs)

    def load_data_list(self):
        scene = dict(seed=self.seed, img_size=self.img_size, num_classes=self.num_classes,
                     max_objects=self.max_objects)
        return [dict(synthetic_scene=dict(scene, index=i), img_path=f"synthetic_scenes/seed{self.seed}/{i:06d}.png",
                     seg_map_path=None, reduce_zero_label=False, seg_fields=[])
                for i in range(self.num_samples)]


@TRANSFORMS.register_module()
class LoadSyntheticScene(BaseTransform):
    """Render ``results['synthetic_scene']`` into ``img`` (H, W, 3 BGR uint8) and ``gt_seg_map`` (H, W)."""

    def transform(self, results: dict) -> dict:
        spec = results.get("synthetic_scene")
        if spec is None:
            raise KeyError("LoadSyntheticScene needs samples from SyntheticScenesDataset "
                           "(no 'synthetic_scene' key); use LoadImageFromFile for image files")
        img, mask = synthetic_scenes.render_scene(**spec)
        results["img"] = np.ascontiguousarray(img[..., ::-1])  # mmcv pipelines hold BGR images
        results["img_shape"] = results["ori_shape"] = img.shape[:2]
        results["gt_seg_map"] = mask
        results["seg_fields"] = results.get("seg_fields", []) + ["gt_seg_map"]
        return results


__all__ = ["SyntheticScenesDataset", "LoadSyntheticScene"]
