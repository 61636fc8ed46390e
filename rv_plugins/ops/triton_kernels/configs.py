"""Launch configurations of the scan kernels, chosen per ``(L, D, dtype)`` from a fixed table.

A configuration is the tile ``(BLOCK_L, BLOCK_D)`` one program scans (``BLOCK_L`` steps of ``BLOCK_D``
channels; the chunk of the decoupled look-back is one tile) and the warps per program. The rules:

* ``BLOCK_D`` makes one tile row 64-128 contiguous bytes (whole 32-byte sectors, 16-byte vector
  loads): 32 channels in float32, 64 in float16/bfloat16, 16 in float64, fewer only when ``D`` is
  smaller (never below 16).
* ``BLOCK_L`` is 64 steps (16 KiB of ``a`` and ``x`` per float32 tile) and shrinks to the next power of
  two >= ``L`` (at least 16) for short sequences. Chunks of 64 steps give ``L / 64`` programs per line:
  1024 at ``L = 65536``, so even a batch of one fills an H200's 132 SMs many times over, and each
  chunk's look-back mostly finds its predecessor's state already published.
* ``num_warps`` 4 for tiles of <= 2048 elements, 8 above (128 threads hold 16 elements of each tile
  operand per thread in float32).

No autotuning: the table is fixed so that the compile test (``rv_plugins.ops.triton_compile``) can
compile every configuration a launcher can pick and fail on a register spill, and so that the first
call costs one compilation, not a search. ``tools/gpu_check.py`` times alternatives on a GPU
(:func:`forced` overrides the table, as do the tests that need many chunks at small ``L``).
"""
import contextlib
from dataclasses import dataclass
from typing import Iterator, List, Optional

import torch

#: fp32 / fp64 accumulation limits: a chunk whose states could exceed ``LIMIT`` in magnitude, or whose
#: carried-in state or inputs exceed ``HMAX``, is scanned step by step (see ``chunk_scan.py``).
LIMITS = {torch.float32: (2.0 ** 124, 2.0 ** 40), torch.float64: (2.0 ** 1020, 2.0 ** 300)}
_ROW_CHANNELS = {1: 64, 2: 64, 4: 32, 8: 16}   # BLOCK_D by element size: 64-128 bytes per tile row
BLOCK_L_MAX = 64
BLOCK_L_MIN = 16


@dataclass(frozen=True)
class Config:
    block_l: int
    block_d: int
    num_warps: int


_forced: Optional[Config] = None


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def choose(L: int, D: int, dtype: torch.dtype) -> Config:
    """The configuration for sequences of ``L`` steps and ``D`` channels of ``dtype`` (see the module doc)."""
    if _forced is not None:
        return _forced
    row = _ROW_CHANNELS[torch.empty((), dtype=dtype).element_size()]
    block_d = max(16, min(row, _next_pow2(D)))
    block_l = max(BLOCK_L_MIN, min(BLOCK_L_MAX, _next_pow2(L)))
    return Config(block_l, block_d, 4 if block_l * block_d <= 2048 else 8)


def all_configs(dtype: torch.dtype) -> List[Config]:
    """Every configuration :func:`choose` can return for ``dtype`` (what the compile test compiles)."""
    found = {choose(L, D, dtype) for L in (1, 17, 33, 65) for D in (1, 17, 33, 65)}
    return sorted(found, key=lambda c: (c.block_l, c.block_d))


@contextlib.contextmanager
def forced(block_l: int, block_d: int, num_warps: int = 4) -> Iterator[Config]:
    """Use one configuration for every launch inside the block (tests, GPU sweeps)."""
    global _forced
    previous, _forced = _forced, Config(block_l, block_d, num_warps)
    try:
        yield _forced
    finally:
        _forced = previous
