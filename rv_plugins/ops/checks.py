"""Argument checks of the public ops (a leaf module): each error names the argument, what it got and the fix."""
from typing import Optional

import torch

__all__ = ["FLOAT_DTYPES", "CANDIDATE_ACTIVATIONS", "check_linear_scan_inputs", "check_mingru_inputs"]

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
CANDIDATE_ACTIVATIONS = ("identity", "g")


def _check_h0(op: str, h0, batch: int, width: int, device: torch.device, what: str, for_shape) -> None:
    if h0 is None:
        return
    if not isinstance(h0, torch.Tensor) or tuple(h0.shape) != (batch, width):
        shape = tuple(h0.shape) if isinstance(h0, torch.Tensor) else type(h0).__name__
        raise ValueError(f"{op}: h0 must have shape {what}=({batch}, {width}) to match {for_shape}, got h0.shape={shape}")
    if h0.device != device or h0.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{op}: h0 must be a floating tensor on {device}, got {h0.dtype} on {h0.device}")


def check_linear_scan_inputs(a, b, h0: Optional[torch.Tensor], reverse) -> None:
    """``a``, ``b``: ``(B, L, D)``, one floating dtype and device, ``L >= 1``; ``h0``: ``(B, D)`` or None."""
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
        raise TypeError(f"linear_scan: a and b must be tensors, got {type(a).__name__} and {type(b).__name__}")
    if a.dim() != 3:
        raise ValueError(f"linear_scan: a must have shape (B, L, D), got a.shape={tuple(a.shape)}; "
                         "reshape sequences to (batch, length, channels) first (see rv_plugins.ops.layout)")
    if a.shape != b.shape:
        raise ValueError(f"linear_scan: a and b must have the same shape (B, L, D), got "
                         f"a.shape={tuple(a.shape)} and b.shape={tuple(b.shape)}")
    if a.dtype != b.dtype or a.dtype not in FLOAT_DTYPES:
        raise TypeError(f"linear_scan: a and b must share one floating dtype (float16, bfloat16, float32, "
                        f"float64), got a.dtype={a.dtype} and b.dtype={b.dtype}; cast one with .to()")
    if a.device != b.device:
        raise ValueError(f"linear_scan: a is on {a.device} but b is on {b.device}; move both to one device")
    if a.shape[1] == 0:
        raise ValueError(f"linear_scan: empty sequence (L=0) in a.shape={tuple(a.shape)}")
    if not isinstance(reverse, bool):
        raise TypeError(f"linear_scan: reverse must be a bool, got {reverse!r} ({type(reverse).__name__}); "
                        "pass reverse=True or reverse=False")
    _check_h0("linear_scan", h0, a.shape[0], a.shape[2], a.device, "(B, D)", f"a.shape={tuple(a.shape)}")


def check_mingru_inputs(proj, h0, reverse, bidirectional, candidate_act) -> int:
    """Validate ``mingru_scan``'s arguments; returns ``H`` (the state width of one direction)."""
    if not isinstance(proj, torch.Tensor):
        raise TypeError(f"mingru_scan: proj must be a tensor, got {type(proj).__name__}")
    if not isinstance(reverse, bool) or not isinstance(bidirectional, bool):
        raise TypeError(f"mingru_scan: reverse and bidirectional must be bools, got reverse={reverse!r}, "
                        f"bidirectional={bidirectional!r}")
    if bidirectional and reverse:
        raise ValueError("mingru_scan: reverse=True cannot be combined with bidirectional=True (the "
                         "bidirectional op already scans the second half backwards); pass one of them")
    if candidate_act not in CANDIDATE_ACTIVATIONS:
        raise ValueError(f"mingru_scan: candidate_act={candidate_act!r}; choose one of {CANDIDATE_ACTIVATIONS}")
    parts = 4 if bidirectional else 2
    if proj.dim() != 3 or proj.shape[-1] % parts:
        layout = "[gate_fwd, cand_fwd, gate_bwd, cand_bwd]" if bidirectional else "[gate, candidate]"
        raise ValueError(f"mingru_scan: proj must have shape (B, L, {parts}H) ({layout}), got proj.shape={tuple(proj.shape)}")
    if proj.dtype not in FLOAT_DTYPES:
        raise TypeError(f"mingru_scan: proj must be floating (float16/bfloat16/float32/float64), got {proj.dtype}")
    if proj.shape[1] == 0:
        raise ValueError(f"mingru_scan: empty sequence (L=0) in proj.shape={tuple(proj.shape)}")
    H = proj.shape[-1] // parts
    _check_h0("mingru_scan", h0, proj.shape[0], 2 * H if bidirectional else H, proj.device,
              "(B, 2H)" if bidirectional else "(B, H)", f"proj.shape={tuple(proj.shape)}")
    return H
