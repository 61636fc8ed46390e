"""Running a stage's blocks, shared by every backbone, and what the layers that recompute in the backward
(instead of storing activations) say when asked for a second derivative."""
import contextlib
from typing import Iterable

import torch
import torch.utils.checkpoint as cp
from torch import nn

from ..ops.modes import is_tracing_or_exporting
from .norm import _AUTOCAST_DEVICE_TYPES, autocast_dtype


def run_blocks(blocks: Iterable[nn.Module], x: torch.Tensor, with_cp: bool = False) -> torch.Tensor:
    """Apply ``blocks`` in order. With ``with_cp`` (and autograd on) each block's activations are
    recomputed in the backward instead of stored (``torch.utils.checkpoint``, non-reentrant)."""
    for blk in blocks:
        x = cp.checkpoint(blk, x, use_reentrant=False) if with_cp and torch.is_grad_enabled() else blk(x)
    return x


def refuse_double_backward(what: str, switch: str) -> None:
    """Raise if a memory-saving ``autograd.Function``'s backward runs with ``create_graph=True``: ``what``
    names the layer, ``switch`` the attribute that selects its plain (twice differentiable) ops."""
    if torch.is_grad_enabled():
        raise RuntimeError(f"{what}: double backward (create_graph=True) through this memory-saving path is not "
                           f"supported; set {switch} = False to run the plain ops (twice differentiable)")


class _Recompute(torch.autograd.Function):
    """``fn(x)`` that stores only ``x`` and recomputes ``fn`` in the backward (``params``: the tensors ``fn``
    closes over that need gradients; they are inputs here so autograd routes their gradients as usual)."""

    @staticmethod
    def forward(ctx, fn, x, *params):
        ctx.fn, ctx.autocast = fn, _autocast_state(x.device)
        ctx.save_for_backward(x, *params)
        with torch.no_grad(), _autocast_like(*ctx.autocast):
            return fn(x)

    @staticmethod
    def backward(ctx, grad):
        refuse_double_backward("recompute_in_backward", "the layer's recompute")
        x, *params = ctx.saved_tensors
        x = x.detach().requires_grad_(ctx.needs_input_grad[1])
        with torch.enable_grad():
            with _autocast_like(*ctx.autocast):
                y = ctx.fn(x)
            # the gradients of <y, grad>, i.e. those for grad_outputs=grad (torch.autograd.grad with a tensor
            # grad_outputs imports torch's symbolic-shapes module, and sympy, on its first use)
            inner = (y * grad.to(y.dtype)).sum()
        wanted = [t for t, need in zip([x, *params], ctx.needs_input_grad[1:]) if need]
        found = iter(torch.autograd.grad(inner, wanted, allow_unused=True))
        return (None, *[next(found) if need else None for need in ctx.needs_input_grad[1:]])


def _autocast_state(device: torch.device):
    """``(device_type, enabled, dtype)`` of autocast for ``device`` (``device_type`` None where autocast does not
    exist, e.g. the meta device)."""
    if device.type not in _AUTOCAST_DEVICE_TYPES:
        return None, False, None
    dtype = autocast_dtype(device)
    return device.type, dtype is not None, dtype


def _autocast_like(device_type, enabled, dtype):
    """The autocast state of the forward, with autocast's weight-cast cache off: a cast made without autograd
    in the forward must not be reused by the recomputation (its weight would get no gradient)."""
    if device_type is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype, enabled=enabled, cache_enabled=False)


def recompute_in_backward(fn, x: torch.Tensor, params: Iterable[torch.Tensor]) -> torch.Tensor:
    """``fn(x)`` keeping only ``x`` for the backward, where ``fn`` is recomputed (under the forward's autocast
    state); ``params``: the parameters ``fn`` uses. Like ``torch.utils.checkpoint`` for a deterministic
    ``fn`` (no dropout), without its first-call cost (it imports ``torch._dynamo``). Traced or exported, plain
    ``fn(x)`` (a recorded graph has no backward to recompute in)."""
    if is_tracing_or_exporting():
        return fn(x)
    if torch.compiler.is_compiling():  # the compiler knows torch.utils.checkpoint (a higher-order op)
        return cp.checkpoint(fn, x, use_reentrant=False)
    return _Recompute.apply(fn, x, *[p for p in params if p.requires_grad])
