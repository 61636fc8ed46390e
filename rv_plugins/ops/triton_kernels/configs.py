"""Launch configurations of the scan kernels, chosen per ``(L, D, dtype)`` by a fixed rule.

A configuration is the tile one program scans — ``BLOCK_L`` steps of ``BLOCK_D`` channels, as ``R`` groups
of ``STEPS`` consecutive steps (``R * STEPS = BLOCK_L``; the chunk of the decoupled look-back is one
tile) — and the warps per program. The rule:

* ``BLOCK_D``: 32 channels (16 when ``D <= 16``): a tile row is 64-128 contiguous bytes in 16-bit and
  32-bit dtypes (whole 32-byte sectors, 16-byte vector loads); 16 channels (128 bytes) in float64.
* ``BLOCK_L``: 64 steps (16 when ``L <= 16``). Chunks of 64 steps give ``L / 64`` programs per line: 1024 at ``L = 65536``, so even a batch of one fills an
  H200's 132 SMs many times over, and a chunk's look-back mostly finds its predecessor's state
  already published.
* ``num_warps``: 64 bytes of each tile operand per thread in the accumulation dtype (16 float32 or 8
  float64 elements; ``BLOCK_L * BLOCK_D / 512`` warps in float32, at least 1). More per thread raised
  the register count past 128 (fewer programs per SM, fewer bytes in flight) in the compile report of
  ``rv_plugins.ops.triton_compile``.
* The register budget is ``ptxas``'s choice (``maxnreg`` unset): the full budget (255) let it unroll and
  hoist more and raised the float32/bfloat16 kernels' counts by 20-110 registers. float64 (for
  accuracy checks, not speed) gets the full budget: ``ptxas``'s own choice spilled 8 bytes at two
  float64 tiles. The compile test fails on any spill.
* ``STEPS``: a warp covers a tile row with ``BLOCK_D / vector`` lanes (``vector`` = 16 bytes of elements);
  its other lanes and the warps take one group each, so ``R = lanes x warps`` and each thread scans
  ``STEPS = BLOCK_L / R`` steps in registers (float32: ``R = 16``, ``STEPS = 4``).

No autotuning: the rule is fixed so that the compile test (``rv_plugins.ops.triton_compile``) can compile
every configuration a launcher can pick and fail on a register spill, and so that the first call costs
one compilation, not a search. ``tools/gpu_check.py`` times alternatives on a GPU (:func:`forced`
overrides the rule, as do the tests that need many chunks at small ``L``).
"""
import contextlib
from dataclasses import dataclass
from typing import Iterator, List, Optional, Tuple

import torch

#: fp32 / fp64 accumulation limits: a chunk whose states could exceed ``LIMIT`` in magnitude, or whose
#: carried-in state or inputs exceed ``HMAX``, is scanned step by step (see ``chunk_scan.py``).
LIMITS = {torch.float32: (2.0 ** 124, 2.0 ** 40), torch.float64: (2.0 ** 1020, 2.0 ** 300)}
BLOCK_L_MAX = 64
BLOCK_L_MIN = 16
BYTES_PER_THREAD = 64


@dataclass(frozen=True)
class Config:
    block_l: int
    block_d: int
    num_warps: int
    steps: int
    maxnreg: Optional[int] = None


_forced: Optional[Config] = None


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def choose(L: int, D: int, dtype: torch.dtype) -> Config:
    """The configuration for sequences of ``L`` steps and ``D`` channels of ``dtype`` (see the module doc).
    Whether the rows are 16-byte aligned does not change it; the compile test compiles each configuration
    both ways."""
    if _forced is not None:
        return _forced
    size = dtype.itemsize
    block_d = 16 if size == 8 or D <= 16 else 32
    block_l = BLOCK_L_MIN if L <= BLOCK_L_MIN else BLOCK_L_MAX
    acc_size = 8 if size == 8 else 4
    num_warps = max(1, block_l * block_d * acc_size // (32 * BYTES_PER_THREAD))
    group_lanes = 32 // (block_d // min(block_d, 16 // size))   # lanes of a warp along the groups
    steps = max(1, block_l // (group_lanes * num_warps))
    return Config(block_l, block_d, num_warps, steps, 255 if size == 8 else None)


def all_configs(dtype: torch.dtype) -> List[Tuple[Config, bool]]:
    """Every ``(configuration, aligned)`` :func:`choose` can return for ``dtype`` (what the compile test
    compiles)."""
    found = {choose(L, D, dtype) for L in (1, 17) for D in (1, 17)}
    return sorted(((c, aligned) for c in found for aligned in (True, False)),
                  key=lambda c: (c[0].block_l, c[0].block_d, c[1]))


@contextlib.contextmanager
def forced(block_l: int, block_d: int, num_warps: int = 1, steps: int = 4) -> Iterator[Config]:
    """Use one configuration for every launch inside the block (tests, GPU sweeps)."""
    global _forced
    if block_l % steps:
        raise ValueError(f"configs.forced: block_l={block_l} is not a multiple of steps={steps}")
    previous, _forced = _forced, Config(block_l, block_d, num_warps, steps)
    try:
        yield _forced
    finally:
        _forced = previous
