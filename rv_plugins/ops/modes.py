"""When the ops leave their kernels for plain PyTorch code (a leaf module: imports only torch).

* :func:`is_tracing_or_exporting`: ``torch.jit.trace`` / ``script``, ``torch.onnx.export`` (either
  exporter) and ``torch.export`` record the ATen ops a model runs; a compiled kernel or a memory-saving
  Python loop over data-dependent chunk counts would be recorded as an opaque call or frozen at the traced
  size. Code that has such a path takes its plain one-call path instead when this is true.
* :func:`under_dispatch_mode`: a Python dispatch mode (``FlopCounterMode``, fake tensors) is active; such
  modes see only ATen ops and registered custom ops.
"""
import sys

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

__all__ = ["is_tracing_or_exporting", "is_exporting", "is_exporting_now", "under_dispatch_mode"]


def _in_onnx_export() -> bool:
    # torch.onnx is imported lazily by torch; it cannot be exporting if nobody imported it
    onnx = sys.modules.get("torch.onnx")
    return onnx is not None and onnx.is_in_onnx_export()


def is_tracing_or_exporting() -> bool:
    """Whether the current call is being recorded by a tracer or exporter (not ``torch.compile``)."""
    return torch.jit.is_tracing() or torch.jit.is_scripting() or is_exporting()


def is_exporting() -> bool:
    """An exporter records the model: ``torch.export`` (the ONNX exporter's first strategy) or the legacy ONNX
    exporter (whose TorchScript trace this is). A plain ``torch.jit.trace`` is not exporting."""
    return is_exporting_now() or _in_onnx_export()


def is_exporting_now() -> bool:
    """``torch.export`` (the ONNX exporter's first strategy) is running this code. Unlike
    ``torch.compiler.is_exporting()``, which Dynamo folds to True in every graph it traces (``torch.compile``
    included), this reads the flag export sets, so ``torch.compile`` sees False here."""
    return bool(getattr(torch.compiler, "_is_exporting_flag", False))


def under_dispatch_mode() -> bool:
    """Whether a Python dispatch mode (e.g. ``FlopCounterMode``, ``FakeTensorMode``) is active."""
    return _get_current_dispatch_mode() is not None
