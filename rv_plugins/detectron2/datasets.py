"""Register the synthetic COCO-panoptic dataset of ``tools/make_synthetic_coco_panoptic.py``.

Folder layout (``<split>`` is ``train`` / ``val``)::

    root/<split>/images/*.jpg            RGB images
    root/<split>/panoptic/*.png          COCO panoptic PNGs (segment id = R + 256 G + 256^2 B)
    root/<split>/semseg/*.png            "separated" semantic PNGs: things 0, stuff 1..S, void 255
    root/annotations/panoptic_<split>.json   COCO panoptic JSON (all categories)
    root/annotations/instances_<split>.json  COCO instances JSON (thing categories, polygons)

``register_synthetic_coco_panoptic(root, prefix)`` registers, through Detectron2's own
``register_coco_panoptic_separated``, ``<prefix>_<split>_separated`` (Panoptic FPN training and
``COCOPanopticEvaluator``) and ``<prefix>_<split>_stuffonly`` for every split present.
"""
import contextlib
import json
import logging
import math
import os
from typing import List

from detectron2.data import DatasetCatalog
from detectron2.data.datasets import register_coco_panoptic_separated
from detectron2.evaluation import COCOPanopticEvaluator

__all__ = ["register_synthetic_coco_panoptic", "synthetic_panoptic_metadata", "PanopticEvaluator"]
logger = logging.getLogger(__name__)


@contextlib.contextmanager
def _empty_groups_are_nan(dataset_name: str):
    """panopticapi averages PQ over the categories that occur (in ground truth or predictions) and
    divides by their count: a split without any "thing" (or "stuff") segment raises ZeroDivisionError
    after the whole evaluation ran. Inside this context such a group's PQ/SQ/RQ are NaN (undefined),
    with a warning naming the split and the group; the other groups are unchanged."""
    try:
        from panopticapi import evaluation
    except ImportError:
        yield
        return
    original = evaluation.PQStat.pq_average

    def pq_average(self, categories, isthing):
        try:
            return original(self, categories, isthing)
        except ZeroDivisionError:
            group = {True: "thing", False: "stuff"}.get(isthing, "any")
            logger.warning("panoptic evaluation of %s: no %s segment in its ground truth or in the "
                           "predictions, so PQ/SQ/RQ of that group are undefined (reported as NaN). "
                           "Evaluate on a split that has %s segments to get them.", dataset_name, group, group)
            nan = math.nan
            return {"pq": nan, "sq": nan, "rq": nan, "n": 0}, {}

    evaluation.PQStat.pq_average = pq_average
    try:
        yield
    finally:
        evaluation.PQStat.pq_average = original


class PanopticEvaluator(COCOPanopticEvaluator):
    """Detectron2's ``COCOPanopticEvaluator``, except that a split without "thing" (or "stuff") segments
    reports NaN for that group's PQ (with a warning) instead of failing with ZeroDivisionError inside
    panopticapi."""

    def __init__(self, dataset_name: str, output_dir=None):
        super().__init__(dataset_name, output_dir)
        self._rv_dataset_name = dataset_name

    def evaluate(self):
        with _empty_groups_are_nan(self._rv_dataset_name):
            return super().evaluate()


def synthetic_panoptic_metadata(categories: List[dict]) -> dict:
    """Detectron2 metadata for the separated format from COCO panoptic ``categories``.

    Things keep their id order as contiguous ids ``0..T-1``; stuff contiguous ids are ``1..S``
    with 0 the merged "things" class, as Detectron2's COCO metadata.
    """
    things = sorted((c for c in categories if c["isthing"]), key=lambda c: c["id"])
    stuff = sorted((c for c in categories if not c["isthing"]), key=lambda c: c["id"])
    if not things or not stuff:
        raise ValueError("synthetic panoptic categories need at least one thing and one stuff class; "
                         "regenerate the dataset with tools/make_synthetic_coco_panoptic.py")
    stuff_map = {c["id"]: i + 1 for i, c in enumerate(stuff)}
    stuff_map[0] = 0
    return dict(
        thing_classes=[c["name"] for c in things],
        thing_colors=[list(c["color"]) for c in things],
        thing_dataset_id_to_contiguous_id={c["id"]: i for i, c in enumerate(things)},
        stuff_classes=["things"] + [c["name"] for c in stuff],
        stuff_colors=[[82, 18, 128]] + [list(c["color"]) for c in stuff],
        stuff_dataset_id_to_contiguous_id=stuff_map,
    )


def register_synthetic_coco_panoptic(root: str, prefix: str = "synth_pan") -> List[str]:
    """Register every split found under ``root``; returns the ``..._separated`` names.

    Registering the same names again (e.g. a second call in one process) is skipped.
    """
    ann_dir = os.path.join(root, "annotations")
    if not os.path.isdir(ann_dir):
        raise FileNotFoundError(f"{ann_dir} not found: create the dataset with `python "
                                f"tools/make_synthetic_coco_panoptic.py --out {root}` first")
    names = []
    for split in ("train", "val"):
        panoptic_json = os.path.join(ann_dir, f"panoptic_{split}.json")
        if not os.path.exists(panoptic_json):
            continue
        name = f"{prefix}_{split}"
        names.append(name + "_separated")
        if name + "_separated" in DatasetCatalog.list():
            continue
        with open(panoptic_json) as f:
            categories = json.load(f)["categories"]
        register_coco_panoptic_separated(
            name, synthetic_panoptic_metadata(categories),
            image_root=os.path.join(root, split, "images"),
            panoptic_root=os.path.join(root, split, "panoptic"), panoptic_json=panoptic_json,
            sem_seg_root=os.path.join(root, split, "semseg"),
            instances_json=os.path.join(ann_dir, f"instances_{split}.json"))
    if not names:
        raise FileNotFoundError(f"no annotations/panoptic_<split>.json under {root}; create the dataset "
                                "with tools/make_synthetic_coco_panoptic.py")
    return names
