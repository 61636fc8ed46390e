"""The table of scan backends: one entry per set of kernels, looked up by name.

Every recurrent op of the package (``linear_scan``, ``mingru_scan`` and their ``torch.ops.rv_plugins``
custom ops) runs the kernels of the backend it is given by name; adding a backend is one file that
defines its kernels and calls :func:`register_backend`. The op tests are parametrised over this table
(``tests/test_ops_backends.py``), so a registered backend is tested by being registered.

A backend's kernels (a module, imported on first use, or any object with these attributes), all called
without autograd (the ops own the autograd)::

    scan_forward(a, b, h0, reverse) -> h                          a, b: (B, L, D); h0: (B, D) or None
    scan_backward(a, h, h0, grad_h, reverse) -> (grad_a, grad_b, grad_h0 or None)
    mingru_forward(proj, h0, reverse, bidirectional, candidate_act) -> h          (optional)
    mingru_backward(proj, h, h0, grad_h, reverse, bidirectional, candidate_act)
        -> (grad_proj, grad_h0 or None)                                           (optional)
    check_device(device)                       raise a clear error if it cannot run there (optional)

``h0`` arrives in the accumulation dtype (float32 for float16/bfloat16 data, else the data dtype);
outputs may be in the data or the accumulation dtype (the ops cast). Without the minGRU pair the op
composes it: gates as PyTorch ops in float32 plus this backend's scan (``rv_plugins.ops.gates``).

A *composite* backend is differentiable PyTorch code (``linear_scan(a, b, h0, reverse)`` and
``mingru_scan(proj, h0, reverse, bidirectional, candidate_act)``) that the public functions call directly,
outside the custom ops, so autograd, tracers and exporters record its ATen ops (``"reference"``, and
the backend taken while tracing or exporting: :func:`export_backend`).
"""
import importlib
import importlib.util
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch

__all__ = ["Backend", "register_backend", "get_backend", "backend_names", "resolve", "default_backend",
           "set_export_backend", "export_backend", "is_composite", "TORCH_ALIAS"]

TORCH_ALIAS = "torch"  # the CPU default by its historical name: the compiled CPU kernel, else the chunked scan


@dataclass
class Backend:
    """One registered backend (see the module docstring). ``kernels`` is a module path or an object."""

    name: str
    kernels: Union[str, Any]
    devices: Tuple[str, ...] = ()
    priority: int = 0
    available: Union[None, bool, Callable[[], bool]] = None
    composite: bool = False
    _loaded: Any = field(default=None, repr=False)

    def load(self):
        """The kernels object (imports the module on first use)."""
        if self._loaded is None:
            self._loaded = importlib.import_module(self.kernels) if isinstance(self.kernels, str) else self.kernels
        return self._loaded

    def is_available(self) -> bool:
        if self.available is None or isinstance(self.available, bool):
            return self.available is not False
        return bool(self.available())

    def check_device(self, device: torch.device) -> None:
        """Raise a clear error when this backend cannot run on ``device``."""
        check = getattr(self.load(), "check_device", None)
        if check is not None:
            check(device)
        elif self.devices and device.type not in self.devices:
            raise RuntimeError(f"scan backend {self.name!r} runs on {'/'.join(self.devices)} tensors, got tensors on "
                               f"{device}; pass backend=None for the device's default")

    def has_mingru_kernels(self) -> bool:
        kernels = self.load()
        return hasattr(kernels, "mingru_forward") and hasattr(kernels, "mingru_backward")


_BACKENDS: Dict[str, Backend] = {}
_COMPOSITE = set()  # names of the composite backends
_TORCH_ALIAS_MEMBERS = ("cpu-kernel", "chunked")
_EXPORT_BACKEND = ["reference"]


def register_backend(name: str, kernels: Union[str, Any], devices: Tuple[str, ...] = (), priority: int = 0,
                     available: Union[None, bool, Callable[[], bool]] = None, composite: bool = False,
                     replace: bool = False) -> Backend:
    """Add a backend to the table (see the module docstring for what ``kernels`` provides).

    ``devices``: device types on which ``backend=None`` may choose it (the available backend of highest
    ``priority`` wins); other devices can still ask for it by name. ``available``: a bool, or ``() -> bool``
    asked before choosing or running it (e.g. "the compiler could build it"). ``replace=True`` overwrites a
    backend of that name (otherwise a second registration is an error).
    """
    if not isinstance(name, str) or not name or name == TORCH_ALIAS:
        raise ValueError(f"register_backend: name must be a non-empty string other than {TORCH_ALIAS!r} (an alias), "
                         f"got {name!r}")
    if name in _BACKENDS and not replace:
        raise ValueError(f"register_backend: a backend named {name!r} is registered already; pass replace=True "
                         "to overwrite it")
    backend = Backend(name, kernels, tuple(devices), int(priority), available, bool(composite))
    _BACKENDS[name] = backend
    _COMPOSITE.discard(name)
    if backend.composite:
        _COMPOSITE.add(name)
    return backend


def backend_names() -> List[str]:
    """Every registered backend name, plus the ``"torch"`` alias."""
    return [TORCH_ALIAS] + list(_BACKENDS)


def get_backend(name: str) -> Backend:
    """The registered backend ``name`` (not the ``"torch"`` alias: see :func:`resolve`)."""
    try:
        return _BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown backend {name!r} for the scan ops; choose one of {backend_names()} or None "
                         "(the device's default)") from None


def is_composite(name: str) -> bool:
    """Whether ``name`` is a registered composite backend (cheap: ``torch.compile`` traces it)."""
    return name in _COMPOSITE


def default_backend(device: torch.device) -> str:
    """The name ``backend=None`` means on ``device``: the available backend of highest priority listing
    ``device.type``, else the ``"torch"`` alias."""
    best = None
    for b in _BACKENDS.values():
        if device.type in b.devices and not b.composite and (best is None or b.priority > best.priority):
            # the alias's members are not asked (the alias resolves inside the op; asking would build the
            # CPU kernel here, and torch.compile traces this function)
            if b.name in _TORCH_ALIAS_MEMBERS or b.is_available():
                best = b
    return TORCH_ALIAS if best is None or best.name in _TORCH_ALIAS_MEMBERS else best.name


def resolve(name: Optional[str], device: torch.device) -> Backend:
    """The backend whose kernels run for the public name ``name`` on ``device`` (``None``: the default;
    ``"torch"``: the compiled CPU kernel on the CPU when it builds, else the chunked PyTorch scan)."""
    if name is None:
        name = default_backend(device)
    if name == TORCH_ALIAS:
        cpu = _BACKENDS.get("cpu-kernel")
        if device.type == "cpu" and cpu is not None and cpu.is_available():
            return cpu
        return get_backend("chunked")
    backend = get_backend(name)
    if not backend.is_available():
        raise RuntimeError(f"scan backend {name!r} is not available here; pass backend=None for the device's default")
    return backend


def set_export_backend(name: str) -> None:
    """The composite backend the public ops take while a model is traced or exported
    (:func:`rv_plugins.ops.modes.is_exporting`); ``"parallel"`` (:mod:`rv_plugins.ops.parallel`:
    vectorised steps per level, fast in onnxruntime, right at every traced size) unless another is set."""
    if not get_backend(name).composite:
        raise ValueError(f"set_export_backend: {name!r} is not a composite backend (differentiable PyTorch code)")
    _EXPORT_BACKEND[0] = name


def export_backend() -> Backend:
    """The composite backend taken while tracing or exporting (see :func:`set_export_backend`)."""
    return get_backend(_EXPORT_BACKEND[0])


# ----------------------------------------------------------------------------- the built-in backends
def _cpu_kernel_available() -> bool:
    if os.environ.get("RV_SCAN_DISABLE_CPU_KERNEL", "0") == "1":
        return False
    from . import cpu_kernel
    return cpu_kernel.available()


register_backend("reference", "rv_plugins.ops.reference", composite=True)
register_backend("parallel", "rv_plugins.ops.parallel", composite=True)  # export-friendly: ops/parallel.py
set_export_backend("parallel")
register_backend("chunked", "rv_plugins.ops.chunked", devices=("cpu", "cuda"), priority=0)
register_backend("cpu-kernel", "rv_plugins.ops.cpu_kernel", devices=("cpu",), priority=10,
                 available=_cpu_kernel_available)
register_backend("triton", "rv_plugins.ops.triton_kernels", devices=("cuda",), priority=10,
                 available=importlib.util.find_spec("triton") is not None)
