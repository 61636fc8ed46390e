"""Stochastic depth (Huang et al., 2016), shared by every backbone of the package."""
import torch
from torch import nn


def check_drop_prob(p, what: str = "drop path probability") -> float:
    """``p`` as a float in [0, 1), or a ValueError naming the problem and the fix.

    1 would drop every sample and divide by a keep probability of 0 (NaN); outside [0, 1] torch's
    ``bernoulli_`` fails deep inside the forward pass. Backbones spread ``drop_path_rate`` linearly
    over their blocks (0 for the first, the rate itself for the last), so the rate obeys the same rule.
    """
    try:
        value = float(p)
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be a number in [0, 1), got {p!r}") from None
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{what} must be in [0, 1), got {p!r}: set drop_path_rate (stochastic depth) "
                         f"to a value in [0, 1), typically 0.1-0.3, or 0 to disable it")
    return value


class DropPath(nn.Module):
    """Stochastic depth: zeroes the whole residual branch of a sample with probability ``p``."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = check_drop_prob(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"
