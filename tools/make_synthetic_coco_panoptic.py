#!/usr/bin/env python
"""Write a small synthetic COCO-panoptic dataset (deterministic by seed).

Scenes: two stuff classes, ``sky`` (top) and ``ground`` (bottom, below a wavy horizon), and two
thing classes, ``box`` (axis-aligned rectangles) and ``ball`` (discs), 1..``--max-objects``
non-overlapping instances per image, with colour jitter and pixel noise. Output layout: see
``rv_plugins/detectron2/datasets.py`` (images, COCO panoptic PNGs + JSON, "separated" semantic
PNGs, COCO instances JSON with polygons).

    python tools/make_synthetic_coco_panoptic.py --out /tmp/synth_pan --num-train 64 --num-val 16
"""
import argparse
import json
import math
import os

import numpy as np
from PIL import Image, ImageDraw

CATEGORIES = [
    dict(id=1, name="box", isthing=1, color=[220, 40, 40], supercategory="thing"),
    dict(id=2, name="ball", isthing=1, color=[240, 200, 30], supercategory="thing"),
    dict(id=3, name="sky", isthing=0, color=[90, 140, 230], supercategory="stuff"),
    dict(id=4, name="ground", isthing=0, color=[70, 150, 60], supercategory="stuff"),
]
STUFF_CONTIGUOUS = {3: 1, 4: 2}  # semantic PNG ids of the separated format (things -> 0)


def id2rgb(seg: np.ndarray) -> np.ndarray:
    """(H, W) segment ids -> (H, W, 3) uint8, id = R + 256 G + 256^2 B (COCO panoptic)."""
    return np.stack([seg % 256, seg // 256 % 256, seg // 65536 % 256], axis=-1).astype(np.uint8)


def _polygon(kind, cx, cy, r, rng):
    if kind == "box":
        w, h = r * rng.uniform(0.7, 1.0), r * rng.uniform(0.7, 1.0)
        return [(cx - w, cy - h), (cx + w, cy - h), (cx + w, cy + h), (cx - w, cy + h)]
    return [(cx + r * math.cos(2 * math.pi * k / 24), cy + r * math.sin(2 * math.pi * k / 24)) for k in range(24)]


def _mask(poly, size):
    img = Image.new("L", (size, size), 0)
    ImageDraw.Draw(img).polygon([(float(x), float(y)) for x, y in poly], fill=1)
    return np.array(img, dtype=bool)


def _bbox(mask):
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


def make_image(rng, size, max_objects):
    """One scene -> (rgb (S, S, 3) uint8, segment ids (S, S) int, segments list, instance polygons)."""
    yy, xx = np.mgrid[0:size, 0:size]
    horizon = size * rng.uniform(0.35, 0.6) + size * 0.06 * np.sin(2 * math.pi * (xx / size * rng.uniform(0.5, 2)
                                                                                 + rng.uniform()))
    sky = yy < horizon
    seg = np.zeros((size, size), np.int64)
    colors = np.zeros((size, size, 3), np.float64)
    segments, things = [], []
    next_id = 1
    for cat_id, region in ((3, sky), (4, ~sky)):
        base = np.array(CATEGORIES[cat_id - 1]["color"], float) + rng.uniform(-25, 25, 3)
        colors[region] = base
    placed = np.zeros((size, size), bool)
    for _ in range(int(rng.randint(1, max_objects + 1))):
        for _attempt in range(20):
            kind = "box" if rng.uniform() < 0.5 else "ball"
            r = rng.uniform(0.08, 0.18) * size
            cx, cy = rng.uniform(r + 1, size - r - 1), rng.uniform(r + 1, size - r - 1)
            poly = _polygon(kind, cx, cy, r, rng)
            mask = _mask(poly, size)
            if mask.sum() >= 16 and not (mask & placed).any():
                break
        else:
            continue
        placed |= mask
        cat_id = 1 if kind == "box" else 2
        colors[mask] = np.array(CATEGORIES[cat_id - 1]["color"], float) + rng.uniform(-30, 30, 3)
        things.append((next_id, cat_id, mask, poly))
        next_id += 1
    for seg_id, cat_id, mask, _ in things:
        seg[mask] = seg_id
        segments.append(dict(id=seg_id, category_id=cat_id, iscrowd=0, bbox=_bbox(mask), area=int(mask.sum())))
    for cat_id, region in ((3, sky), (4, ~sky)):
        region = region & ~placed
        if region.any():
            seg[region] = next_id
            segments.append(dict(id=next_id, category_id=cat_id, iscrowd=0, bbox=_bbox(region),
                                 area=int(region.sum())))
            next_id += 1
    rgb = np.clip(colors + rng.normal(0, 12, colors.shape), 0, 255).astype(np.uint8)
    return rgb, seg, segments, things


def write_split(out, split, count, size, max_objects, rng, first_image_id):
    for sub in ("images", "panoptic", "semseg"):
        os.makedirs(os.path.join(out, split, sub), exist_ok=True)
    images, pan_anns, inst_anns = [], [], []
    for k in range(count):
        image_id = first_image_id + k
        stem = f"{split}_{image_id:06d}"
        rgb, seg, segments, things = make_image(rng, size, max_objects)
        Image.fromarray(rgb).save(os.path.join(out, split, "images", stem + ".jpg"), quality=95)
        Image.fromarray(id2rgb(seg)).save(os.path.join(out, split, "panoptic", stem + ".png"))
        semantic = np.full(seg.shape, 255, np.uint8)
        for s in segments:
            semantic[seg == s["id"]] = 0 if s["category_id"] in (1, 2) else STUFF_CONTIGUOUS[s["category_id"]]
        Image.fromarray(semantic).save(os.path.join(out, split, "semseg", stem + ".png"))
        images.append(dict(id=image_id, file_name=stem + ".jpg", height=size, width=size))
        pan_anns.append(dict(image_id=image_id, file_name=stem + ".png", segments_info=segments))
        for seg_id, cat_id, mask, poly in things:
            inst_anns.append(dict(id=len(inst_anns) + 1, image_id=image_id, category_id=cat_id, iscrowd=0,
                                  segmentation=[[round(float(v), 2) for xy in poly for v in xy]],
                                  area=float(mask.sum()), bbox=[float(v) for v in _bbox(mask)]))
    ann_dir = os.path.join(out, "annotations")
    os.makedirs(ann_dir, exist_ok=True)
    with open(os.path.join(ann_dir, f"panoptic_{split}.json"), "w") as f:
        json.dump(dict(images=images, annotations=pan_anns, categories=CATEGORIES), f)
    with open(os.path.join(ann_dir, f"instances_{split}.json"), "w") as f:
        json.dump(dict(images=images, annotations=inst_anns,
                       categories=[dict(id=c["id"], name=c["name"], supercategory=c["supercategory"])
                                   for c in CATEGORIES if c["isthing"]]), f)
    return len(inst_anns)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--num-train", type=int, default=64)
    parser.add_argument("--num-val", type=int, default=16)
    parser.add_argument("--size", type=int, default=128, help="square image side in pixels")
    parser.add_argument("--max-objects", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.size < 32 or args.num_train < 1 or args.num_val < 0 or args.max_objects < 1:
        parser.error("need --size >= 32, --num-train >= 1, --num-val >= 0, --max-objects >= 1")
    rng = np.random.RandomState(args.seed)
    n_train = write_split(args.out, "train", args.num_train, args.size, args.max_objects, rng, 1)
    n_val = write_split(args.out, "val", args.num_val, args.size, args.max_objects, rng, 1 + args.num_train) \
        if args.num_val else 0
    print(f"wrote {args.num_train} train ({n_train} things) and {args.num_val} val ({n_val} things) images "
          f"of {args.size}x{args.size} to {args.out}")


if __name__ == "__main__":
    main()
