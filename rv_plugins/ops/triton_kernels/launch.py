"""Host side shared by the kernel modules: compile-time constants, limits, the look-back workspace."""
import os
from typing import Tuple

import torch
import triton.language as tl

from ..adjoint import accumulation_dtype
from . import configs


def kernel_constants(dtype: torch.dtype, config: configs.Config) -> dict:
    """Compile-time arguments every scan kernel takes (accumulation dtype, limits, tile) and its launch
    options (warps, register budget)."""
    acc = accumulation_dtype(dtype)
    limit, hmax = configs.LIMITS[acc]
    constants = dict(ACC=tl.float64 if acc == torch.float64 else tl.float32, LIMIT=limit, HMAX=hmax,
                     BLOCK_L=config.block_l, STEPS=config.steps, BLOCK_D=config.block_d, num_warps=config.num_warps)
    if config.maxnreg is not None:
        constants["maxnreg"] = config.maxnreg
    return constants


def aligned(*tensors: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """The tensors, each copied if its data does not start on 16 bytes (so that every launch gets the
    pointer specialisation the compile test checks)."""
    return tuple(t if t.data_ptr() % 16 == 0 else t.clone() for t in tensors)


def workspace(n_lines: int, n_chunks: int, config: configs.Config, dtype: torch.dtype, device):
    """``(flags, summaries)`` for one launch: int32 ticket counters + chunk statuses (zeroed), and the
    chunks' published summaries (five ``BLOCK_D`` vectors each, uninitialised). One chunk per line
    needs neither (a one-element placeholder is passed)."""
    if n_chunks == 1:
        return (torch.empty(1, dtype=torch.int32, device=device),
                torch.empty(1, dtype=accumulation_dtype(dtype), device=device))
    if n_lines * n_chunks * 5 * config.block_d >= 2 ** 31:   # the kernels index the workspace in int32
        raise ValueError(f"scan too large for the Triton kernels' workspace: {n_lines} lines x {n_chunks} chunks of "
                         f"{config.block_l} steps; split the batch into smaller calls")
    flags = torch.zeros(n_lines * (1 + n_chunks), dtype=torch.int32, device=device)
    values = torch.empty(n_lines * n_chunks * 5 * config.block_d, dtype=accumulation_dtype(dtype), device=device)
    return flags, values


def check_device(device: torch.device) -> None:
    """Raise a clear error when the Triton kernels cannot run on ``device``."""
    if device.type == "cuda" or os.environ.get("TRITON_INTERPRET", "0") == "1":
        return
    raise RuntimeError(f"the 'triton' scan backend needs CUDA tensors, got tensors on {device}. Use "
                       "backend='torch' (the CPU default) or backend=None, or set TRITON_INTERPRET=1 before "
                       "importing rv_plugins to run the Triton kernels in the (slow) interpreter.")
