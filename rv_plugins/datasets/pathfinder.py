"""Pathfinder for segmentation (after Linsley et al., 2018; the C-RBP paper's segmentation variant).

An image holds a *target* contour of ``length`` dashes with a marker (a small filled disk) at one
end, ``num_distractors`` distractor contours of the same length and optional loose clutter
dashes, white on black. The label is the target contour with its marker (uint8 0/1); the task is
to trace the contour that starts at the marker. Contours are smooth random walks: each dash turns
from the previous one by at most ``max_turn_deg``; they stay inside the image, avoid themselves
and keep ``min_separation`` pixels from the other contours (relaxed step by step only when a
layout cannot be found; ``PathfinderSample.relaxed`` tells).

Everything is deterministic in ``(seed, index)`` and drawn with numpy + Pillow; matplotlib is
needed only by :func:`save_sample_grid` (imported there). Every argument is checked when it is given
(a ``PathfinderConfig`` is built, a dataset made, a sample asked for): a value outside its range, NaN,
or a fraction where a count is meant raises ``ValueError`` naming the argument and the valid range.
"""
import math
import numbers
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

Point = Tuple[float, float]          # (x, y) in pixels
Segment = Tuple[Point, Point]        # one dash


@dataclass(frozen=True)
class PathfinderConfig:
    """Geometry of one Pathfinder variant. ``None`` sizes scale with ``image_size``.

    Attributes:
        image_size: square image side in pixels.
        length: dashes in the target contour (the paper: 14, 20, 25).
        dash_length, dash_gap: dash length and gap between dashes in pixels
            (defaults ``max(2, round(S/24))`` and ``max(2, round(0.6 * dash_length))``).
        dash_width: line width in pixels (default ``max(1, round(S/64))``).
        num_distractors: distractor contours, same length as the target.
        clutter_dashes: extra loose dashes at random places and orientations.
        max_turn_deg: curvature, the largest turn between two consecutive dashes.
        marker_radius: radius of the marker disk (default ``max(1.5, 1.5 * dash_width)``).
        min_separation: clearance between different contours (default ``2 * dash_width``).
        max_attempts: layouts tried before a constraint is relaxed (>= 1).

    Valid ranges (checked at construction): ``image_size`` an integer >= 8, ``length`` >= 1,
    ``dash_width`` >= 1, ``num_distractors`` / ``clutter_dashes`` >= 0 and ``max_attempts`` >= 1
    integers; ``dash_length`` > 0, ``dash_gap`` / ``marker_radius`` / ``min_separation`` >= 0 and
    ``0 <= max_turn_deg <= 180`` finite numbers; ``None`` for a size picks its default.
    """

    image_size: int = 128
    length: int = 14
    dash_length: Optional[float] = None
    dash_gap: Optional[float] = None
    dash_width: Optional[int] = None
    num_distractors: int = 2
    clutter_dashes: int = 0
    max_turn_deg: float = 30.0
    marker_radius: Optional[float] = None
    min_separation: Optional[float] = None
    max_attempts: int = 30

    def __post_init__(self):
        for name, minimum in (("image_size", 8), ("length", 1), ("num_distractors", 0), ("clutter_dashes", 0),
                              ("max_attempts", 1)):
            check_integer("PathfinderConfig", name, getattr(self, name), minimum)
        if self.dash_width is not None:
            check_integer("PathfinderConfig", "dash_width", self.dash_width, 1, "or None for max(1, S / 64)")
        for name, minimum, strict, default in (("dash_length", 0.0, True, "max(2, S / 24)"),
                                               ("dash_gap", 0.0, False, "0.6 dash_length"),
                                               ("marker_radius", 0.0, False, "1.5 dash_width"),
                                               ("min_separation", 0.0, False, "2 dash_width")):
            if getattr(self, name) is not None:
                _check_real(name, getattr(self, name), minimum, strict, f"or None for {default}")
        _check_real("max_turn_deg", self.max_turn_deg, 0.0, False, "up to 180", maximum=180.0)

    def resolved(self) -> "PathfinderConfig":
        """A copy with every ``None`` size replaced by its image-size-dependent default."""
        size = self.image_size
        dash = self.dash_length if self.dash_length is not None else max(2, round(size / 24))
        width = self.dash_width if self.dash_width is not None else max(1, round(size / 64))
        return replace(
            self, dash_length=float(dash),
            dash_gap=float(self.dash_gap if self.dash_gap is not None else max(2, round(0.6 * dash))),
            dash_width=int(width),
            marker_radius=float(self.marker_radius if self.marker_radius is not None
                                else max(1.5, 1.5 * width)),
            min_separation=float(self.min_separation if self.min_separation is not None
                                 else 2 * width))


def check_integer(owner: str, name: str, value, minimum: int, hint: str = "") -> int:
    """``value`` if it is an integer (not a bool) ``>= minimum``, else ``ValueError`` naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{owner}: {name}={value!r}; need an integer >= {minimum}{' ' + hint if hint else ''}")
    return int(value)


def _check_real(name: str, value, minimum: float, strict: bool, hint: str, maximum: float = math.inf) -> float:
    ok = (not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)
          and (value > minimum if strict else value >= minimum) and value <= maximum)
    if not ok:
        raise ValueError(f"PathfinderConfig: {name}={value!r}; need a finite number "
                         f"{'>' if strict else '>='} {minimum:g} ({hint})")
    return float(value)


@dataclass
class PathfinderSample:
    """One rendered image: ``img`` and ``mask`` uint8 ``(S, S)`` (img 0/255, mask 0/1).

    ``marker`` is the marker centre ``(row, col)``; ``relaxed`` counts the constraints that had
    to be dropped (0: none) to place the contours.
    """

    img: np.ndarray
    mask: np.ndarray
    marker: Tuple[int, int]
    relaxed: int


class _Occupancy:
    """Boolean ``(S, S)`` grid of pixels near already placed dashes."""

    def __init__(self, size: int, radius: float):
        self.size, self.radius = size, int(math.ceil(radius))
        self.grid = np.zeros((size, size), dtype=bool)

    def stamp(self, segment: Segment) -> None:
        """Mark every pixel within ``radius`` (a square) of the dash."""
        r = self.radius
        for col, row in zip(*_sample_pixels(segment)):
            self.grid[max(0, row - r):row + r + 1, max(0, col - r):col + r + 1] = True

    def hits(self, segment: Segment) -> bool:
        """Whether the dash touches a marked pixel (parts outside the grid touch nothing)."""
        cols, rows = _sample_pixels(segment)
        keep = (rows >= 0) & (rows < self.size) & (cols >= 0) & (cols < self.size)
        return bool(self.grid[rows[keep], cols[keep]].any())


def _sample_pixels(segment: Segment) -> Tuple[np.ndarray, np.ndarray]:
    """Integer ``(cols, rows)`` of points every ~half pixel along a dash, ends included."""
    (x0, y0), (x1, y1) = segment
    t = np.linspace(0.0, 1.0, max(2, int(math.ceil(2 * math.hypot(x1 - x0, y1 - y0))) + 1))
    return np.rint(x0 + (x1 - x0) * t).astype(np.int64), np.rint(y0 + (y1 - y0) * t).astype(np.int64)


def _walk(rng: np.random.Generator, cfg: PathfinderConfig, dashes: int, others: _Occupancy,
          avoid_others: bool, avoid_self: bool, turns_per_dash: int = 12) -> Optional[List[Segment]]:
    """A contour of ``dashes`` dashes as a list of segments, or None when it got stuck."""
    size, margin = cfg.image_size, cfg.dash_width / 2 + 0.5
    low, high = margin, size - 1 - margin
    centre = (size - 1) / 2
    clearance = lambda p: min(p[0] - low, high - p[0], p[1] - low, high - p[1])  # noqa: E731
    inside = lambda p: clearance(p) >= 0  # noqa: E731
    own = _Occupancy(size, cfg.min_separation)
    max_turn = math.radians(cfg.max_turn_deg)
    pos = tuple(rng.uniform(low, high, size=2))
    heading = 0.0
    # a walk heading into a wall needs about one turning radius of room to turn away in time
    # (a corner more: 1.5 radii are kept free ahead whenever one of the turns allows it)
    turning_radius = 1.5 * (cfg.dash_length + cfg.dash_gap) / max(max_turn, 1e-3)
    segments: List[Segment] = []
    for index in range(dashes):
        candidates = []
        turns = list(rng.uniform(-max_turn, max_turn, size=turns_per_dash)) + [-max_turn, max_turn]
        for turn in turns:  # random turns first, the two sharpest last
            new_heading = rng.uniform(0, 2 * math.pi) if index == 0 else heading + turn
            step = (math.cos(new_heading), math.sin(new_heading))
            start = pos if index == 0 else (pos[0] + cfg.dash_gap * step[0], pos[1] + cfg.dash_gap * step[1])
            end = (start[0] + cfg.dash_length * step[0], start[1] + cfg.dash_length * step[1])
            candidate = (start, end)
            if not (inside(start) and inside(end)):
                continue
            if avoid_others and others.hits(candidate):
                continue
            if avoid_self and own.hits(candidate):
                continue
            ahead = (end[0] + turning_radius * step[0], end[1] + turning_radius * step[1])
            if clearance(ahead) >= 0:
                candidates = [(0.0, candidate, new_heading)]
                break  # room to turn: keep this random turn
            to_centre = math.atan2(centre - end[1], centre - end[0])
            candidates.append((math.cos(new_heading - to_centre), candidate, new_heading))
        if not candidates:
            return None  # stuck: the caller retries from a new start
        # no turn leaves room ahead: take the one pointing most towards the centre
        _, candidate, new_heading = max(candidates, key=lambda item: item[0])
        if len(segments) >= 1:
            own.stamp(segments[-1])  # the previous dash; the newest one may touch its neighbour
        segments.append(candidate)
        pos, heading = candidate[1], new_heading
    return segments


def _place_contour(rng: np.random.Generator, cfg: PathfinderConfig, others: _Occupancy
                   ) -> Tuple[List[Segment], int]:
    """Find a contour, relaxing (1) clearance to others, then (2) self-avoidance; returns it and
    the number of relaxations used."""
    for relaxed, (avoid_others, avoid_self) in enumerate(((True, True), (False, True), (False, False))):
        for _ in range(cfg.max_attempts):
            segments = _walk(rng, cfg, cfg.length, others, avoid_others, avoid_self)
            if segments is not None:
                return segments, relaxed
    raise RuntimeError(f"Pathfinder: could not fit a {cfg.length}-dash contour of dash length "
                       f"{cfg.dash_length} and gap {cfg.dash_gap} in a {cfg.image_size}px image in "
                       f"{cfg.max_attempts} attempts per constraint level, even unconstrained; raise "
                       "max_turn_deg or max_attempts, or shorten length / dash_length / dash_gap")


def render_pathfinder(cfg: PathfinderConfig, rng: np.random.Generator) -> PathfinderSample:
    """Draw one sample with generator ``rng`` (see the module docstring)."""
    cfg = cfg.resolved()
    size = cfg.image_size
    occupancy = _Occupancy(size, cfg.min_separation)
    target, relaxed = _place_contour(rng, cfg, occupancy)
    for segment in target:
        occupancy.stamp(segment)
    distractors = []
    for _ in range(cfg.num_distractors):
        contour, extra = _place_contour(rng, cfg, occupancy)
        relaxed = max(relaxed, extra)
        for segment in contour:
            occupancy.stamp(segment)
        distractors.append(contour)
    clutter = []
    for _ in range(cfg.clutter_dashes):
        dash = _walk(rng, replace(cfg, length=1), 1, occupancy, avoid_others=True, avoid_self=False)
        if dash is not None:
            occupancy.stamp(dash[0])
            clutter.append(dash)
    image = Image.new("L", (size, size), 0)
    label = Image.new("L", (size, size), 0)
    for canvas, contours in ((image, [target, *distractors, *clutter]), (label, [target])):
        draw = ImageDraw.Draw(canvas)
        for contour in contours:
            for start, end in contour:
                draw.line([start, end], fill=255, width=cfg.dash_width)
    img, mask = np.asarray(image).copy(), (np.asarray(label) > 0).astype(np.uint8)
    marker = (int(round(target[0][0][1])), int(round(target[0][0][0])))  # (row, col) of the start
    rows, cols = np.ogrid[:size, :size]
    disk = (rows - marker[0]) ** 2 + (cols - marker[1]) ** 2 <= cfg.marker_radius ** 2
    img[disk], mask[disk] = 255, 1
    return PathfinderSample(img, mask, marker, relaxed)


def pathfinder_sample(cfg: PathfinderConfig, seed: int, index: int) -> PathfinderSample:
    """The sample number ``index`` of the stream ``seed`` (same arguments, same pixels); both integers >= 0."""
    seed = check_integer("pathfinder_sample", "seed", seed, 0)
    index = check_integer("pathfinder_sample", "index", index, 0)
    return render_pathfinder(cfg, np.random.default_rng([seed, index]))


class PathfinderDataset(Dataset):
    """``num_samples`` Pathfinder images generated on the fly, deterministic in ``(seed, index)``.

    Items are ``dict(img=float32 (C, S, S) in [0, 1], mask=int64 (S, S) in {0, 1})`` with
    ``C = channels`` (1, or 3 copies for RGB backbones).
    """

    def __init__(self, num_samples: int, config: PathfinderConfig = PathfinderConfig(),
                 seed: int = 0, channels: int = 1):
        if channels not in (1, 3):
            raise ValueError(f"PathfinderDataset: channels={channels}; use 1 (grey) or 3 (RGB)")
        self.num_samples = check_integer("PathfinderDataset", "num_samples", num_samples, 0)
        self.seed = check_integer("PathfinderDataset", "seed", seed, 0)
        self.config, self.channels = config.resolved(), channels

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"PathfinderDataset: index {index} outside [0, {self.num_samples})")
        sample = pathfinder_sample(self.config, self.seed, index)
        img = torch.from_numpy(sample.img).float().div_(255.0)[None]
        return dict(img=img.expand(self.channels, -1, -1).contiguous(),
                    mask=torch.from_numpy(sample.mask).long())


def save_sample_grid(path: str, sizes: Sequence[int] = (32, 64, 128),
                     lengths: Sequence[int] = (14, 20, 25), seed: int = 0, **config_kwargs) -> None:
    """Save a PNG: one row per (size, length), columns image | target mask | overlay.

    Needs matplotlib (imported here, not with the module). Draws on a standalone ``Figure``, so
    pyplot's backend and figure list are left alone.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError("save_sample_grid draws with matplotlib, which is not installed: "
                          "pip install matplotlib") from err

    rows = [(size, length) for size in sizes for length in lengths]
    fig = Figure(figsize=(6, 2 * len(rows)))
    axes = fig.subplots(len(rows), 3, squeeze=False)
    for row, (size, length) in enumerate(rows):
        sample = pathfinder_sample(PathfinderConfig(image_size=size, length=length, **config_kwargs),
                                   seed, row)
        overlay = np.stack([sample.img, sample.img * (1 - sample.mask), sample.img * (1 - sample.mask)], -1)
        for col, (picture, title) in enumerate(((sample.img, "image"), (sample.mask, "target"),
                                                (overlay, "overlay"))):
            axes[row, col].imshow(picture, cmap="gray", interpolation="nearest")
            axes[row, col].set_title(f"{title} {size}px, {length} dashes", fontsize=7)
            axes[row, col].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
