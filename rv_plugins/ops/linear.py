"""Linear layers for inference on the CPU through oneDNN, with the activation fused.

``linear(x, weight, bias, activation)`` is ``F.linear`` (then ``F.gelu`` for ``activation='gelu'`` /
``'gelu_tanh'``). Without autograd, on the CPU, in float32 or bfloat16, it runs oneDNN's matmul
(``torch.ops.mkldnn._linear_pointwise``, the kernel torch.compile's CPU backend uses for frozen linear
layers) with the GELU as a post-op of the GEMM, instead of ATen's MKL ``sgemm`` plus a separate GELU
pass. On the AMD EPYC CPUs we measured (1 thread, float32) that GEMM is 5-40% faster at our backbones'
shapes (``(784, 288) @ (288, 2304)``: 13.6 -> 9.6 ms); results equal ``F.linear`` to float rounding.

Everything else takes ``F.linear``: autograd (the oneDNN op has no backward), other devices and
dtypes, CPU autocast (whose dtype policy ``F.linear`` follows), ``torch.compile`` tracing (inductor
picks its own kernels), TorchScript tracing, and any active Python dispatch mode (``FlopCounterMode``,
fake tensors: they see the ATen ops they know). ``RV_CPU_LINEAR=aten`` (read at import) or
``set_cpu_linear('aten')`` turns the oneDNN path off; ``cpu_linear()`` says which path is chosen.
"""
import functools
import os
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import has_torch_function
from torch.utils._python_dispatch import _get_current_dispatch_mode

__all__ = ["linear", "linear_module", "has_forward_hooks", "set_cpu_linear", "cpu_linear", "onednn_available",
           "ACTIVATIONS"]

# activation name -> (oneDNN post-op, its algorithm, the eager equivalent)
ACTIVATIONS = {
    None: ("none", "", lambda y: y),
    "gelu": ("gelu", "none", lambda y: F.gelu(y)),
    "gelu_tanh": ("gelu", "tanh", lambda y: F.gelu(y, approximate="tanh")),
}
_CPU_LINEAR_CHOICES = ("onednn", "aten")


@functools.lru_cache(maxsize=None)
def onednn_available() -> bool:
    """Whether this torch build has oneDNN and its fused linear op (asked once per process)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _initial_choice() -> str:
    choice = os.environ.get("RV_CPU_LINEAR", "onednn").strip().lower()
    if choice not in _CPU_LINEAR_CHOICES:
        raise ValueError(f"RV_CPU_LINEAR={choice!r}: choose one of {_CPU_LINEAR_CHOICES} "
                         "(or unset it for the default, 'onednn')")
    return choice


_choice = _initial_choice()


def set_cpu_linear(choice: str) -> None:
    """Choose the CPU inference GEMM of :func:`linear`: ``'onednn'`` (the default) or ``'aten'`` (``F.linear``)."""
    global _choice
    if choice not in _CPU_LINEAR_CHOICES:
        raise ValueError(f"set_cpu_linear: choice must be one of {_CPU_LINEAR_CHOICES}, got {choice!r}")
    _choice = choice


def cpu_linear() -> str:
    """The CPU inference GEMM :func:`linear` uses now: ``'onednn'`` or ``'aten'`` (chosen, or no oneDNN)."""
    return "onednn" if _choice == "onednn" and onednn_available() else "aten"


def _plain_cpu(t: torch.Tensor, dtype: torch.dtype) -> bool:
    return t.device.type == "cpu" and t.layout == torch.strided and t.dtype == dtype


def _takes_onednn(x, weight, bias) -> bool:
    """Whether oneDNN gives exactly ``F.linear``'s answer: the shapes ``F.linear`` takes without broadcasting
    (``weight`` ``(out, in)``, ``x`` ``(..., in)``, ``bias`` ``None`` or ``(out,)`` with unit stride: oneDNN
    reads the bias as dense and would misread a 0-d, ``(1, out)``, expanded or strided one), plain dense CPU
    tensors of one float32/bfloat16 dtype, no autograd, autocast, tracing or dispatch mode. Every other call
    takes ``F.linear``, so it gets ``F.linear``'s answer or ``F.linear``'s error."""
    if not (isinstance(x, torch.Tensor) and isinstance(weight, torch.Tensor)
            and (bias is None or isinstance(bias, torch.Tensor))):
        return False
    return (_choice == "onednn" and not torch.is_grad_enabled()
            and x.dtype in (torch.float32, torch.bfloat16) and _plain_cpu(x, x.dtype)
            and _plain_cpu(weight, x.dtype) and weight.dim() == 2
            and x.dim() >= 1 and x.shape[-1] == weight.shape[1] and x.numel() > 0 and weight.numel() > 0
            and (bias is None or (_plain_cpu(bias, x.dtype) and bias.shape == weight.shape[:1]
                                  and bias.stride() == (1,)))
            and not has_torch_function((x, weight) if bias is None else (x, weight, bias))
            and not torch.is_autocast_enabled("cpu")
            and not torch.compiler.is_compiling() and not torch.jit.is_tracing() and not torch.jit.is_scripting()
            and _get_current_dispatch_mode() is None
            and onednn_available())


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
           activation: Optional[str] = None) -> torch.Tensor:
    """``act(F.linear(x, weight, bias))``: ``x`` ``(..., in)``, ``weight`` ``(out, in)``, ``bias`` ``(out,)``
    -> ``(..., out)``. ``activation``: ``None``, ``'gelu'`` (exact, erf) or ``'gelu_tanh'``. CPU inference
    runs oneDNN with the activation fused (see the module docstring); the rest is ``F.linear``."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"linear: activation must be one of {list(ACTIVATIONS)}, got {activation!r}")
    post_op, algorithm, eager = ACTIVATIONS[activation]
    if not _takes_onednn(x, weight, bias):
        return eager(F.linear(x, weight, bias))
    y = _onednn_linear(x.reshape(-1, x.shape[-1]), weight, bias, post_op, algorithm)
    return y.view(*x.shape[:-1], weight.shape[0])


def _onednn_linear(x2d: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], post_op: str,
                   algorithm: str) -> torch.Tensor:
    """oneDNN's ``post_op(x2d @ weight.T + bias)``: ``(M, in)`` -> ``(M, out)``."""
    return torch.ops.mkldnn._linear_pointwise(x2d, weight, bias, post_op, [], algorithm)


def has_forward_hooks(module: nn.Module) -> bool:
    """Whether calling ``module`` would run forward (pre-)hooks: its own or global ones."""
    return bool(module._forward_hooks or module._forward_pre_hooks
                or nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks)


def linear_module(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` for an ``nn.Linear`` (or anything else), through :func:`linear` when ``module`` is a plain
    ``nn.Linear`` without forward hooks (a module with hooks, or a subclass, is called as a module)."""
    if type(module) is nn.Linear and not has_forward_hooks(module):
        return linear(x, module.weight, module.bias)
    return module(x)
