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
from typing import List, Optional

import torch
from torch import Tensor

from . import chunked, scan
from .modes import is_tracing_or_exporting
from .reference import linear_scan_reference

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


def _gate_terms(proj_dir: Tensor, acc: torch.dtype, candidate_act: str):
    """One direction's ``(B, L, 2H)`` projection -> ``(z, a, act(cand), act'(cand))`` in ``acc``."""
    gate, cand = proj_dir.to(acc).chunk(2, -1)
    if candidate_act == "g":
        c, dc = g_activation(cand), g_activation_grad(cand)
    else:
        c, dc = cand, torch.ones_like(cand)
    return torch.sigmoid(gate), torch.sigmoid(-gate), c, dc


def _split(x: Tensor, ndir: int, width: int):
    """The ``ndir`` direction blocks of width ``width`` along the last dim."""
    return [x[..., d * width:(d + 1) * width] for d in range(ndir)]


def _directions(reverse: bool, bidirectional: bool):
    return (False, True) if bidirectional else (reverse,)


# ----------------------------------------------------------------------------- composed kernels
# Gates as PyTorch ops in float32, any linear-scan kernel pair for the recurrence: the path without
# a compiler (chunked scan), and the Triton path where the fused kernel cannot fill the GPU.
def _composed_forward(scan_fwd, proj, h0, reverse, bidirectional, candidate_act):
    dirs = _directions(reverse, bidirectional)
    H = proj.shape[-1] // (2 * len(dirs))
    out = proj.new_empty(proj.shape[0], proj.shape[1], len(dirs) * H)
    h0s = [None] * len(dirs) if h0 is None else _split(h0, len(dirs), H)
    for d, (rev, p, h0_d) in enumerate(zip(dirs, _split(proj, len(dirs), 2 * H), h0s)):
        a, b = gates(p, candidate_act)
        out[..., d * H:(d + 1) * H] = scan_fwd(a, b, None if h0_d is None else h0_d.to(a.dtype), rev)
    return out


def _composed_backward(scan_bwd, proj, h, h0, grad_h, reverse, bidirectional, candidate_act):
    dirs = _directions(reverse, bidirectional)
    H = proj.shape[-1] // (2 * len(dirs))
    acc = _acc_dtype(proj.dtype)
    grad_proj = torch.empty(proj.shape, dtype=proj.dtype, device=proj.device)
    grad_h0 = None if h0 is None else torch.empty(h0.shape, dtype=h0.dtype, device=h0.device)
    h0s = [None] * len(dirs) if h0 is None else _split(h0, len(dirs), H)
    for d, rev in enumerate(dirs):
        z, a, c, dc = _gate_terms(proj[..., 2 * d * H:(2 * d + 2) * H], acc, candidate_act)
        h0_d = None if h0s[d] is None else h0s[d].to(acc)
        ga, gb, gh0 = scan_bwd(a, h[..., d * H:(d + 1) * H].to(acc), h0_d,
                               grad_h[..., d * H:(d + 1) * H].to(acc), rev)
        ga, gb = ga.to(acc), gb.to(acc)
        za = z * a
        grad_proj[..., 2 * d * H:(2 * d + 1) * H] = za * (gb * c - ga)
        grad_proj[..., (2 * d + 1) * H:(2 * d + 2) * H] = gb * z * dc
        if grad_h0 is not None:
            grad_h0[:, d * H:(d + 1) * H] = gh0
    return grad_proj, grad_h0


def _kernels(name: str, device: torch.device):
    """``forward(proj, h0, reverse, bidirectional, act) -> h`` and
    ``backward(proj, h, h0, grad_h, reverse, bidirectional, act) -> (grad_proj, grad_h0 or None)``."""
    if name == "cpu-kernel":
        from . import cpu_kernel
        return cpu_kernel.mingru_forward, cpu_kernel.mingru_backward
    if name == "triton":
        from . import triton_scan
        triton_scan.check_device(device)

        def time_parallel(proj, bidirectional):
            # the fused kernel runs one program per (batch, direction, channel block) along all of L;
            # where that leaves the GPU idle (VisionGRU at 1024²: B = 1, L = 65,536) the gates are
            # PyTorch ops in float32 and the recurrence the time-parallel chunked scan
            ndir = 2 if bidirectional else 1
            B, L, W = proj.shape
            return proj.numel() > 0 and triton_scan.use_chunked(B * ndir, L, W // (2 * ndir))

        def forward(proj, h0, reverse, bidirectional, act):
            if time_parallel(proj, bidirectional):
                return _composed_forward(triton_scan.scan_forward, proj, h0, reverse, bidirectional, act)
            return triton_scan.mingru_forward(proj, h0, reverse, bidirectional, act)

        def backward(proj, h, h0, grad_h, reverse, bidirectional, act):
            if time_parallel(proj, bidirectional):
                return _composed_backward(triton_scan.scan_backward, proj, h, h0, grad_h, reverse,
                                          bidirectional, act)
            return triton_scan.mingru_backward(proj, h, h0, grad_h, reverse, bidirectional, act)

        return forward, backward
    fwd = lambda *args: _composed_forward(chunked.scan_chunked, *args)  # noqa: E731
    bwd = lambda *args: _composed_backward(scan._chunked_backward, *args)  # noqa: E731
    return fwd, bwd


# ----------------------------------------------------------------------------- torch.library ops
@torch.library.custom_op("rv_plugins::mingru_scan", mutates_args=())
def _mingru_scan_op(proj: Tensor, h0: Optional[Tensor], reverse: bool, bidirectional: bool,
                    candidate_act: str, backend: str) -> Tensor:
    """``h`` (B, L, H or 2H), contiguous, in ``proj``'s dtype; ``backend``: ``"torch"`` or ``"triton"``."""
    forward, _ = _kernels(scan.kernel_name(backend, proj.device), proj.device)
    return forward(proj, h0, reverse, bidirectional, candidate_act).to(proj.dtype).contiguous()


@_mingru_scan_op.register_fake
def _(proj, h0, reverse, bidirectional, candidate_act, backend):
    return proj.new_empty(proj.shape[0], proj.shape[1], proj.shape[-1] // 2)  # H, or 2H bidirectional


@torch.library.custom_op("rv_plugins::mingru_scan_backward", mutates_args=())
def _mingru_scan_backward_op(proj: Tensor, h: Tensor, h0: Optional[Tensor], grad_h: Tensor, reverse: bool,
                             bidirectional: bool, candidate_act: str, backend: str) -> List[Tensor]:
    """``[grad_proj (proj's shape, contiguous), grad_h0]`` (``grad_h0`` empty when ``h0`` is None);
    the gates are recomputed from ``proj``."""
    _, backward = _kernels(scan.kernel_name(backend, proj.device), proj.device)
    grad_proj, grad_h0 = backward(proj, h, h0, grad_h, reverse, bidirectional, candidate_act)
    grad_h0 = proj.new_empty(0) if grad_h0 is None else grad_h0.to(h0.dtype).contiguous()
    return [grad_proj.to(proj.dtype).contiguous(), grad_h0]


@_mingru_scan_backward_op.register_fake
def _(proj, h, h0, grad_h, reverse, bidirectional, candidate_act, backend):
    grad_h0 = proj.new_empty(0) if h0 is None else torch.empty(h0.shape, dtype=h0.dtype, device=h0.device)
    return [torch.empty(proj.shape, dtype=proj.dtype, device=proj.device), grad_h0]


def _differentiable_backward(proj, h, h0, grad_h, reverse, bidirectional, candidate_act, backend):
    """The backward as differentiable ops (gates as PyTorch ops, the linear-scan op for the adjoint
    recurrence): used under ``create_graph=True``, so double backward is exact on every backend."""
    dirs = _directions(reverse, bidirectional)
    H = proj.shape[-1] // (2 * len(dirs))
    acc = _acc_dtype(proj.dtype)
    grads, grads_h0 = [], []
    h0s = [None] * len(dirs) if h0 is None else _split(h0, len(dirs), H)
    for d, rev in enumerate(dirs):
        z, a, c, dc = _gate_terms(proj[..., 2 * d * H:(2 * d + 2) * H], acc, candidate_act)
        a_next = scan._shift(a, None, rev, towards_past=False)
        g = torch.ops.rv_plugins.linear_scan(a_next, grad_h[..., d * H:(d + 1) * H].to(acc), None, not rev, backend)
        h0_d = None if h0s[d] is None else h0s[d].to(acc)
        h_prev = scan._shift(h[..., d * H:(d + 1) * H].to(acc), h0_d, rev, towards_past=True)
        gz = g * z
        grads += [gz * a * (c - h_prev), gz * dc]
        if h0 is not None:
            grads_h0.append(scan._first(a, rev) * scan._first(g, rev))
    grad_h0 = None if h0 is None else torch.cat(grads_h0, -1).to(h0.dtype)
    return torch.cat(grads, -1).to(proj.dtype), grad_h0


def _mingru_setup(ctx, inputs, output):
    proj, h0, reverse, bidirectional, candidate_act, backend = inputs
    ctx.save_for_backward(proj, output, h0)
    ctx.args = (reverse, bidirectional, candidate_act, backend)


def mingru_scan_backward(proj: Tensor, h: Tensor, h0: Optional[Tensor], grad_h: Tensor, reverse: bool,
                         bidirectional: bool, candidate_act: str, backend: str):
    """The backward of ``mingru_scan`` without autograd (the ``rv_plugins::mingru_scan_backward`` op), for
    code that writes its own ``autograd.Function`` around the op: ``h`` is the op's output, ``backend`` a
    resolved name (:func:`rv_plugins.ops.resolve_backend`, not ``"reference"``). Returns
    ``(grad_proj, grad_h0 or None)``, ``grad_proj`` contiguous in ``proj``'s shape and dtype; the gates are
    recomputed from ``proj``."""
    grad_proj, grad_h0 = torch.ops.rv_plugins.mingru_scan_backward(proj, h, h0, grad_h.contiguous(), reverse,
                                                                   bidirectional, candidate_act, backend)
    return grad_proj, (None if h0 is None else grad_h0)


def _mingru_backward(ctx, grad_h):
    proj, h, h0 = ctx.saved_tensors
    if scan._needs_graph(proj, h, h0, grad_h):
        grad_proj, grad_h0 = _differentiable_backward(proj, h, h0, grad_h, *ctx.args)
    else:
        grad_proj, grad_h0 = mingru_scan_backward(proj, h, h0, grad_h, *ctx.args)
    return grad_proj, grad_h0, None, None, None, None


_mingru_scan_op.register_autograd(_mingru_backward, setup_context=_mingru_setup)


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
        backend: as :func:`rv_plugins.ops.linear_scan` (``None``: Triton on CUDA, else ``"torch"``:
            the compiled CPU kernel, or PyTorch gates + the chunked scan without a compiler).

    Returns:
        ``h``: ``(B, L, H)`` or ``(B, L, 2H)`` in ``proj``'s dtype; gates and state in float32
        (float64 for float64 input). Differentiable w.r.t. ``proj`` and ``h0``, twice as well.
        Except for ``"reference"`` this is the ``torch.ops.rv_plugins.mingru_scan`` custom op; its
        backward recomputes the gates and returns one gradient in ``proj``'s layout.
    """
    check_mingru_inputs(proj, h0, reverse, bidirectional, candidate_act)
    backend = scan._public_backend(backend, proj.device)
    if backend == "reference":
        return mingru_scan_reference(proj, h0, reverse, bidirectional, candidate_act)
    if is_tracing_or_exporting():  # a tracer records plain ops: the export-friendly composite
        from .parallel import mingru_scan_parallel
        return mingru_scan_parallel(proj, h0, reverse, bidirectional, candidate_act)
    return torch.ops.rv_plugins.mingru_scan(proj, h0, reverse, bidirectional, candidate_act, backend)
