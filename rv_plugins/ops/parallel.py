"""The scan as plain, export-friendly PyTorch ops: a fixed number of vectorised steps per level.

``h_t = a_t h_{t-1} + b_t`` over ``(B, L, D)`` is cut into chunks of ``T`` steps (``CHUNK``). Level 1 runs
the ``T`` steps of every chunk at once (each step one multiply-add over ``B x N x D`` values, ``N`` chunks),
from a zero state, and keeps the running product of ``a``; the chunk-end states and products form a
sequence ``N`` long with the same recurrence, scanned the same way (level 2, ...) until one chunk is left.
Each state then gets its chunk's entering state through ``local + prod * carry``.

Why this form (see ``docs/deployment.md``): a traced or exported graph holds ``T`` steps per level, about
``3 T`` element-wise nodes per level whatever the image size (a per-token loop would hold ``L``), the work
stays ``O(L D)`` (a log-space ``T x T`` matrix per chunk costs ``T`` times more), and nothing needs ``log``
or ``exp``: it is exact for every sign of ``a``, zeros included. The ops are reshapes, transposes, splits,
``mul``, ``add``, ``cat`` and ``where``: both ONNX exporters, onnxruntime, TorchScript and autograd take them.

Sizes stay symbolic in a TorchScript trace (``torch.jit.trace``, the legacy ONNX exporter with or without
dynamic axes): there every level pads its sequence to a multiple of ``T`` (the top level to exactly ``T``)
with steps that leave the state unchanged (``a = 1``, ``b = 0``), so a graph with ``K`` levels is right for
every length up to ``T ** K``; it records ``max(K(L), TRACE_LEVELS)`` levels (``16 ** 4 = 65,536`` steps:
VisionGRU's first stage up to 1024 x 1024 images), and a longer sequence fails in the top level's padding (a
negative size) instead of giving a wrong result. ``torch.export`` (the default ONNX exporter) specialises
to the traced size, so its graph takes the fewest levels.

Shapes: ``a``, ``b``: ``(B, L, D)``; ``h0``: ``(B, D)`` or ``None``. The accumulation dtype is float32
(float64 for float64 input); the result has ``a``'s dtype.
"""
import contextlib
from typing import Iterator, List, Optional

import torch

from .adjoint import accumulation_dtype
from .checks import check_mingru_inputs
from .gates import composed_forward

__all__ = ["linear_scan_parallel", "mingru_scan_parallel", "linear_scan", "mingru_scan", "levels_for", "max_length",
           "fixed_size_traces", "CHUNK", "TRACE_LEVELS"]

CHUNK = 16        # steps per level: ~3 x 16 element-wise graph nodes per level
TRACE_LEVELS = 4  # levels a traced/exported graph has at least: sequences up to 16 ** 4 = 65,536 steps


_trace_levels = TRACE_LEVELS


@contextlib.contextmanager
def fixed_size_traces() -> Iterator[None]:
    """Within the block TorchScript traces take the fewest levels for the traced size, as ``torch.export``
    does: for a trace only ever run at that size (an ONNX file without dynamic axes); a smaller graph."""
    global _trace_levels
    saved, _trace_levels = _trace_levels, 1
    try:
        yield
    finally:
        _trace_levels = saved


def levels_for(length: int, chunk: int = CHUNK) -> int:
    """The fewest levels of ``chunk`` steps that scan ``length`` steps (``chunk ** levels >= length``)."""
    levels, span = 1, chunk
    while span < length:
        levels, span = levels + 1, span * chunk
    return levels


def max_length(levels: int, chunk: int = CHUNK) -> int:
    """The longest sequence a graph of ``levels`` levels of ``chunk`` steps scans: ``chunk ** levels``."""
    return chunk ** levels


def _steps(a: torch.Tensor, b: torch.Tensor, h0: Optional[torch.Tensor], reverse: bool, with_prod: bool,
           bounded: bool = True):
    """All ``T`` steps of step-major sequences, one vectorised multiply-add each.

    ``a``, ``b``: ``(T, M, D)`` (``M`` sequences, e.g. batch x chunks); ``h0``: ``(M, D)`` or ``None``, the
    state entering every sequence. Returns ``(h, prod)``, both ``(T, M, D)`` (``prod`` the running product
    of ``a``, ``None`` unless ``with_prod``). ``bounded=False``: ``a`` may be a product of decays that
    overflowed to ``+-inf`` (levels above the first); a zero state then stays zero (``inf * 0`` is NaN). The
    steps run on ``(T, M * D)`` views: a step's slice is one
    contiguous block, and onnxruntime's transpose optimizer cannot move the step-major transpose past the
    reshape into the split (past a split alone it does, and the split then copies strided rows).
    """
    T = a.shape[0]
    a_steps, b_steps = a.flatten(1).split(1, dim=0), b.flatten(1).split(1, dim=0)
    h0 = None if h0 is None else h0.reshape(1, -1)
    order = range(T - 1, -1, -1) if reverse else range(T)
    hs: List[Optional[torch.Tensor]] = [None] * T
    ps: List[Optional[torch.Tensor]] = [None] * T
    h = p = None
    for t in order:
        if h is None:
            h = b_steps[t] if h0 is None else _step(a_steps[t], h0, b_steps[t], bounded)
            p = a_steps[t]
        else:
            h = _step(a_steps[t], h, b_steps[t], bounded)
            p = a_steps[t] * p if with_prod else None
        hs[t], ps[t] = h, p
    h = torch.cat(hs, dim=0).view_as(a)
    return h, (torch.cat(ps, dim=0).view_as(a) if with_prod else None)


def _step(a: torch.Tensor, h: torch.Tensor, b: torch.Tensor, bounded: bool) -> torch.Tensor:
    """``a h + b``; unless ``bounded``, exactly ``b`` where ``h == 0`` (``a`` may be infinite)."""
    return a * h + b if bounded else torch.where(h == 0, b, a * h + b)


def _pad(a: torch.Tensor, b: torch.Tensor, length, reverse: bool, always: bool):
    """Pad ``(B, L, D)`` sequences to ``length`` steps with ``a = 1, b = 0`` after the last step (before the
    first, ``reverse``): such steps leave the state unchanged. ``always``: pad even by zero steps (a trace
    must record the padding, whose size it keeps symbolic)."""
    B, L, D = a.shape
    pad = length - L
    if not always and not pad:
        return a, b
    ones, zeros = a.new_ones(B, pad, D), b.new_zeros(B, pad, D)
    return (torch.cat([ones, a] if reverse else [a, ones], dim=1),
            torch.cat([zeros, b] if reverse else [b, zeros], dim=1))


def _unpad(h: torch.Tensor, length, reverse: bool) -> torch.Tensor:
    """The ``length`` real steps of a padded ``(B, L', D)`` result."""
    return h[:, h.shape[1] - length:] if reverse else h[:, :length]


def _scan(a: torch.Tensor, b: torch.Tensor, h0: Optional[torch.Tensor], reverse: bool, chunk: int, levels: int,
          bounded: bool, generic: bool) -> torch.Tensor:
    """Scan of ``(B, L, D)`` in ``levels`` levels (``L <= chunk ** levels``), in the accumulation dtype."""
    B, L, D = a.shape
    if levels == 1:  # the top level: one chunk (generic: of exactly ``chunk`` steps, whatever L is)
        a, b = _pad(a, b, chunk if generic else L, reverse, generic)
        h = _steps(a.transpose(0, 1), b.transpose(0, 1), h0, reverse, False, bounded)[0].transpose(0, 1)
        return _unpad(h, L, reverse) if generic else h
    N = (L + chunk - 1) // chunk  # not -(-L // chunk): ONNX's integer Div truncates negatives
    a, b = _pad(a, b, N * chunk, reverse, generic)
    # step-major chunks (T, B * N, D); -1 where a size follows: fewer shape ops in a TorchScript trace
    a4 = a.reshape(-1, chunk, D).transpose(0, 1)
    b4 = b.reshape(-1, chunk, D).transpose(0, 1)
    local, prod = _steps(a4, b4, None, reverse, True, bounded)
    end = 0 if reverse else chunk - 1
    carry_out = _scan(prod[end].reshape(B, -1, D), local[end].reshape(B, -1, D), h0, reverse, chunk, levels - 1,
                      bounded, generic)  # the state after each chunk
    fill = carry_out.new_zeros(B, 1, D) if h0 is None else h0.unsqueeze(1)
    carry_in = torch.cat([carry_out[:, 1:], fill] if reverse else [fill, carry_out[:, :-1]], dim=1)
    carry_in = carry_in.reshape(1, -1, D)
    h = _step(prod, carry_in, local, bounded)  # a decay product overflowed to +-inf must not turn 0 into NaN
    return _unpad(h.transpose(0, 1).reshape(B, -1, D), L, reverse)


def _plan(length: int, chunk: int, levels: Optional[int]):
    """``(levels, generic)`` for a sequence of ``length`` steps (see the module docstring). ``generic``: a
    TorchScript trace (``torch.jit.trace``, the legacy ONNX exporter) keeps sizes symbolic, so its graph
    pads every level and has ``TRACE_LEVELS`` levels at least; ``torch.export`` (the default ONNX exporter)
    and eager code specialise to the size they see and take the fewest levels."""
    if chunk < 2:
        raise ValueError(f"parallel scan: chunk must be >= 2, got {chunk}")
    generic = torch.jit.is_tracing()
    if levels is None:
        levels = max(levels_for(length, chunk), _trace_levels) if generic else levels_for(length, chunk)
    elif not generic and length > max_length(levels, chunk):
        raise ValueError(f"parallel scan: {levels} level(s) of {chunk} steps scan at most "
                         f"{max_length(levels, chunk)} steps, got a sequence of {length}; pass levels=None "
                         "or more levels")
    return levels, generic


def linear_scan_parallel(a: torch.Tensor, b: torch.Tensor, h0: Optional[torch.Tensor] = None,
                         reverse: bool = False, chunk: int = CHUNK, levels: Optional[int] = None) -> torch.Tensor:
    """``h_t = a_t h_{t-1} + b_t`` in plain PyTorch ops (differentiable, traceable, exportable).

    Same semantics as :func:`rv_plugins.ops.linear_scan_reference`: ``a``, ``b`` ``(B, L, D)``, ``h0``
    ``(B, D)`` or ``None`` (entering at the end when ``reverse``) -> ``h`` ``(B, L, D)`` in ``a``'s dtype;
    any sign of ``a``. ``chunk`` (>= 2): steps per level; ``levels``: ``None`` picks them (see the module
    docstring), a number fixes them (a graph for sequences up to ``chunk ** levels``).
    """
    levels, generic = _plan(a.shape[1], chunk, levels)
    acc = accumulation_dtype(a.dtype)
    h = _scan(a.to(acc), b.to(acc), None if h0 is None else h0.to(acc), reverse, chunk, levels, False, generic)
    return h.to(a.dtype)


def mingru_scan_parallel(proj: torch.Tensor, h0: Optional[torch.Tensor] = None, reverse: bool = False,
                         bidirectional: bool = False, candidate_act: str = "identity", chunk: int = CHUNK,
                         levels: Optional[int] = None) -> torch.Tensor:
    """:func:`rv_plugins.ops.mingru_scan` in plain PyTorch ops: the gates ``sigmoid(-gate)`` (in ``(0, 1)``)
    and ``sigmoid(gate) * act(cand)`` in float32 (float64 for float64 input), then
    :func:`linear_scan_parallel`'s recurrence per direction.

    ``proj`` ``(B, L, 2H)`` (``(B, L, 4H)`` bidirectional) -> ``h`` ``(B, L, H)`` (``(B, L, 2H)``) in
    ``proj``'s dtype; ``h0`` ``(B, H)`` (``(B, 2H)``) or ``None``; ``chunk``, ``levels`` as
    :func:`linear_scan_parallel`.
    """
    check_mingru_inputs(proj, h0, reverse, bidirectional, candidate_act)
    levels, generic = _plan(proj.shape[1], chunk, levels)

    def scan(a, b, h0_d, rev):  # the gates give 0 < a < 1: the products stay finite (bounded)
        return _scan(a, b, h0_d, rev, chunk, levels, True, generic)
    return composed_forward(scan, proj, h0, reverse, bidirectional, candidate_act).to(proj.dtype)


# the composite backend "parallel" (rv_plugins.ops.registry): the ops' export backend
linear_scan = linear_scan_parallel
mingru_scan = mingru_scan_parallel
