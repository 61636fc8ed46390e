"""The channel MLP of every backbone block."""
import torch
from torch import nn

from rv_plugins.ops.linear import has_forward_hooks, linear

_FUSED_GELU = {"none": "gelu", "tanh": "gelu_tanh"}  # nn.GELU(approximate=...) -> rv_plugins.ops.linear activation


class Mlp(nn.Module):
    """``(..., dim)`` -> ``(..., dim)``: Linear(dim, ratio*dim), GELU, Linear(ratio*dim, dim).

    Without autograd on the CPU the two layers run through :func:`rv_plugins.ops.linear.linear` (oneDNN, the
    GELU fused into the first GEMM) unless a module has forward hooks or ``act`` is not an ``nn.GELU``.
    """

    def __init__(self, dim: int, ratio: float = 4.0):
        super().__init__()
        hidden = int(dim * ratio)
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (not torch.is_grad_enabled() and type(self.act) is nn.GELU and type(self.fc1) is nn.Linear
                and type(self.fc2) is nn.Linear and not any(has_forward_hooks(m) for m in (self.fc1, self.act, self.fc2))):
            h = linear(x, self.fc1.weight, self.fc1.bias, activation=_FUSED_GELU[self.act.approximate])
            return linear(h, self.fc2.weight, self.fc2.bias)
        return self.fc2(self.act(self.fc1(x)))
