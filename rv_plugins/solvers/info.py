"""What a :class:`~rv_plugins.solvers.fixed_point.FixedPointSolver` call reports (:class:`SolverInfo`) and
its warning throttle (:class:`RateLimitedWarning`). Imports only torch."""
import logging
import time
from dataclasses import dataclass
from typing import Callable, Dict, Optional

import torch

__all__ = ["SolverInfo", "RateLimitedWarning", "NEUMANN_STOPS"]

# why the RBP backward's Neumann series stopped (SolverInfo.neumann_stop)
NEUMANN_STOPS = ("max_terms", "tolerance", "growth", "norm_cap", "zero_gradient", "nonfinite_gradient")


@dataclass
class SolverInfo:
    """What one solver call did. Neumann fields stay ``None`` until ``backward`` reaches ``h``.

    Attributes:
        mode, steps: the mode and the number of applications of F.
        fixed_point_residual: ``||h_N - h_{N-1}|| / ||h_N||`` (a float, no graph).
        lcp: the unweighted penalty ``reduce(relu(1^T J - lambda)^2)`` (a tensor with a graph), or None.
        weighted_lcp: ``lcp_weight * lcp`` to add to the loss, or None.
        jacobian_colsum_max: ``max(1^T J)``, the largest column sum seen by the LCP, or None.
        neumann_terms: vector-Jacobian products in the gradient the RBP backward returned (last backward).
        neumann_residual: ``||g J^(K+1)|| / ||u||`` of that backward, ``u = sum_{k<=K} g J^k``:
            the relative residual ``||g + u J - u|| / ||u||`` of the linear system ``u (I - J) = g``
            (when stopped by ``neumann_tol`` the last added term stands in for ``g J^(K+1)``; with
            ``neumann_rule='skip'`` it is that residual itself, from one more product); ``nan`` for
            a non-finite ``g``.
        neumann_stop: why the series stopped, one of ``NEUMANN_STOPS``: ``'max_terms'`` (used
            ``neumann_terms``), ``'tolerance'`` (a term fell below ``neumann_tol * ||g||``),
            ``'growth'`` (a term was not smaller than the previous one: the series diverges along
            ``g``), ``'norm_cap'`` (the sum would exceed ``neumann_norm_cap``, the authors' rule),
            ``'zero_gradient'`` (``g = 0``), ``'nonfinite_gradient'`` (``g`` holds NaN/Inf: it is
            passed on unchanged and the call is flagged). With ``neumann_rule='skip'`` the reason
            of the last skipped term, or ``'max_terms'`` when none was skipped.
        neumann_error_estimate: estimated relative error ``||u* - u|| / ||u||`` of the truncated
            series, from the ratio ``r`` of its last two terms (geometric tail ``t / (1 - r)``);
            ``inf`` when ``r >= 1``. A heuristic: exact for ``J = c I``.
        rbp_unreliable: True when RBP's gradient should not be trusted (RBP modes only): the
            forward's residual exceeded ``residual_threshold``, the series stopped on (or, with
            ``neumann_rule='skip'``, skipped) a growing term, its error estimate exceeded
            ``neumann_error_threshold``, or the incoming gradient was not finite. Set by the forward and/or
            the backward.
        rbp_unreliable_reason: what triggered it (the warning's text), or None.
    """

    mode: str
    steps: int
    fixed_point_residual: float
    lcp: Optional[torch.Tensor] = None
    weighted_lcp: Optional[torch.Tensor] = None
    jacobian_colsum_max: Optional[float] = None
    neumann_terms: Optional[int] = None
    neumann_residual: Optional[float] = None
    neumann_stop: Optional[str] = None
    neumann_error_estimate: Optional[float] = None
    rbp_unreliable: bool = False
    rbp_unreliable_reason: Optional[str] = None

    def log_scalars(self, prefix: str = "", *, forward: bool = True, backward: bool = True) -> Dict[str, float]:
        """The solver's diagnostics as ``{prefix + name: float}`` for a training log: the one naming
        scheme of the mmseg segmentor and the Detectron2 head (names are the attributes').

        ``forward``: ``fixed_point_residual``, and ``lcp`` (unweighted, detached) and
        ``jacobian_colsum_max`` when the mode computes them. ``backward``: once the RBP backward has
        filled them, ``neumann_terms``, ``neumann_residual`` and ``rbp_unreliable`` (1.0 when flagged).
        None of the names contains ``loss`` (mmengine would add such keys to the loss).
        """
        out = {}
        if forward:
            out["fixed_point_residual"] = float(self.fixed_point_residual)
            if self.lcp is not None:
                out["lcp"] = float(self.lcp.detach())
            if self.jacobian_colsum_max is not None:
                out["jacobian_colsum_max"] = float(self.jacobian_colsum_max)
        if backward and self.neumann_terms is not None:
            out["neumann_terms"] = float(self.neumann_terms)
            out["neumann_residual"] = float(self.neumann_residual)
            out["rbp_unreliable"] = float(self.rbp_unreliable)
        return {prefix + name: value for name, value in out.items()}

    def backward_scalars(self) -> Dict[str, float]:
        """``log_scalars(forward=False)``: the RBP backward's diagnostics, ``{}`` until a backward
        filled them."""
        return self.log_scalars(forward=False)

    def flag_unreliable(self, reason: str) -> None:
        """Set ``rbp_unreliable`` and append ``reason`` to ``rbp_unreliable_reason``."""
        self.rbp_unreliable = True
        self.rbp_unreliable_reason = (reason if self.rbp_unreliable_reason is None
                                      else f"{self.rbp_unreliable_reason}; {reason}")


class RateLimitedWarning:
    """Log a warning at most once per ``interval_s`` seconds; the next one that is let through
    says how many were held back. ``clock`` is injectable for tests."""

    def __init__(self, interval_s: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.interval_s, self.clock = float(interval_s), clock
        self._last: Optional[float] = None
        self.suppressed = 0

    def __call__(self, logger: logging.Logger, message: str) -> bool:
        """Log ``message`` on ``logger`` unless one was logged less than ``interval_s`` ago;
        returns whether it was logged."""
        now = self.clock()
        if self._last is not None and now - self._last < self.interval_s:
            self.suppressed += 1
            return False
        if self.suppressed:
            message += (f" ({self.suppressed} similar warning(s) in the last "
                        f"{now - self._last:.0f} s not shown)")
        logger.warning(message)
        self._last, self.suppressed = now, 0
        return True
