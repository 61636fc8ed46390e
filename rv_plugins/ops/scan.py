"""``linear_scan``: the one recurrence every recurrent layer of rv_plugins runs on.

``h_t = a_t * h_{t-1} + b_t`` element-wise per channel, over ``(B, L, D)`` sequences.

Backends (``backend=``):

* ``"reference"`` — step-by-step loop, autograd records every step (tests only).
* ``"torch"`` — the CPU default: the compiled CPU kernel (``cpu_kernel.py``, built on first use and
  by the set-up) when it is available, else the chunked pure-PyTorch scan (``chunked.py``).
  The forward and the backward are each one scan; autograd stores only ``a``, ``h`` and ``h0``.
* ``"triton"`` — fused Triton kernels (``triton_scan.py``), the CUDA default; a chunked
  time-parallel variant when ``B × D`` is small and ``L`` long. On a CPU they run under
  ``TRITON_INTERPRET=1`` (slow; for testing).

Except for ``"reference"``, ``linear_scan`` is the ``torch.library`` custom op
``torch.ops.rv_plugins.linear_scan(a, b, h0, reverse, backend)`` with a fake (meta) implementation
and registered autograd (``rv_plugins::linear_scan_backward`` for the backward): ``torch.compile``
traces it as one node, without graph breaks, and ``FlopCounterMode`` sees it (``rv_plugins.utils.flops``).
The kernels (compiled CPU kernel or chunked fallback) are picked inside the op.

The backward is the same recurrence run the other way:
``g_t = dL/dh_t + a_{t+1} g_{t+1}``, ``dL/db_t = g_t``, ``dL/da_t = g_t h_{t-1}``, ``dL/dh0 = a_0 g_0``
(indices in scan order: for ``reverse=True`` read ``t+1`` as ``t-1``). Under ``create_graph=True``
(double backward, e.g. the C-RBP Lipschitz penalty) the backward is written with differentiable ops
(this scan op, shifts, products), so second derivatives are exact on every backend.
"""
import importlib.util
import os
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from . import chunked
from .modes import is_tracing_or_exporting
from .reference import linear_scan_reference

BACKENDS = ("reference", "torch", "triton")
# Deprecated and no longer called: the FLOP counter now counts the ``rv_plugins::linear_scan`` and
# ``rv_plugins::mingru_scan`` ops themselves (``rv_plugins.utils.flops``). Kept so old imports work.
SCAN_OBSERVERS = []
_HAS_TRITON = importlib.util.find_spec("triton") is not None
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_inputs(a: torch.Tensor, b: torch.Tensor, h0: Optional[torch.Tensor], reverse=False) -> None:
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
    if not isinstance(reverse, bool):
        raise TypeError(f"linear_scan: reverse must be a bool, got {reverse!r} ({type(reverse).__name__}); "
                        "pass reverse=True or reverse=False")
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


def _public_backend(backend: Optional[str], device: torch.device) -> str:
    """The backend the ops run for ``backend`` on ``device``: ``"reference"``, ``"torch"`` or ``"triton"``
    (``None``: Triton on CUDA when installed, else ``"torch"``); raises on an unknown name. This is the
    ``backend`` argument of ``torch.ops.rv_plugins.*``: the kernels are picked inside the op, so
    ``torch.compile`` sees one opaque call and no Python branching on the environment."""
    if backend is None:
        return "triton" if device.type == "cuda" and _HAS_TRITON else "torch"
    if backend not in BACKENDS:
        raise ValueError(f"linear_scan: unknown backend {backend!r}; choose one of {BACKENDS} or None")
    return backend


resolve_backend = _public_backend  # the public name (``rv_plugins.ops.resolve_backend``)


def kernel_name(backend: Optional[str], device: torch.device) -> str:
    """The kernels a backend name means on ``device``: ``"reference"``, ``"cpu-kernel"``, ``"chunked"``
    or ``"triton"`` (``backend=None``: Triton on CUDA when installed, else ``"torch"``)."""
    backend = _public_backend(backend, device)
    if backend != "torch":
        return backend
    if device.type == "cpu" and os.environ.get("RV_SCAN_DISABLE_CPU_KERNEL", "0") != "1":
        from . import cpu_kernel
        if cpu_kernel.available():
            return "cpu-kernel"
    return "chunked"


# ----------------------------------------------------------------------------- kernels (no autograd)
def _chunked_backward(a, h, h0, grad_h, reverse) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """Backward with the chunked scan: one scan of ``(a_next, grad_h)`` the other way plus products."""
    acc = torch.promote_types(a.dtype, torch.float32)
    a_next = _shift(a.to(acc), None, reverse, towards_past=False)
    g = chunked.scan_chunked(a_next, grad_h.to(acc), None, reverse=not reverse)
    h_prev = _shift(h.to(acc), None if h0 is None else h0.to(acc), reverse, towards_past=True)
    grad_h0 = None if h0 is None else _first(a, reverse).to(acc) * _first(g, reverse)
    return g * h_prev, g, grad_h0


def _kernels(name: str, device: torch.device):
    """``(forward(a, b, h0, reverse) -> h, backward(a, h, h0, grad_h, reverse) -> (ga, gb, gh0))``."""
    if name == "triton":
        from . import triton_scan
        triton_scan.check_device(device)
        return triton_scan.scan_forward, triton_scan.scan_backward
    if name == "cpu-kernel":
        from . import cpu_kernel
        return cpu_kernel.scan_forward, cpu_kernel.scan_backward
    return chunked.scan_chunked, _chunked_backward


# ----------------------------------------------------------------------------- torch.library ops
@torch.library.custom_op("rv_plugins::linear_scan", mutates_args=())
def _linear_scan_op(a: Tensor, b: Tensor, h0: Optional[Tensor], reverse: bool, backend: str) -> Tensor:
    """``h`` (B, L, D), contiguous, in ``a``'s dtype; ``backend`` is ``"torch"`` or ``"triton"``."""
    forward, _ = _kernels(kernel_name(backend, a.device), a.device)
    return forward(a, b, h0, reverse).to(a.dtype).contiguous()


@_linear_scan_op.register_fake
def _(a, b, h0, reverse, backend):
    return torch.empty(a.shape, dtype=a.dtype, device=a.device)


@torch.library.custom_op("rv_plugins::linear_scan_backward", mutates_args=())
def _linear_scan_backward_op(a: Tensor, h: Tensor, h0: Optional[Tensor], grad_h: Tensor, reverse: bool,
                             backend: str) -> List[Tensor]:
    """``[grad_a, grad_b, grad_h0]`` (``grad_h0`` is an empty tensor when ``h0`` is None)."""
    _, backward = _kernels(kernel_name(backend, a.device), a.device)
    grad_a, grad_b, grad_h0 = backward(a, h, h0, grad_h, reverse)
    grad_h0 = a.new_empty(0) if grad_h0 is None else grad_h0.to(h0.dtype).contiguous()
    return [grad_a.to(a.dtype).contiguous(), grad_b.to(a.dtype).contiguous(), grad_h0]


@_linear_scan_backward_op.register_fake
def _(a, h, h0, grad_h, reverse, backend):
    empty = lambda: torch.empty(a.shape, dtype=a.dtype, device=a.device)  # noqa: E731
    grad_h0 = a.new_empty(0) if h0 is None else torch.empty(h0.shape, dtype=h0.dtype, device=h0.device)
    return [empty(), empty(), grad_h0]


def _differentiable_backward(a, h, h0, grad_h, reverse, backend):
    """The backward written with differentiable ops (the scan op itself, shifts and products), used
    when the graph of the backward is wanted (``create_graph=True``): double backward is exact."""
    a_next = _shift(a, None, reverse, towards_past=False)
    g = torch.ops.rv_plugins.linear_scan(a_next, grad_h.to(a.dtype), None, not reverse, backend)
    h_prev = _shift(h, h0, reverse, towards_past=True)
    grad_h0 = None if h0 is None else (_first(a, reverse) * _first(g, reverse)).to(h0.dtype)
    return g * h_prev, g, grad_h0


def _needs_graph(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _linear_scan_setup(ctx, inputs, output):
    a, b, h0, reverse, backend = inputs
    ctx.save_for_backward(a, output, h0)
    ctx.reverse, ctx.backend = reverse, backend


def _linear_scan_backward(ctx, grad_h):
    a, h, h0 = ctx.saved_tensors
    if _needs_graph(a, h, h0, grad_h):
        grad_a, grad_b, grad_h0 = _differentiable_backward(a, h, h0, grad_h, ctx.reverse, ctx.backend)
    else:
        grad_a, grad_b, grad_h0 = torch.ops.rv_plugins.linear_scan_backward(a, h, h0, grad_h.contiguous(),
                                                                            ctx.reverse, ctx.backend)
        grad_h0 = None if h0 is None else grad_h0
    return grad_a, grad_b, grad_h0, None, None


_linear_scan_op.register_autograd(_linear_scan_backward, setup_context=_linear_scan_setup)


def linear_scan(a: torch.Tensor, b: torch.Tensor, h0: Optional[torch.Tensor] = None,
                reverse: bool = False, backend: Optional[str] = None) -> torch.Tensor:
    """First-order linear recurrence ``h_t = a_t * h_{t-1} + b_t``, element-wise per channel.

    Args:
        a: decay / gate, ``(B, L, D)``.
        b: input, ``(B, L, D)``, same dtype and device as ``a``.
        h0: optional initial state ``(B, D)`` (zeros when ``None``). With ``reverse=True`` it enters
            at the end of the sequence.
        reverse: scan from ``t = L-1`` down to ``0`` (a bool).
        backend: ``None`` (Triton on CUDA, the compiled/chunked ``"torch"`` path on the CPU),
            ``"reference"``, ``"torch"`` or ``"triton"``.

    Returns:
        ``h`` of shape ``(B, L, D)`` in the inputs' dtype; float16/bfloat16 accumulate in float32.
        Differentiable with respect to ``a``, ``b`` and ``h0`` on every backend, twice as well
        (``create_graph=True`` runs a backward made of differentiable ops). Except for ``"reference"``
        this is the ``torch.ops.rv_plugins.linear_scan`` custom op (``torch.compile`` keeps it whole).
    """
    _check_inputs(a, b, h0, reverse)
    backend = _public_backend(backend, a.device)
    if backend == "reference":
        return linear_scan_reference(a, b, h0, reverse)
    if is_tracing_or_exporting():  # a tracer records plain ops: the export-friendly composite
        from .parallel import linear_scan_parallel
        return linear_scan_parallel(a, b, h0, reverse)
    return torch.ops.rv_plugins.linear_scan(a, b, h0, reverse, backend)


def backend_name(device="cpu", backend: Optional[str] = None) -> str:
    """The kernels ``linear_scan`` would run for ``device`` and ``backend`` (for logs and benchmarks)."""
    name = kernel_name(backend, torch.device(device))
    return name if name in ("reference", "triton") else f"torch[{name}]"
