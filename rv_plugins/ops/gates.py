"""minGRU's gates as PyTorch ops, and the minGRU scan composed from any linear-scan kernels.

For one direction's projection ``(B, L, 2H)`` = ``[gate, candidate]``::

    z = sigmoid(gate),  a = sigmoid(-gate),  c = act(candidate),  h_t = a_t h_{t-1} + z_t c_t

computed in float32 (float64 for float64 input). The backward needs, per step, ``g_t`` (the adjoint scan
of ``(a_next, grad_h)``) and ``h_{t-1}``::

    d gate = g z a (c - h_prev),   d candidate = g z act'(candidate),   d h0 = a_0 g_0

:func:`composed_forward` / :func:`composed_backward` run this with a backend's ``scan_forward`` /
``scan_backward`` (the backends without fused minGRU kernels, and the differentiable backward used
under ``create_graph=True``).
"""
from typing import Callable, List, Optional, Tuple

import torch
from torch import Tensor

from .adjoint import accumulation_dtype

__all__ = ["g_activation", "g_activation_grad", "gates", "gate_terms", "directions", "composed_forward",
           "composed_backward"]


def g_activation(x: Tensor) -> Tensor:
    """minGRU's ``g``: ``x + 0.5`` for ``x >= 0``, ``sigmoid(x)`` below."""
    return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))


def g_activation_grad(x: Tensor) -> Tensor:
    """``g'(x)``: 1 for ``x >= 0``, ``sigmoid(x) (1 - sigmoid(x))`` below."""
    s = torch.sigmoid(x)
    return torch.where(x >= 0, torch.ones_like(x), s * (1 - s))


def gates(proj_dir: Tensor, candidate_act: str) -> Tuple[Tensor, Tensor]:
    """One direction's ``(B, L, 2H)`` projection -> ``(a, b)`` = ``(sigmoid(-gate), sigmoid(gate) * act(cand))``
    in the accumulation dtype."""
    gate, cand = proj_dir.to(accumulation_dtype(proj_dir.dtype)).chunk(2, dim=-1)
    if candidate_act == "g":
        cand = g_activation(cand)
    return torch.sigmoid(-gate), torch.sigmoid(gate) * cand


def gate_terms(proj_dir: Tensor, candidate_act: str) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """One direction's ``(B, L, 2H)`` projection -> ``(z, a, act(cand), act'(cand))`` in the accumulation dtype."""
    gate, cand = proj_dir.to(accumulation_dtype(proj_dir.dtype)).chunk(2, -1)
    if candidate_act == "g":
        c, dc = g_activation(cand), g_activation_grad(cand)
    else:
        c, dc = cand, torch.ones_like(cand)
    return torch.sigmoid(gate), torch.sigmoid(-gate), c, dc


def directions(reverse: bool, bidirectional: bool) -> Tuple[bool, ...]:
    """The scan direction (``reverse`` flag) of each direction block: ``(False, True)`` if bidirectional."""
    return (False, True) if bidirectional else (reverse,)


def _blocks(x: Optional[Tensor], count: int, width: int) -> List[Optional[Tensor]]:
    """The ``count`` blocks of ``width`` channels along the last dim (``None`` stays ``None``)."""
    if x is None:
        return [None] * count
    return [x[..., d * width:(d + 1) * width] for d in range(count)]


def composed_forward(scan_forward: Callable, proj: Tensor, h0: Optional[Tensor], reverse: bool,
                     bidirectional: bool, candidate_act: str) -> Tensor:
    """``h`` ``(B, L, H | 2H)`` in the accumulation dtype: gates as PyTorch ops, ``scan_forward(a, b, h0, reverse)``
    for each direction's recurrence."""
    dirs = directions(reverse, bidirectional)
    H = proj.shape[-1] // (2 * len(dirs))
    acc = accumulation_dtype(proj.dtype)
    outs = []
    for rev, p, h0_d in zip(dirs, _blocks(proj, len(dirs), 2 * H), _blocks(h0, len(dirs), H)):
        a, b = gates(p, candidate_act)
        outs.append(scan_forward(a, b, None if h0_d is None else h0_d.to(acc), rev).to(acc))
    return outs[0] if len(outs) == 1 else torch.cat(outs, -1)


def composed_backward(scan_backward: Callable, proj: Tensor, h: Tensor, h0: Optional[Tensor], grad_h: Tensor,
                      reverse: bool, bidirectional: bool, candidate_act: str) -> Tuple[Tensor, Optional[Tensor]]:
    """``(grad_proj, grad_h0 or None)`` in the accumulation dtype, from
    ``scan_backward(a, h, h0, grad_h, reverse) -> (grad_a, grad_b, grad_h0)`` for each direction (``grad_b``
    is the adjoint state ``g``; ``grad_a = g h_prev``). Differentiable when ``scan_backward`` is."""
    dirs = directions(reverse, bidirectional)
    H = proj.shape[-1] // (2 * len(dirs))
    acc = accumulation_dtype(proj.dtype)
    grads, grads_h0 = [], []
    for rev, p, h_d, h0_d, gh_d in zip(dirs, _blocks(proj, len(dirs), 2 * H), _blocks(h, len(dirs), H),
                                       _blocks(h0, len(dirs), H), _blocks(grad_h, len(dirs), H)):
        z, a, c, dc = gate_terms(p, candidate_act)
        grad_a, g, grad_h0 = scan_backward(a, h_d.to(acc), None if h0_d is None else h0_d.to(acc), gh_d.to(acc), rev)
        g, za = g.to(acc), z * a
        grads += [za * (g * c - grad_a.to(acc)), g * z * dc]   # g z a (c - h_prev), with grad_a = g h_prev
        grads_h0.append(grad_h0)
    grad_h0 = None if h0 is None else torch.cat([t.to(acc) for t in grads_h0], -1)
    return torch.cat(grads, -1), grad_h0
