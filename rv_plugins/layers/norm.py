"""A LayerNorm whose output keeps the compute dtype under autocast.

CUDA autocast runs ``layer_norm`` in float32 (it is on autocast's float32 list): a LayerNorm in a bf16
autocast region returns float32, and a residual stream that adds it, or adds a float32 parameter, stays
float32 for the whole network — twice the memory traffic of every elementwise op, and float32 maps held
where bf16 ones would do. :class:`LayerNorm` instead normalises the input cast to the autocast dtype,
with its affine parameters cast alike (CUDA's kernel wants them in the input's dtype); the kernels
accumulate the statistics in float32 for half-precision inputs on every device, so only the output is
rounded. Outside autocast it is ``nn.LayerNorm`` (a bf16 model normalises in bf16 with float32
statistics already). Parameters, names and state-dict keys are ``nn.LayerNorm``'s.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LayerNorm", "autocast_dtype"]

# Device types with an autocast (a plain tuple: torch.compile traces the membership test, not the C query).
_AUTOCAST_DEVICE_TYPES = ("cpu", "cuda", "xpu", "mps", "hpu")


def autocast_dtype(device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype in force for ``device``'s type, or ``None`` when autocast is off there (or the
    device type has no autocast, e.g. ``meta``)."""
    if device.type not in _AUTOCAST_DEVICE_TYPES or not torch.is_autocast_enabled(device.type):
        return None
    return torch.get_autocast_dtype(device.type)


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` over the last dims, ``(..., *normalized_shape)`` -> same shape; under autocast the
    output has the autocast dtype (statistics in float32), see the module docstring."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = autocast_dtype(x.device)
        if dtype is None or not x.is_floating_point():
            return super().forward(x)
        with torch.autocast(x.device.type, enabled=False):
            weight = None if self.weight is None else self.weight.to(dtype)
            bias = None if self.bias is None else self.bias.to(dtype)
            return F.layer_norm(x.to(dtype), self.normalized_shape, weight, bias, self.eps)
