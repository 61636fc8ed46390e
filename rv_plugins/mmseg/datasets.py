"""Procedural datasets for mmseg: generated on the fly, deterministic by seed, no files needed.

One pattern, written once: a dataset whose data list holds, per sample, a small *spec* (under the
key ``SPEC_KEY``) from which a ``Load*`` transform renders ``img`` / ``gt_seg_map`` the way
``LoadImageFromFile`` + ``LoadAnnotations`` do for files; the rest of an mmseg pipeline is unchanged.

* :class:`ProceduralSegDataset` (base, not registered): ``num_samples`` entries from the stream
  ``seed``; a subclass names ``SPEC_KEY`` and ``LOADER`` (its ``Load*`` transform) and implements
  :meth:`~ProceduralSegDataset.sample_spec` and :meth:`~ProceduralSegDataset.sample_path` (a made-up,
  unique ``img_path`` for logs and visualisers). File loaders in its pipeline stand for its renderer:
  ``LoadImageFromFile`` becomes ``LOADER`` and ``LoadAnnotations`` is dropped (the renderer writes the
  mask), so one test pipeline serves the procedural test set and image files (``MMSegInferencer``,
  ``mmseg.apis.inference_model``, which read the config's test pipeline).
* :class:`LoadProceduralSample` (base, not registered): a subclass names ``SPEC_KEY`` /
  ``DATASET`` and implements :meth:`~LoadProceduralSample.render` ``(spec) -> (img, mask)``.

Registered here: ``SyntheticScenesDataset`` + ``LoadSyntheticScene`` (textured shapes,
``rv_plugins.datasets.synthetic_scenes``). ``rv_plugins.mmseg.pathfinder`` registers
``PathfinderSegDataset`` + ``LoadPathfinderSample`` on the same bases.
"""
from typing import List, Sequence, Tuple

import numpy as np
from mmcv.transforms import BaseTransform
from mmengine.dataset import BaseDataset
from mmseg.registry import DATASETS, TRANSFORMS

from rv_plugins.datasets import synthetic_scenes

__all__ = ["ProceduralSegDataset", "LoadProceduralSample", "SyntheticScenesDataset", "LoadSyntheticScene"]


class ProceduralSegDataset(BaseDataset):
    """Base of the datasets generated from ``(seed, index)``: ``num_samples`` entries, each
    ``{SPEC_KEY: spec, img_path, seg_map_path=None, reduce_zero_label=False, seg_fields=[]}``.

    Subclasses set their own attributes *before* calling ``super().__init__`` (mmengine's
    ``BaseDataset`` builds the data list in its constructor). ``serialize_data`` defaults to False
    (the specs are tiny).
    """

    SPEC_KEY: str = ""
    LOADER: str = ""  # registry name of the transform that renders SPEC_KEY (stands in for file loaders)

    def __init__(self, num_samples: int = 1000, seed: int = 0, **kwargs):
        if not self.SPEC_KEY:
            raise TypeError(f"{type(self).__name__}: a ProceduralSegDataset subclass must set SPEC_KEY")
        if num_samples < 1:
            raise ValueError(f"{type(self).__name__}: num_samples must be >= 1, got {num_samples}")
        self.num_samples, self.seed = int(num_samples), int(seed)
        kwargs.setdefault("serialize_data", False)
        kwargs["pipeline"] = self.render_file_loaders(kwargs.get("pipeline", []))
        super().__init__(**kwargs)

    def render_file_loaders(self, pipeline: Sequence) -> list:
        """``pipeline`` with ``LoadImageFromFile`` replaced by ``LOADER`` and ``LoadAnnotations`` dropped
        (transform configs only; built transforms are kept as they are)."""
        out = []
        for t in pipeline:
            kind = t.get("type") if isinstance(t, dict) else None
            kind = getattr(kind, "__name__", kind)
            if kind == "LoadAnnotations":
                continue
            if kind == "LoadImageFromFile":
                if not self.LOADER:
                    raise TypeError(f"{type(self).__name__}: a pipeline with LoadImageFromFile needs the dataset's "
                                    "LOADER (the transform that renders its samples); set LOADER on the class")
                t = dict(type=self.LOADER)
            out.append(t)
        return out

    def sample_spec(self, index: int) -> dict:
        """What the loading transform needs to render sample ``index``."""
        raise NotImplementedError

    def sample_path(self, index: int) -> str:
        """A unique made-up file name for sample ``index`` (no file is read)."""
        raise NotImplementedError

    def load_data_list(self) -> List[dict]:
        return [{self.SPEC_KEY: self.sample_spec(i), "img_path": self.sample_path(i), "seg_map_path": None,
                 "reduce_zero_label": False, "seg_fields": []}
                for i in range(self.num_samples)]


class LoadProceduralSample(BaseTransform):
    """Base of the transforms that render ``results[SPEC_KEY]`` into ``img`` (H, W) or (H, W, C)
    uint8, ``img_shape`` / ``ori_shape`` (H, W) and ``gt_seg_map`` (H, W), and add ``gt_seg_map``
    to ``seg_fields``."""

    SPEC_KEY: str = ""
    DATASET: str = ""  # the dataset that writes SPEC_KEY, for the error message

    def render(self, spec) -> Tuple[np.ndarray, np.ndarray]:
        """spec -> (img (H, W) or (H, W, C) uint8 as the pipeline holds it, mask (H, W))."""
        raise NotImplementedError

    def transform(self, results: dict) -> dict:
        spec = results.get(self.SPEC_KEY)
        if spec is None:
            raise KeyError(f"{type(self).__name__} needs samples from {self.DATASET} (no {self.SPEC_KEY!r} "
                           "key); use LoadImageFromFile for image files")
        img, mask = self.render(spec)
        results["img"] = np.ascontiguousarray(img)
        results["img_shape"] = results["ori_shape"] = img.shape[:2]
        results["gt_seg_map"] = mask
        results["seg_fields"] = results.get("seg_fields", []) + ["gt_seg_map"]
        return results


@DATASETS.register_module()
class SyntheticScenesDataset(ProceduralSegDataset):
    """``num_samples`` scenes of ``img_size`` (H, W) from the stream ``seed`` (see ``synthetic_scenes``)."""

    METAINFO = dict(classes=synthetic_scenes.CLASSES, palette=synthetic_scenes.PALETTE)
    SPEC_KEY, LOADER = "synthetic_scene", "LoadSyntheticScene"

    def __init__(self, num_samples: int = 1000, img_size: Sequence[int] = (128, 128), seed: int = 0,
                 num_classes: int = len(synthetic_scenes.CLASSES), max_objects: int = 5, **kwargs):
        self.img_size = tuple(img_size)
        self.num_classes, self.max_objects = int(num_classes), int(max_objects)
        metainfo = dict(classes=synthetic_scenes.CLASSES[:num_classes], palette=synthetic_scenes.PALETTE[:num_classes])
        metainfo.update(kwargs.pop("metainfo", None) or {})
        super().__init__(num_samples=num_samples, seed=seed, metainfo=metainfo, **kwargs)

    def sample_spec(self, index: int) -> dict:
        return dict(seed=self.seed, img_size=self.img_size, num_classes=self.num_classes,
                    max_objects=self.max_objects, index=index)

    def sample_path(self, index: int) -> str:
        return f"synthetic_scenes/seed{self.seed}/{index:06d}.png"


@TRANSFORMS.register_module()
class LoadSyntheticScene(LoadProceduralSample):
    """Render ``results['synthetic_scene']`` into ``img`` (H, W, 3 BGR uint8) and ``gt_seg_map`` (H, W)."""

    SPEC_KEY, DATASET = "synthetic_scene", "SyntheticScenesDataset"

    def render(self, spec):
        img, mask = synthetic_scenes.render_scene(**spec)
        return img[..., ::-1], mask  # mmcv pipelines hold BGR images
