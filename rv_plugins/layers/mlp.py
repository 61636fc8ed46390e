"""The channel MLP of every backbone block, and its training form that stores one hidden tensor."""
import torch
import torch.nn.functional as F
from torch import nn

from rv_plugins.layers.blocks import refuse_double_backward
from rv_plugins.ops.linear import has_forward_hooks, linear

__all__ = ["Mlp", "gelu_linear"]

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
                and type(self.fc2) is nn.Linear
                and not any(has_forward_hooks(m) for m in (self.fc1, self.act, self.fc2))):
            h = linear(x, self.fc1.weight, self.fc1.bias, activation=_FUSED_GELU[self.act.approximate])
            return linear(h, self.fc2.weight, self.fc2.bias)
        return self.fc2(self.act(self.fc1(x)))


def gelu_linear(u: torch.Tensor, weight: torch.Tensor, bias, approximate: str = "none",
                owner: str = "gelu_linear", switch: str = "the caller's recompute switch") -> torch.Tensor:
    """``F.linear(F.gelu(u, approximate), weight, bias)`` keeping only ``u`` for the backward (the GELU is
    recomputed there): an MLP then stores one ``(..., k)`` hidden tensor instead of two. ``u`` ``(..., k)``,
    ``weight`` ``(n, k)`` -> ``(..., n)``. Not twice differentiable: the backward names ``owner`` and the
    ``switch`` that selects the plain ops."""
    return _GeluLinear.apply(u, weight, bias, approximate, (owner, switch))


class _GeluLinear(torch.autograd.Function):
    """See :func:`gelu_linear`."""

    @staticmethod
    def forward(ctx, u, w, b, approximate, names):
        g = F.gelu(u, approximate=approximate)
        out = F.linear(g, w, b)
        ctx.save_for_backward(u, w)
        ctx.has_bias, ctx.approximate, ctx.dtype, ctx.names = b is not None, approximate, out.dtype, names
        return out

    @staticmethod
    def backward(ctx, grad_out):
        refuse_double_backward(*ctx.names)
        u, w = ctx.saved_tensors
        dt = ctx.dtype
        go = grad_out.reshape(-1, grad_out.shape[-1]).to(dt)
        grad_u = grad_w = grad_b = None
        if ctx.needs_input_grad[1]:
            g = F.gelu(u, approximate=ctx.approximate).reshape(-1, u.shape[-1]).to(dt)
            grad_w = (go.t() @ g).to(w.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = go.sum(0).to(w.dtype)
        if ctx.needs_input_grad[0]:
            grad_g = (go @ w.to(dt)).view(u.shape).to(u.dtype)
            grad_u = torch.ops.aten.gelu_backward(grad_g, u, approximate=ctx.approximate)
        return grad_u, grad_w, grad_b, None, None
