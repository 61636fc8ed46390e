"""Procedural segmentation scenes: textured shapes of several classes on textured backgrounds.

Deterministic by ``(seed, index)``, generated on the fly (nothing is stored), numpy only. A class is
a (shape, texture) pair, so a model must use both the outline and the inside pattern:

=====  ==========  =============================
class  shape       texture
=====  ==========  =============================
0      background  smooth colour noise
1      disc        horizontal stripes
2      square      checkerboard
3      triangle    diagonal stripes
4      ring        dots
5      cross       vertical stripes
=====  ==========  =============================

Colours, sizes, positions, rotations and texture frequencies vary per object; later objects
occlude earlier ones. ``render_scene(index)`` returns ``(image uint8 (H, W, 3), mask uint8 (H, W))``.
"""
from typing import Tuple

import numpy as np

CLASSES = ("background", "disc", "square", "triangle", "ring", "cross")
PALETTE = [(0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48)]


def _shape_mask(kind: int, yy, xx, cy, cx, r, angle) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    u = (xx - cx) * c + (yy - cy) * s  # coordinates in the object's rotated frame
    v = -(xx - cx) * s + (yy - cy) * c
    if kind == 1:  # disc
        return u ** 2 + v ** 2 <= r ** 2
    if kind == 2:  # square
        return (np.abs(u) <= 0.8 * r) & (np.abs(v) <= 0.8 * r)
    if kind == 3:  # triangle: three half-planes
        inside = np.ones_like(u, dtype=bool)
        for k in range(3):
            t = 2 * np.pi * k / 3
            inside &= (u * np.cos(t) + v * np.sin(t)) <= 0.5 * r
        return inside
    if kind == 4:  # ring
        d2 = u ** 2 + v ** 2
        return (d2 <= r ** 2) & (d2 >= (0.55 * r) ** 2)
    if kind == 5:  # cross
        return ((np.abs(u) <= 0.3 * r) & (np.abs(v) <= r)) | ((np.abs(v) <= 0.3 * r) & (np.abs(u) <= r))
    raise ValueError(f"unknown shape class {kind}")


def _texture(kind: int, yy, xx, freq: float, phase: float) -> np.ndarray:
    """A [0, 1] pattern characteristic of the class."""
    if kind == 1:
        return 0.5 + 0.5 * np.sin(freq * yy + phase)
    if kind == 2:
        return ((np.floor(freq * xx / np.pi) + np.floor(freq * yy / np.pi)) % 2).astype(np.float32)
    if kind == 3:
        return 0.5 + 0.5 * np.sin(freq * (xx + yy) / np.sqrt(2) + phase)
    if kind == 4:
        return (np.sin(freq * xx + phase) * np.sin(freq * yy) > 0.3).astype(np.float32)
    if kind == 5:
        return 0.5 + 0.5 * np.sin(freq * xx + phase)
    raise ValueError(f"unknown texture class {kind}")


def _background(rng, h, w) -> np.ndarray:
    """Smooth colour noise: a coarse random grid upsampled bilinearly, (H, W, 3) in [0, 1]."""
    gh, gw = max(2, h // 16), max(2, w // 16)
    coarse = rng.uniform(0.15, 0.85, size=(gh, gw, 3))
    ys, xs = np.linspace(0, gh - 1, h), np.linspace(0, gw - 1, w)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, gh - 1), np.minimum(x0 + 1, gw - 1)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    top = coarse[y0][:, x0] * (1 - fx) + coarse[y0][:, x1] * fx
    bottom = coarse[y1][:, x0] * (1 - fx) + coarse[y1][:, x1] * fx
    return top * (1 - fy) + bottom * fy


def render_scene(index: int, seed: int = 0, img_size: Tuple[int, int] = (128, 128),
                 num_classes: int = len(CLASSES), max_objects: int = 5) -> Tuple[np.ndarray, np.ndarray]:
    """Render scene ``index`` of the stream ``seed``: ``(image (H, W, 3) uint8, mask (H, W) uint8)``."""
    if not 2 <= num_classes <= len(CLASSES):
        raise ValueError(f"num_classes must be in [2, {len(CLASSES)}], got {num_classes}")
    h, w = img_size
    rng = np.random.default_rng([seed, index])
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = _background(rng, h, w)
    mask = np.zeros((h, w), np.uint8)
    for _ in range(rng.integers(1, max_objects + 1)):
        kind = int(rng.integers(1, num_classes))
        r = rng.uniform(0.12, 0.28) * min(h, w)
        cy, cx = rng.uniform(0.1, 0.9) * h, rng.uniform(0.1, 0.9) * w
        region = _shape_mask(kind, yy, xx, cy, cx, r, rng.uniform(0, np.pi))
        pattern = _texture(kind, yy, xx, rng.uniform(0.6, 1.2), rng.uniform(0, 2 * np.pi))
        dark, light = rng.uniform(0, 0.35, 3), rng.uniform(0.65, 1.0, 3)
        colour = dark + pattern[..., None] * (light - dark)
        img[region] = colour[region]
        mask[region] = kind
    img += rng.normal(0, 0.03, img.shape)  # sensor noise
    return (np.clip(img, 0, 1) * 255).astype(np.uint8), mask
