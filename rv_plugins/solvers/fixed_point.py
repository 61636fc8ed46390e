"""Run a recurrent transition ``h_{t+1} = F(x, h_t)`` and train it with BPTT, RBP, or either + LCP.

Modes (``N = steps``):

* ``'bptt'``: N steps, all recorded by autograd; memory grows with N.
* ``'rbp'``: recurrent back-propagation (Almeida / Pineda; Liao et al., 2018). N - 1 steps under
  ``torch.no_grad``; one step ``h_N = F(x, h*)`` from the detached state ``h* = h_{N-1}`` with a
  graph. On backward the incoming gradient ``g = dL/dh_N`` is replaced by the truncated Neumann
  series ``u = sum_k g J^k`` (``J = dF/dh`` at ``h*``, one vector-Jacobian product per term), i.e.
  ``g (I - J)^-1`` of the implicit function theorem, and ``u`` flows through that single step to
  F's parameters and to ``x`` (not to ``h0``: the fixed point does not depend on it). Memory
  does not grow with N.
* ``'cbptt'`` / ``'crbp'``: the same plus the Lipschitz-constant penalty (LCP; Linsley et al., 2020)
  at the last step, ``||relu(1^T J - lambda)||^2`` with ``1^T J`` one vector-Jacobian product of a
  ones vector through ``h_N = F(x, h_{N-1})`` (``create_graph=True``). The caller adds it to the
  loss: ``loss = task + info.weighted_lcp`` (``= lcp_weight * info.lcp``).

Usage::

    solver = FixedPointSolver(mode="crbp", steps=20)
    h, info = solver(cell, x, torch.zeros_like(x))
    loss = criterion(readout(h), target) + info.weighted_lcp
    loss.backward()          # info.neumann_terms / info.neumann_residual are filled now

``F`` is any ``nn.Module`` or callable taking ``(x, h)`` and returning a state shaped like ``h``;
``x`` and ``h`` may have any shapes. Under ``torch.no_grad()`` every mode just runs the N steps
(no LCP, ``info.lcp is None``).
"""
import math
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch

MODES = ("bptt", "cbptt", "rbp", "crbp")

Transition = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class SolverInfo:
    """What one solver call did. Neumann fields stay ``None`` until ``backward`` reaches ``h``.

    Attributes:
        mode, steps: the mode and the number of applications of F.
        fixed_point_residual: ``||h_N - h_{N-1}|| / ||h_N||`` (a float, no graph).
        lcp: the unweighted penalty ``sum(relu(1^T J - lambda)^2)`` (a tensor with a graph), or None.
        weighted_lcp: ``lcp_weight * lcp`` to add to the loss, or None.
        jacobian_colsum_max: ``max(1^T J)``, the largest column sum seen by the LCP, or None.
        neumann_terms: vector-Jacobian products used by the RBP backward (last backward).
        neumann_residual: ``||g J^(K+1)|| / ||u||`` of that backward, ``u = sum_{k<=K} g J^k``:
            the relative residual ``||g + u J - u|| / ||u||`` of the linear system ``u (I - J) = g``
            (when stopped by ``neumann_tol`` the last added term stands in for ``g J^(K+1)``).
    """

    mode: str
    steps: int
    fixed_point_residual: float
    lcp: Optional[torch.Tensor] = None
    weighted_lcp: Optional[torch.Tensor] = None
    jacobian_colsum_max: Optional[float] = None
    neumann_terms: Optional[int] = None
    neumann_residual: Optional[float] = None


def _check_finite(h: torch.Tensor, step: int, steps: int, mode: str) -> None:
    """Raise when the state at ``step`` holds NaN or Inf."""
    if not bool(torch.isfinite(h).all()):
        raise FloatingPointError(
            f"FixedPointSolver(mode={mode!r}): the state became non-finite (NaN/Inf) at step "
            f"{step} of {steps}; the transition diverges - lower the learning rate, use an LCP "
            "mode ('cbptt'/'crbp') or a smaller lcp_lambda, or run fewer steps")


def lipschitz_penalty(h_next: torch.Tensor, h_prev: torch.Tensor, lam: float,
                      reduction: str = "sum") -> Tuple[torch.Tensor, torch.Tensor]:
    """LCP of one step ``h_next = F(x, h_prev)``: ``relu(1^T dF/dh - lam)^2`` reduced.

    ``h_prev`` must be part of ``h_next``'s graph. Returns ``(penalty, colsum)`` with ``colsum``
    ``= 1^T J`` shaped like ``h_prev``; both keep a graph to F's parameters (``create_graph``).
    """
    colsum, = torch.autograd.grad(h_next, h_prev, torch.ones_like(h_next), create_graph=True)
    excess = torch.relu(colsum - lam).pow(2)
    if reduction == "sum":
        return excess.sum(), colsum
    if reduction == "mean":
        return (excess.mean() if excess.numel() else excess.sum()), colsum
    raise ValueError(f"lipschitz_penalty: unknown reduction {reduction!r}; use 'sum' or 'mean'")


class FixedPointSolver:
    """Iterate ``h <- F(x, h)`` ``steps`` times and pick how gradients are computed.

    Args:
        mode: one of ``'bptt'``, ``'cbptt'``, ``'rbp'``, ``'crbp'`` (see the module docstring).
        steps: applications of F (>= 1; RBP modes need >= 2 to have a state to detach from).
        neumann_terms: most vector-Jacobian products in the RBP backward (``None``: ``steps``).
        neumann_tol: stop the series once a term's norm is below ``neumann_tol * ||g||``.
        stop_on_growth: stop (and drop the term) when a term's norm exceeds the previous one's,
            i.e. the series diverges because ``J`` is not contractive (as the authors).
        lcp_lambda: the Lipschitz target ``lambda`` in ``[0, 1)``.
        lcp_weight: factor of ``info.weighted_lcp``.
        lcp_reduction: ``'sum'`` over all elements (the authors) or ``'mean'``.
        check_finite: raise ``FloatingPointError`` naming the step when a state is NaN/Inf.
    """

    def __init__(self, mode: str = "crbp", steps: int = 20, neumann_terms: Optional[int] = None,
                 neumann_tol: float = 1e-9, stop_on_growth: bool = True, lcp_lambda: float = 0.9,
                 lcp_weight: float = 1.0, lcp_reduction: str = "sum", check_finite: bool = True):
        if mode not in MODES:
            raise ValueError(f"FixedPointSolver: unknown mode {mode!r}; choose one of {MODES}")
        if lcp_reduction not in ("sum", "mean"):
            raise ValueError(f"FixedPointSolver: lcp_reduction={lcp_reduction!r}; use 'sum' or 'mean'")
        self.mode, self.steps = mode, self._valid_steps(steps, mode)
        self.neumann_terms = neumann_terms
        self.neumann_tol, self.stop_on_growth = neumann_tol, stop_on_growth
        self.lcp_lambda, self.lcp_weight, self.lcp_reduction = lcp_lambda, lcp_weight, lcp_reduction
        self.check_finite = check_finite

    @staticmethod
    def _valid_steps(steps: int, mode: str) -> int:
        minimum = 2 if mode in ("rbp", "crbp") else 1
        if int(steps) != steps or steps < minimum:
            raise ValueError(f"FixedPointSolver(mode={mode!r}): steps={steps}; need an integer "
                             f">= {minimum}")
        return int(steps)

    @property
    def uses_lcp(self) -> bool:
        return self.mode in ("cbptt", "crbp")

    def __repr__(self) -> str:
        return (f"FixedPointSolver(mode={self.mode!r}, steps={self.steps}, "
                f"neumann_terms={self.neumann_terms}, lcp_lambda={self.lcp_lambda}, "
                f"lcp_weight={self.lcp_weight})")

    def __call__(self, transition: Transition, x: torch.Tensor, h0: torch.Tensor,
                 steps: Optional[int] = None) -> Tuple[torch.Tensor, SolverInfo]:
        """Run the transition; ``steps`` overrides the configured count for this call.

        Returns ``(h_N, info)``; ``h_N`` is shaped like ``h0``.
        """
        steps = self.steps if steps is None else self._valid_steps(steps, self.mode)
        if not torch.is_grad_enabled():
            h_prev, h = self._iterate(transition, x, h0, steps, steps)
            return h, SolverInfo(self.mode, steps, self._residual(h, h_prev))
        if self.mode in ("bptt", "cbptt"):
            if self.uses_lcp and steps == 1 and not h0.requires_grad:
                h0 = h0.detach().requires_grad_(True)  # the LCP differentiates w.r.t. h_{N-1}
            h_prev, h = self._iterate(transition, x, h0, steps, steps)
        else:
            with torch.no_grad():
                _, h_star = self._iterate(transition, x, h0, steps - 1, steps)
            h_prev = h_star.detach().requires_grad_(True)
            h = transition(x, h_prev)
            if self.check_finite:
                _check_finite(h, steps, steps, self.mode)
        info = SolverInfo(self.mode, steps, self._residual(h, h_prev))
        if not (h.requires_grad and h_prev.requires_grad):
            return h, info  # nothing to differentiate: no LCP, no implicit backward
        if self.uses_lcp:
            info.lcp, colsum = lipschitz_penalty(h, h_prev, self.lcp_lambda, self.lcp_reduction)
            info.weighted_lcp = self.lcp_weight * info.lcp
            if colsum.numel():  # an empty batch (e.g. no ROIs) has no column sums
                info.jacobian_colsum_max = float(colsum.detach().max())
        if self.mode in ("rbp", "crbp"):
            h = self._attach_implicit_backward(h, h_prev, info, steps)
        return h, info

    def _iterate(self, transition: Transition, x: torch.Tensor, h: torch.Tensor, count: int,
                 total_steps: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Apply F ``count`` times; returns the last two states ``(h_{count-1}, h_count)``."""
        h_prev = h
        for index in range(count):
            h_prev, h = h, transition(x, h)
            if self.check_finite:
                _check_finite(h, index + 1, total_steps, self.mode)
        return h_prev, h

    @staticmethod
    def _residual(h: torch.Tensor, h_prev: torch.Tensor) -> float:
        h, h_prev = h.detach(), h_prev.detach()
        return float((h - h_prev).norm() / h.norm().clamp_min(torch.finfo(h.dtype).tiny))

    def _attach_implicit_backward(self, h: torch.Tensor, h_prev: torch.Tensor,
                                  info: SolverInfo, steps: int) -> torch.Tensor:
        """Return a view of ``h`` whose incoming gradient is mapped to ``g (I - J)^-1``.

        The hook sits on a view, so gradients that reach ``h`` from the LCP's graph (which may
        use ``h`` as a saved output) are not passed through the Neumann series.
        """
        max_terms = steps if self.neumann_terms is None else self.neumann_terms

        def implicit_gradient(grad: torch.Tensor) -> torch.Tensor:
            total, term = grad.clone(), grad
            grad_norm = term_norm = float(grad.norm())
            used = 0
            while True:
                next_term, = torch.autograd.grad(h, h_prev, term, retain_graph=True)
                next_norm = float(next_term.norm())
                if not math.isfinite(next_norm):
                    raise FloatingPointError(
                        f"FixedPointSolver(mode={self.mode!r}): Neumann term {used + 1} of the RBP "
                        "backward is non-finite; J is not contractive - use mode='crbp' (LCP) or "
                        "fewer neumann_terms")
                if used == max_terms or (self.stop_on_growth and next_norm > term_norm):
                    break  # next_term is the first term left out
                total.add_(next_term)
                term, term_norm, used = next_term, next_norm, used + 1
                if next_norm <= self.neumann_tol * grad_norm:
                    break  # converged; the term just added bounds the remainder
            info.neumann_terms = used
            info.neumann_residual = next_norm / max(float(total.norm()), 1e-30)
            return total

        out = h.view_as(h)
        out.register_hook(implicit_gradient)
        return out
