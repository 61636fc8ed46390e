"""``linear_scan``: the one recurrence every recurrent layer of rv_plugins runs on.

``h_t = a_t * h_{t-1} + b_t`` element-wise per channel, over ``(B, L, D)`` sequences.

Backends (``backend=``):

* ``"reference"`` — step-by-step loop, autograd records every step (tests only).
* ``"torch"`` — the CPU default: the compiled CPU kernel (``cpu_kernel.py``, built on first use and
  by the set-up) when it is available, else the chunked pure-PyTorch scan (``chunked.py``).
  The forward and the backward are each one scan; autograd stores only ``a``, ``h`` and ``h0``.
* ``"triton"`` — fused Triton kernels (``triton_scan.py``), the CUDA default. On a CPU they run
  under ``TRITON_INTERPRET=1`` (slow; for testing).

The backward is the same recurrence run the other way:
``g_t = dL/dh_t + a_{t+1} g_{t+1}``, ``dL/db_t = g_t``, ``dL/da_t = g_t h_{t-1}``, ``dL/dh0 = a_0 g_0``
(indices in scan order: for ``reverse=True`` read ``t+1`` as ``t-1``).
"""
import os
from typing import Optional, Tuple

import torch

from . import chunked
from .reference import linear_scan_reference

BACKENDS = ("reference", "torch", "triton")
# Callables ``f(a_shape)`` told of every ``linear_scan`` call: the FLOP counter
# (``rv_plugins.utils.flops``) counts the scan's work through this, whatever backend runs it.
SCAN_OBSERVERS = []
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_inputs(a: torch.Tensor, b: torch.Tensor, h0: Optional[torch.Tensor]) -> None:
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
        raise TypeError(f"linear_scan: a and b must be tensors, got {type(a).__name__} and {type(b).__name__}")
    if a.dim() != 3:
        raise ValueError(f"linear_scan: a must have shape (B, L, D), got a.shape={tuple(a.shape)}; "
                         "reshape sequences to (batch, length, channels) first (see rv_plugins.ops.layout)")
    if a.shape != b.shape:
        raise ValueError(f"linear_scan: a and b must have the same shape (B, L, D), got "
                         f"a.shape={tuple(a.shape)} and b.shape={tuple(b.shape)}")
    if a.dtype != b.dtype or a.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"linear_scan: a and b must share one floating dtype (float16, bfloat16, float32, "
                        f"float64), got a.dtype={a.dtype} and b.dtype={b.dtype}; cast one with .to()")
    if a.device != b.device:
        raise ValueError(f"linear_scan: a is on {a.device} but b is on {b.device}; move both to one device")
    if a.shape[1] == 0:
        raise ValueError(f"linear_scan: empty sequence (L=0) in a.shape={tuple(a.shape)}")
    if h0 is not None:
        B, _, D = a.shape
        if not isinstance(h0, torch.Tensor) or tuple(h0.shape) != (B, D):
            shape = tuple(h0.shape) if isinstance(h0, torch.Tensor) else type(h0).__name__
            raise ValueError(f"linear_scan: h0 must have shape (B, D)=({B}, {D}) to match a.shape="
                             f"{tuple(a.shape)}, got h0.shape={shape}")
        if h0.device != a.device or h0.dtype not in _FLOAT_DTYPES:
            raise ValueError(f"linear_scan: h0 must be a floating tensor on {a.device}, got "
                             f"{h0.dtype} on {h0.device}")


def _first(x: torch.Tensor, reverse: bool) -> torch.Tensor:
    """The first step in scan order: (B, L, D) -> (B, D)."""
    return x[:, -1] if reverse else x[:, 0]


def _shift(x: torch.Tensor, fill: Optional[torch.Tensor], reverse: bool, towards_past: bool) -> torch.Tensor:
    """Shift a (B, L, D) sequence by one step in scan order, filling the vacated end.

    ``towards_past=True`` gives ``y_t = x_{t-1}`` (``fill`` at the first step), else ``y_t = x_{t+1}``.
    """
    fill = x.new_zeros(x.shape[0], 1, x.shape[2]) if fill is None else fill.unsqueeze(1).to(x.dtype)
    later_first = towards_past != reverse  # take x[:, :-1] and put the fill in front
    return torch.cat([fill, x[:, :-1]], 1) if later_first else torch.cat([x[:, 1:], fill], 1)


def chunked_backward(a, h, h0, grad_h, reverse) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """Backward of the scan with the chunked forward: one reverse scan plus element-wise products."""
    acc = torch.promote_types(a.dtype, torch.float32)
    a_next = _shift(a.to(acc), None, reverse, towards_past=False)
    g = chunked.scan_chunked(a_next, grad_h.to(acc), None, reverse=not reverse)
    h_prev = _shift(h.to(acc), None if h0 is None else h0.to(acc), reverse, towards_past=True)
    grad_h0 = None if h0 is None else _first(a, reverse).to(acc) * _first(g, reverse)
    return g * h_prev, g, grad_h0


class _Backend:
    """A pair of no-grad kernels: ``forward(a, b, h0, reverse) -> h`` and
    ``backward(a, h, h0, grad_h, reverse) -> (grad_a, grad_b, grad_h0)``."""

    def __init__(self, name, forward, backward):
        self.name, self.forward, self.backward = name, forward, backward


def _chunked_backend() -> _Backend:
    return _Backend("torch[chunked]", chunked.scan_chunked, chunked_backward)


def _resolve(backend: Optional[str], device: torch.device) -> Optional[_Backend]:
    """Map a backend name to kernels (``None`` means the reference loop)."""
    if backend is None:
        backend = "triton" if device.type == "cuda" and _triton_available() else "torch"
    if backend not in BACKENDS:
        raise ValueError(f"linear_scan: unknown backend {backend!r}; choose one of {BACKENDS} or None")
    if backend == "reference":
        return None
    if backend == "triton":
        from . import triton_scan
        triton_scan.check_device(device)
        return _Backend("triton", triton_scan.scan_forward, triton_scan.scan_backward)
    if device.type == "cpu" and os.environ.get("RV_SCAN_DISABLE_CPU_KERNEL", "0") != "1":
        from . import cpu_kernel
        if cpu_kernel.available():
            return _Backend("torch[cpu-kernel]", cpu_kernel.scan_forward, cpu_kernel.scan_backward)
    return _chunked_backend()


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


class _LinearScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, h0, reverse, kernels):
        h = kernels.forward(a, b, h0, reverse).to(a.dtype)
        ctx.save_for_backward(a, h, h0)
        ctx.reverse, ctx.kernels = reverse, kernels
        ctx.h0_dtype = None if h0 is None else h0.dtype
        return h

    @staticmethod
    def backward(ctx, grad_h):
        a, h, h0 = ctx.saved_tensors
        grad_a, grad_b, grad_h0 = ctx.kernels.backward(a, h, h0, grad_h, ctx.reverse)
        grad_h0 = None if grad_h0 is None else grad_h0.to(ctx.h0_dtype)
        return grad_a.to(a.dtype), grad_b.to(a.dtype), grad_h0, None, None


def linear_scan(a: torch.Tensor, b: torch.Tensor, h0: Optional[torch.Tensor] = None,
                reverse: bool = False, backend: Optional[str] = None) -> torch.Tensor:
    """First-order linear recurrence ``h_t = a_t * h_{t-1} + b_t``, element-wise per channel.

    Args:
        a: decay / gate, ``(B, L, D)``.
        b: input, ``(B, L, D)``, same dtype and device as ``a``.
        h0: optional initial state ``(B, D)`` (zeros when ``None``). With ``reverse=True`` it enters
            at the end of the sequence.
        reverse: scan from ``t = L-1`` down to ``0``.
        backend: ``None`` (Triton on CUDA, the compiled/chunked ``"torch"`` path on the CPU),
            ``"reference"``, ``"torch"`` or ``"triton"``.

    Returns:
        ``h`` of shape ``(B, L, D)`` in the inputs' dtype; float16/bfloat16 accumulate in float32.
        Differentiable with respect to ``a``, ``b`` and ``h0`` on every backend.
    """
    _check_inputs(a, b, h0)
    for observer in SCAN_OBSERVERS:
        observer(tuple(a.shape))
    kernels = _resolve(backend, a.device)
    if kernels is None:
        return linear_scan_reference(a, b, h0, reverse)
    return _LinearScanFn.apply(a, b, h0, bool(reverse), kernels)


def backend_name(device="cpu", backend: Optional[str] = None) -> str:
    """The kernels ``linear_scan`` would run for ``device`` and ``backend`` (for logs and benchmarks)."""
    kernels = _resolve(backend, torch.device(device))
    return "reference" if kernels is None else kernels.name
