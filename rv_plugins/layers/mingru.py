"""minGRU (Feng et al., 2024, "Were RNNs all we needed?") on the shared scan op.

    z_t = sigmoid(W_z x_t),   h~_t = act(W_h x_t),   h_t = (1 - z_t) * h_{t-1} + z_t * h~_t,   y_t = W_o h_t

``act`` is the identity in the minGRU paper and in VisionGRU's paper (Eq. 8); the VisionGRU authors'
released code (minGRU-pytorch 0.0.12) applies ``g`` (:func:`g_activation`): ``g(x) = x + 0.5`` for
``x >= 0`` and ``sigmoid(x)`` below (positive, continuous, slope 1 for large ``x``). Their released
weights need ``candidate_act='g'``.

Neither gate depends on ``h_{t-1}``, so the whole sequence is one call of
:func:`rv_plugins.ops.linear_scan` with ``a = 1 - z`` and ``b = z * h~`` (a parallel scan, no Python
loop over tokens). ``1 - sigmoid(g)`` is computed as ``sigmoid(-g)`` for accuracy.
"""
from typing import Optional

import torch
from torch import nn

from rv_plugins.ops import linear_scan

CANDIDATE_ACTIVATIONS = ("identity", "g")


def g_activation(x: torch.Tensor) -> torch.Tensor:
    """minGRU's ``g``: ``x + 0.5`` where ``x >= 0``, ``sigmoid(x)`` where ``x < 0``; any shape."""
    return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))


class MinGRU(nn.Module):
    """minGRU over ``(B, L, dim)`` sequences -> ``(B, L, out_dim)``.

    Args:
        dim: input channels.
        hidden_dim: state channels (``expansion * dim`` by default).
        out_dim: output channels; ``None`` gives ``dim``. ``proj_out=False`` returns the state itself.
        expansion: ``hidden_dim = expansion * dim`` when ``hidden_dim`` is not given.
        bias: biases in the projections (VisionGRU's code has none).
        reverse: scan from the last token to the first.
        backend: passed to :func:`linear_scan` (``None``: best for the device).
        candidate_act: ``'identity'`` (the papers) or ``'g'`` (the VisionGRU authors' released code).
    """

    def __init__(self, dim: int, hidden_dim: Optional[int] = None, out_dim: Optional[int] = None,
                 expansion: float = 2.0, bias: bool = False, proj_out: bool = True,
                 reverse: bool = False, backend: Optional[str] = None,
                 candidate_act: str = "identity"):
        super().__init__()
        if candidate_act not in CANDIDATE_ACTIVATIONS:
            raise ValueError(f"MinGRU: candidate_act={candidate_act!r}; choose one of "
                             f"{CANDIDATE_ACTIVATIONS} ('g' for the VisionGRU authors' released weights)")
        self.candidate_act = candidate_act
        self.hidden_dim = hidden_dim or int(round(expansion * dim))
        self.reverse, self.backend = reverse, backend
        self.in_proj = nn.Linear(dim, 2 * self.hidden_dim, bias=bias)  # gate and candidate together
        self.out_proj = nn.Linear(self.hidden_dim, out_dim or dim, bias=bias) if proj_out else nn.Identity()

    def forward(self, x: torch.Tensor, h0: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: ``(B, L, dim)``; h0: optional ``(B, hidden_dim)`` -> ``(B, L, out_dim)``."""
        gate, candidate = self.in_proj(x).chunk(2, dim=-1)
        z = torch.sigmoid(gate)
        if self.candidate_act == "g":
            candidate = g_activation(candidate)
        h = linear_scan(torch.sigmoid(-gate), z * candidate, h0, reverse=self.reverse, backend=self.backend)
        return self.out_proj(h)

    def extra_repr(self) -> str:
        return (f"hidden_dim={self.hidden_dim}, reverse={self.reverse}, backend={self.backend}, "
                f"candidate_act={self.candidate_act!r}")
