"""Strided 3x3 convolutions followed by a LayerNorm, channels-last out, with row-chunked inference.

:class:`ConvLN` (3x3 stride-2 conv, LayerNorm) downsamples between stages; :class:`Stem` (two ConvLN with
a GELU between) turns the image into the first stage's map at stride 4. Without autograd in eval mode
both compute their output in row chunks from input row slabs (:mod:`rv_plugins.layers.row_chunked`); the
stem recomputes its first conv's rows per chunk, so neither full-resolution intermediate map is held.
"""
import torch
from torch import nn

from rv_plugins.layers.blocks import recompute_in_backward
from rv_plugins.layers.norm import LayerNorm
from rv_plugins.layers.row_chunked import RowChunked, assemble_rows, chunk_rows, conv3x3_rows, takes_lean_path

__all__ = ["ConvLN", "Stem", "STEM_NORM_EPS"]

STEM_NORM_EPS = 1e-6  # VisionGRU's stem and downsampling LayerNorms (the authors' value; its blocks use 1e-5)


class ConvLN(RowChunked, nn.Module):
    """3x3 stride-2 conv then LayerNorm: ``(B, Cin, H, W)`` -> ``(B, ceil(H/2), ceil(W/2), Cout)``.

    ``channels_last_in=True`` takes ``(B, H, W, Cin)`` instead (the maps between stages); ``eps``: the
    LayerNorm's (:class:`rv_plugins.layers.norm.LayerNorm`: the compute dtype under autocast).
    """

    def __init__(self, in_dim: int, out_dim: int, channels_last_in: bool = False, eps: float = STEM_NORM_EPS):
        super().__init__()
        self.channels_last_in = channels_last_in
        self.conv = nn.Conv2d(in_dim, out_dim, 3, stride=2, padding=1)
        self.norm = LayerNorm(out_dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last_in:
            x = x.permute(0, 3, 1, 2)
        n_in, w_in = x.shape[2], x.shape[3]
        n_out, w_out = (n_in + 1) // 2, (w_in + 1) // 2
        c_out = self.conv.out_channels
        if not takes_lean_path(self, n_out * w_out, c_out, x.device, x.shape[0]):
            return self.norm(self.conv(x).permute(0, 2, 3, 1))
        return assemble_rows(n_out, chunk_rows(self, x.device, x.shape[0], n_out, w_out, c_out),
                             lambda o0, o1: self.rows(lambda a, b: x[:, :, a:b], n_in, o0, o1))

    def rows(self, get_rows, n_in: int, o0: int, o1: int) -> torch.Tensor:
        """Output rows ``[o0, o1)``, ``(B, o1 - o0, W_out, out_dim)``, from input row slabs
        ``get_rows(a, b)`` -> ``(B, in_dim, b - a, W_in)`` of a map with ``n_in`` rows."""
        return self.norm(conv3x3_rows(self.conv, get_rows, n_in, o0, o1).permute(0, 2, 3, 1))


class Stem(RowChunked, nn.Module):
    """``(B, in_channels, H, W)`` -> ``(B, ceil(H/4), ceil(W/4), dim)``: two ConvLN with a GELU between."""

    def __init__(self, in_channels: int, dim: int):
        super().__init__()
        self.conv1 = ConvLN(in_channels, max(dim // 2, 1))
        self.act = nn.GELU()
        self.conv2 = ConvLN(max(dim // 2, 1), dim, channels_last_in=True)

    # With autograd: store only the stem's input and recompute its stride-2 maps in the backward
    # (1.7% of VisionGRU-Ti's MACs; at 1024^2 the stem otherwise keeps ~150 MB for the backward).
    recompute = True

    def _full(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.act(self.conv1(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n_in, w_in = x.shape[2], x.shape[3]
        n1 = (n_in + 1) // 2
        n_out, w_out = (n1 + 1) // 2, (w_in + 3) // 4
        c_out = self.conv2.conv.out_channels
        if self.recompute and torch.is_grad_enabled():
            return recompute_in_backward(self._full, x, self.parameters())  # keep the image only: ~4 maps less
        if not takes_lean_path(self, n_out * w_out, c_out, x.device, x.shape[0]):
            return self._full(x)
        # Row chunks of the output; the first conv's rows (one-row halo) are recomputed per chunk, so
        # neither full-resolution intermediate map is ever held.
        def first(a: int, b: int) -> torch.Tensor:
            return self.act(self.conv1.rows(lambda i, j: x[:, :, i:j], n_in, a, b)).permute(0, 3, 1, 2)

        return assemble_rows(n_out, chunk_rows(self, x.device, x.shape[0], n_out, w_out, c_out),
                             lambda o0, o1: self.conv2.rows(first, n1, o0, o1))
