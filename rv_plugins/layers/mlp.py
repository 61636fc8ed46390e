"""The channel MLP of every backbone block."""
import torch
from torch import nn


class Mlp(nn.Module):
    """``(..., dim)`` -> ``(..., dim)``: Linear(dim, ratio*dim), GELU, Linear(ratio*dim, dim)."""

    def __init__(self, dim: int, ratio: float = 4.0):
        super().__init__()
        hidden = int(dim * ratio)
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))
