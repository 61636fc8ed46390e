"""``mingru_scan``: minGRU's gates and scan as one op, taken straight from the input projection.

For a projection ``proj = in_proj(x)`` of shape ``(B, L, 2H)`` laid out as ``[gate, candidate]``
(what ``MinGRU.in_proj`` writes: ``gate, candidate = proj.chunk(2, -1)``)::

    z_t = sigmoid(gate_t)                      # update gate
    c_t = act(candidate_t)                     # act = identity, or g (minGRU's positive activation)
    h_t = sigmoid(-gate_t) * h_{t-1} + z_t * c_t

``sigmoid(-gate)`` is ``1 - z`` computed without cancellation. The gates are computed in float32
(float64 for float64 input) *inside* the scan: half-precision inputs keep decays such as 0.999 that
bfloat16 would round to 1.0. The backward recomputes the gates from ``proj`` (nothing of size
``B × L × H`` is stored besides ``proj`` and ``h``) and returns one gradient shaped like ``proj``.

``bidirectional=True`` takes ``(B, L, 4H)`` = ``[gate_fwd, cand_fwd, gate_bwd, cand_bwd]`` and
returns ``(B, L, 2H)`` = ``[h_fwd, h_bwd]`` in one buffer, ``h_fwd`` scanned ``t = 0..L-1`` and
``h_bwd`` scanned ``t = L-1..0`` (``h0``: ``(B, 2H)``, its second half enters at the end).

Backends are those of :func:`rv_plugins.ops.linear_scan`: ``"reference"`` (plain PyTorch ops and
the step loop, autograd records everything; the truth the others are tested against), ``"torch"``
(compiled CPU kernel, or composed PyTorch ops + the chunked scan without a compiler), ``"triton"``.
"""
from typing import Optional

import torch

CANDIDATE_ACTIVATIONS = ("identity", "g")


def g_activation(x: torch.Tensor) -> torch.Tensor:
    """minGRU's ``g``: ``x + 0.5`` for ``x >= 0``, ``sigmoid(x)`` below (same as ``rv_plugins.layers.mingru``)."""
    return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))


def g_activation_grad(x: torch.Tensor) -> torch.Tensor:
    """``g'(x)``: 1 for ``x >= 0``, ``sigmoid(x) (1 - sigmoid(x))`` below."""
    s = torch.sigmoid(x)
    return torch.where(x >= 0, torch.ones_like(x), s * (1 - s))


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


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
        raise ValueError(f"mingru_scan: proj must have shape (B, L, {parts}H) "
                         f"({'[gate_fwd, cand_fwd, gate_bwd, cand_bwd]' if bidirectional else '[gate, candidate]'}),"
                         f" got proj.shape={tuple(proj.shape)}")
    if proj.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise TypeError(f"mingru_scan: proj must be floating (float16/bfloat16/float32/float64), got {proj.dtype}")
    if proj.shape[1] == 0:
        raise ValueError(f"mingru_scan: empty sequence (L=0) in proj.shape={tuple(proj.shape)}")
    H = proj.shape[-1] // parts
    if h0 is not None:
        width = 2 * H if bidirectional else H
        if not isinstance(h0, torch.Tensor) or tuple(h0.shape) != (proj.shape[0], width):
            shape = tuple(h0.shape) if isinstance(h0, torch.Tensor) else type(h0).__name__
            raise ValueError(f"mingru_scan: h0 must have shape (B, {'2H' if bidirectional else 'H'})="
                             f"({proj.shape[0]}, {width}) for proj.shape={tuple(proj.shape)}, got {shape}")
        if h0.device != proj.device or not h0.is_floating_point():
            raise ValueError(f"mingru_scan: h0 must be a floating tensor on {proj.device}, got {h0.dtype} on {h0.device}")
    return H


def gates(proj_dir: torch.Tensor, candidate_act: str):
    """One direction's ``(B, L, 2H)`` projection -> ``(a, b)`` = ``(sigmoid(-gate), sigmoid(gate) * act(cand))``
    in the accumulation dtype (float32, or float64 for float64 input)."""
    gate, cand = proj_dir.to(_acc_dtype(proj_dir.dtype)).chunk(2, dim=-1)
    if candidate_act == "g":
        cand = g_activation(cand)
    return torch.sigmoid(-gate), torch.sigmoid(gate) * cand


def mingru_scan_reference(proj: torch.Tensor, h0: Optional[torch.Tensor] = None, reverse: bool = False,
                          bidirectional: bool = False, candidate_act: str = "identity") -> torch.Tensor:
    """Plain-PyTorch ``mingru_scan`` (gates as ordinary ops, the step-by-step scan); autograd throughout.

    Shapes as :func:`mingru_scan`; the result has ``proj``'s dtype.
    """
    from .reference import linear_scan_reference
    H = check_mingru_inputs(proj, h0, reverse, bidirectional, candidate_act)
    acc = _acc_dtype(proj.dtype)
    h0 = None if h0 is None else h0.to(acc)
    if not bidirectional:
        a, b = gates(proj, candidate_act)
        return linear_scan_reference(a, b, h0, reverse).to(proj.dtype)
    a_f, b_f = gates(proj[..., :2 * H], candidate_act)
    a_b, b_b = gates(proj[..., 2 * H:], candidate_act)
    h_f = linear_scan_reference(a_f, b_f, None if h0 is None else h0[:, :H], False)
    h_b = linear_scan_reference(a_b, b_b, None if h0 is None else h0[:, H:], True)
    return torch.cat([h_f, h_b], dim=-1).to(proj.dtype)


def mingru_scan(proj: torch.Tensor, h0: Optional[torch.Tensor] = None, reverse: bool = False,
                bidirectional: bool = False, candidate_act: str = "identity",
                backend: Optional[str] = None) -> torch.Tensor:
    """minGRU gates + scan in one op, from the raw input projection.

    Args:
        proj: ``(B, L, 2H)`` = ``[gate, candidate]`` (``MinGRU.in_proj``'s layout), or ``(B, L, 4H)`` =
            ``[gate_fwd, cand_fwd, gate_bwd, cand_bwd]`` with ``bidirectional=True``. Any strides.
        h0: optional initial state ``(B, H)`` (``(B, 2H)`` = ``[h0_fwd, h0_bwd]`` if bidirectional).
        reverse: scan ``t = L-1 .. 0`` (a bool; not with ``bidirectional``).
        bidirectional: both directions in one call, written into one ``(B, L, 2H)`` buffer.
        candidate_act: ``"identity"`` (the minGRU / VisionGRU papers) or ``"g"`` (VisionGRU's released code).
        backend: as :func:`rv_plugins.ops.linear_scan` (``None``: best for the device).

    Returns:
        ``h``: ``(B, L, H)`` or ``(B, L, 2H)`` in ``proj``'s dtype; gates and state in float32
        (float64 for float64 input). Differentiable w.r.t. ``proj`` and ``h0``.
    """
    from .scan import linear_scan
    H = check_mingru_inputs(proj, h0, reverse, bidirectional, candidate_act)
    if backend == "reference":
        return mingru_scan_reference(proj, h0, reverse, bidirectional, candidate_act)
    acc = _acc_dtype(proj.dtype)
    h0 = None if h0 is None else h0.to(acc)
    if not bidirectional:
        a, b = gates(proj, candidate_act)
        return linear_scan(a, b, h0, reverse, backend).to(proj.dtype)
    a_f, b_f = gates(proj[..., :2 * H], candidate_act)
    a_b, b_b = gates(proj[..., 2 * H:], candidate_act)
    h_f = linear_scan(a_f, b_f, None if h0 is None else h0[:, :H], False, backend)
    h_b = linear_scan(a_b, b_b, None if h0 is None else h0[:, H:], True, backend)
    return torch.cat([h_f, h_b], dim=-1).to(proj.dtype)
