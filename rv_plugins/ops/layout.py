"""2-D layout helpers: feature maps <-> token sequences for ``linear_scan``.

Maps are ``(B, C, H, W)`` (``channels_last=False``, the PyTorch default) or ``(B, H, W, C)``
(``channels_last=True``, what LayerNorm-based blocks hold). Sequences are ``(N, L, C)``.

* raster (row-major) order: ``(B, H*W, C)``. The reverse raster scan needs no flipped copy:
  call ``linear_scan(..., reverse=True)`` on the same sequence.
* rows: every image row is a sequence, ``(B*H, W, C)``.
* columns: every image column is a sequence, ``(B*W, H, C)``.

A view is returned wherever the memory layout allows one (raster and rows from a channels-last
map are free; from ``(B, C, H, W)`` the result is a strided view that the scan kernels read once).
"""
import torch


def _bhwc(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    if x.dim() != 4:
        layout = "(B, H, W, C)" if channels_last else "(B, C, H, W)"
        raise ValueError(f"expected a 4-D feature map {layout}, got shape {tuple(x.shape)}")
    return x if channels_last else x.permute(0, 2, 3, 1)


def _out(y_bhwc: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return y_bhwc if channels_last else y_bhwc.permute(0, 3, 1, 2)


def to_sequence(x: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """Raster (row-major) sequence: map -> ``(B, H*W, C)``."""
    y = _bhwc(x, channels_last)
    B, H, W, C = y.shape
    return y.reshape(B, H * W, C)


def from_sequence(seq: torch.Tensor, hw, channels_last: bool = False) -> torch.Tensor:
    """Inverse of :func:`to_sequence`: ``(B, H*W, C)`` -> map, ``hw = (H, W)``."""
    H, W = hw
    B, L, C = seq.shape
    if L != H * W:
        raise ValueError(f"sequence length {L} does not match H*W = {H}*{W} = {H * W}")
    return _out(seq.reshape(B, H, W, C), channels_last)


def to_sequence_by_rows(x: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """One sequence per image row: map -> ``(B*H, W, C)``."""
    y = _bhwc(x, channels_last)
    B, H, W, C = y.shape
    return y.reshape(B * H, W, C)


def from_sequence_by_rows(seq: torch.Tensor, batch: int, channels_last: bool = False) -> torch.Tensor:
    """Inverse of :func:`to_sequence_by_rows`: ``(B*H, W, C)`` -> map."""
    BH, W, C = seq.shape
    if BH % batch:
        raise ValueError(f"{BH} row sequences cannot come from a batch of {batch} maps")
    return _out(seq.reshape(batch, BH // batch, W, C), channels_last)


def to_sequence_by_columns(x: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """One sequence per image column: map -> ``(B*W, H, C)`` (a copy: columns are strided)."""
    y = _bhwc(x, channels_last)
    B, H, W, C = y.shape
    return y.transpose(1, 2).reshape(B * W, H, C)


def from_sequence_by_columns(seq: torch.Tensor, batch: int, channels_last: bool = False) -> torch.Tensor:
    """Inverse of :func:`to_sequence_by_columns`: ``(B*W, H, C)`` -> map (a strided view)."""
    BW, H, C = seq.shape
    if BW % batch:
        raise ValueError(f"{BW} column sequences cannot come from a batch of {batch} maps")
    return _out(seq.reshape(batch, BW // batch, H, C).transpose(1, 2), channels_last)
