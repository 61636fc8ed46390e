"""``linear_scan``: the one recurrence every recurrent layer of rv_plugins runs on.

``h_t = a_t * h_{t-1} + b_t`` element-wise per channel, over ``(B, L, D)`` sequences.

Backends are the entries of :mod:`rv_plugins.ops.registry` (``backend=`` takes a name): ``"reference"``
(the step loop, autograd records every step; tests), ``"cpu-kernel"`` (the compiled CPU kernel),
``"chunked"`` (a vectorised pure-PyTorch scan), ``"triton"`` (the CUDA default) and anything registered;
``"torch"`` means the compiled CPU kernel where it builds, else the chunked scan, and ``None`` the
device's default (Triton on CUDA when installed, else ``"torch"``).

How a call runs:

* eagerly, a ``torch.autograd.Function`` calls the backend's kernels directly: a first call imports
  no compiler stack (``torch._dynamo``, sympy, inductor);
* under ``torch.compile`` and under Python dispatch modes (``FlopCounterMode``, fake tensors) the same
  kernels run inside the ``torch.library`` custom op ``torch.ops.rv_plugins.linear_scan(a, b, h0,
  reverse, backend)`` (a fake implementation, registered autograd, ``rv_plugins::linear_scan_backward``
  for the backward): the compiler traces one node without graph breaks and counters see the op;
* a TorchScript trace (``torch.jit.trace``, and so the toolkits' FLOP counters) records the custom op: the
  traced module runs at any size on the same kernels (it needs ``rv_plugins.ops`` imported to load);
* while an exporter records the model (``torch.export``, ``torch.onnx.export`` either way:
  :func:`rv_plugins.ops.modes.is_exporting`), the registry's export backend (plain PyTorch ops) runs.

The backward is the same recurrence run the other way (:mod:`rv_plugins.ops.adjoint`). Under
``create_graph=True`` (double backward, e.g. the C-RBP Lipschitz penalty) it is written with
differentiable ops (this op, shifts and products), so second derivatives are exact on every backend.
"""
from typing import List, Optional

import torch
from torch import Tensor

from . import registry
from .adjoint import accumulation_dtype, linear_scan_adjoint
from .checks import check_linear_scan_inputs
from .modes import is_exporting, is_exporting_now, under_dispatch_mode

__all__ = ["linear_scan", "linear_scan_kernels_forward", "BACKENDS", "resolve_backend", "backend_name", "route"]

BACKENDS = ("reference", "torch", "triton")  # the built-in public names (registry.backend_names(): all)
DEFAULT = "default"  # the op's backend argument for backend=None, resolved inside the op


def resolve_backend(backend: Optional[str], device: torch.device) -> str:
    """The public name the ops run for ``backend`` on ``device`` (``None``: the device's default);
    raises on an unknown name."""
    if backend is None:
        return registry.default_backend(device)
    if backend != registry.TORCH_ALIAS:
        registry.get_backend(backend)  # raises on an unknown name
    return backend


def backend_name(device="cpu", backend: Optional[str] = None) -> str:
    """The kernels ``linear_scan`` would run for ``device`` and ``backend`` (for logs and benchmarks):
    ``"torch[cpu-kernel]"`` / ``"torch[chunked]"`` for the ``"torch"`` alias, else the backend's name."""
    device = torch.device(device)
    public = resolve_backend(backend, device)
    name = registry.resolve(public, device).name
    return f"torch[{name}]" if public == registry.TORCH_ALIAS else name


def route(backend: Optional[str]) -> str:
    """How a call with ``backend`` runs now: ``"export"`` (the export backend's PyTorch ops), ``"composite"``
    (a composite backend's ops), ``"op"`` (the custom op) or ``"function"`` (kernels under an autograd.Function)."""
    if torch.compiler.is_compiling():       # Dynamo's graphs (torch.compile), and torch.export
        if is_exporting_now():
            return "export"
        return "composite" if backend is not None and registry.is_composite(backend) else "op"
    if is_exporting():
        return "export"
    if backend is not None and registry.is_composite(backend):
        return "composite"
    # a TorchScript trace records the custom op (it runs at any size, on the fast kernels, and the
    # toolkits' tracing FLOP counters see it); dispatch modes see it as one op too
    return "op" if torch.jit.is_tracing() or under_dispatch_mode() else "function"


def _kernels(backend: str, device: torch.device):
    chosen = registry.resolve(None if backend == DEFAULT else backend, device)
    chosen.check_device(device)
    return chosen.load()


def linear_scan_kernels_forward(a: Tensor, b: Tensor, h0: Optional[Tensor], reverse: bool, backend: str) -> Tensor:
    """The forward kernels of ``backend`` (a public name or ``"default"``), no autograd: ``h`` contiguous in ``a``'s dtype."""
    h0 = None if h0 is None else h0.to(accumulation_dtype(a.dtype))
    return _kernels(backend, a.device).scan_forward(a, b, h0, reverse).to(a.dtype).contiguous()


def _kernels_backward(a, h, h0, grad_h, reverse, backend):
    """``(grad_a, grad_b, grad_h0 or None)`` from ``backend``'s kernels, in the inputs' dtypes."""
    h0_acc = None if h0 is None else h0.to(accumulation_dtype(a.dtype))
    grad_a, grad_b, grad_h0 = _kernels(backend, a.device).scan_backward(a, h, h0_acc, grad_h.contiguous(), reverse)
    grad_h0 = None if h0 is None else grad_h0.to(h0.dtype).contiguous()
    return grad_a.to(a.dtype).contiguous(), grad_b.to(a.dtype).contiguous(), grad_h0


def _needs_graph(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _backward(a, h, h0, grad_h, reverse, backend, run_op: bool):
    """The gradients for the autograd of either route; differentiable ops under ``create_graph=True``."""
    if _needs_graph(a, h, h0, grad_h):
        scan = lambda a_, b_, h0_, rev: linear_scan(a_, b_.to(a_.dtype), h0_, rev,  # noqa: E731
                                                    None if backend == DEFAULT else backend)
        grad_a, grad_b, grad_h0 = linear_scan_adjoint(scan, a, h, h0, grad_h, reverse)
        return grad_a.to(a.dtype), grad_b.to(a.dtype), None if h0 is None else grad_h0.to(h0.dtype)
    if run_op:
        grad_a, grad_b, grad_h0 = torch.ops.rv_plugins.linear_scan_backward(a, h, h0, grad_h.contiguous(), reverse, backend)
        return grad_a, grad_b, None if h0 is None else grad_h0
    return _kernels_backward(a, h, h0, grad_h, reverse, backend)


class _LinearScanFunction(torch.autograd.Function):
    """The eager route: the kernels under autograd, without the custom-op machinery."""

    @staticmethod
    def forward(ctx, a, b, h0, reverse, backend):
        h = linear_scan_kernels_forward(a, b, h0, reverse, backend)
        ctx.save_for_backward(a, h, h0)
        ctx.reverse, ctx.backend = reverse, backend
        return h

    @staticmethod
    def backward(ctx, grad_h):
        a, h, h0 = ctx.saved_tensors
        return (*_backward(a, h, h0, grad_h, ctx.reverse, ctx.backend, run_op=False), None, None)


# ----------------------------------------------------------------------------- torch.library ops
@torch.library.custom_op("rv_plugins::linear_scan", mutates_args=())
def _linear_scan_op(a: Tensor, b: Tensor, h0: Optional[Tensor], reverse: bool, backend: str) -> Tensor:
    """``h`` (B, L, D), contiguous, in ``a``'s dtype; ``backend``: a public name or ``"default"``."""
    return linear_scan_kernels_forward(a, b, h0, reverse, backend)


@_linear_scan_op.register_fake
def _(a, b, h0, reverse, backend):
    return torch.empty(a.shape, dtype=a.dtype, device=a.device)


@torch.library.custom_op("rv_plugins::linear_scan_backward", mutates_args=())
def _linear_scan_backward_op(a: Tensor, h: Tensor, h0: Optional[Tensor], grad_h: Tensor, reverse: bool,
                             backend: str) -> List[Tensor]:
    """``[grad_a, grad_b, grad_h0]`` (``grad_h0`` is an empty tensor when ``h0`` is None)."""
    grad_a, grad_b, grad_h0 = _kernels_backward(a, h, h0, grad_h, reverse, backend)
    return [grad_a, grad_b, a.new_empty(0) if grad_h0 is None else grad_h0]


@_linear_scan_backward_op.register_fake
def _(a, h, h0, grad_h, reverse, backend):
    empty = lambda: torch.empty(a.shape, dtype=a.dtype, device=a.device)  # noqa: E731
    grad_h0 = a.new_empty(0) if h0 is None else torch.empty(h0.shape, dtype=h0.dtype, device=h0.device)
    return [empty(), empty(), grad_h0]


def _setup_context(ctx, inputs, output):
    a, b, h0, reverse, backend = inputs
    ctx.save_for_backward(a, output, h0)
    ctx.reverse, ctx.backend = reverse, backend


def _op_backward(ctx, grad_h):
    a, h, h0 = ctx.saved_tensors
    return (*_backward(a, h, h0, grad_h, ctx.reverse, ctx.backend, run_op=True), None, None)


_linear_scan_op.register_autograd(_op_backward, setup_context=_setup_context)


def linear_scan(a: torch.Tensor, b: torch.Tensor, h0: Optional[torch.Tensor] = None,
                reverse: bool = False, backend: Optional[str] = None) -> torch.Tensor:
    """First-order linear recurrence ``h_t = a_t * h_{t-1} + b_t``, element-wise per channel.

    Args:
        a: decay / gate, ``(B, L, D)``.
        b: input, ``(B, L, D)``, same dtype and device as ``a``.
        h0: optional initial state ``(B, D)`` (zeros when ``None``), any floating dtype: it is taken in the
            accumulation dtype (float32 for half inputs). With ``reverse=True`` it enters at the end.
        reverse: scan from ``t = L-1`` down to ``0`` (a bool).
        backend: ``None`` (the device's default), ``"torch"``, or a registered name (``"reference"``,
            ``"cpu-kernel"``, ``"chunked"``, ``"triton"``, ...: ``rv_plugins.ops.registry.backend_names()``).

    Returns:
        ``h`` of shape ``(B, L, D)`` in the inputs' dtype; float16/bfloat16 accumulate in float32.
        Differentiable with respect to ``a``, ``b`` and ``h0`` on every backend, twice as well.
    """
    check_linear_scan_inputs(a, b, h0, reverse)
    how = route(backend)
    if how == "export":
        return registry.export_backend().load().linear_scan(a, b, h0, reverse)
    if how == "composite":
        return registry.get_backend(backend).load().linear_scan(a, b, h0, reverse)
    if how == "op":
        return torch.ops.rv_plugins.linear_scan(a, b, h0, reverse, DEFAULT if backend is None else backend)
    if backend is not None:
        resolve_backend(backend, a.device)  # an unknown name fails here, before autograd
    return _LinearScanFunction.apply(a, b, h0, reverse, DEFAULT if backend is None else backend)
