"""The truncated Neumann series of the RBP backward, ``u = g + g J + g J^2 + ...`` (``u (I - J) = g``).

:func:`neumann_series` sums the series for one incoming gradient ``g`` given a vector-Jacobian
product ``v -> v J`` and the stopping settings of a
:class:`~rv_plugins.solvers.fixed_point.FixedPointSolver`; it knows nothing of models or autograd
graphs, so it can be checked on explicit matrices. Two rules for a term that breaks a stop
condition (the sum's norm above ``norm_cap``, a term not smaller than the one before, a term
below the tolerance) come from the C-RBP authors' two codes:

* ``'stop'`` (the Pathfinder code, ``c-rbp/pathfinder_experiments``, ``models/hgrucleanSEG.py``,
  ``dummyhgru.backward``, lines 36-46): drop the term and end the series there.
* ``'skip'`` (the COCO code, ``c-rbp/panoptic_segmentation``,
  ``detectron2/modeling/backbone/rnns.py``, ``RBPFun.backward``, lines 51-73, used by their
  ``mask_head.py`` with 15 iterations): drop the term from the sum but keep iterating from it for
  all ``max_terms`` products, and return the sum as it stood at the last dropped term (later terms
  that were added are discarded with it).

Where ours differs from both on purpose: the tolerance is relative (``tol * ||g||``; theirs an
absolute 1e-9), and the ``'stop'`` rule stops on a term *equal* to the previous one as well (``>=``;
theirs ``>``), so a map with ``|J| = 1`` along ``g`` ends at once. The ``'skip'`` rule compares
with ``>`` as theirs (it runs ``max_terms`` products in any case).
"""
import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

__all__ = ["NEUMANN_RULES", "NeumannResult", "neumann_series", "tail_estimate"]

NEUMANN_RULES = ("stop", "skip")


@dataclass
class NeumannResult:
    """What :func:`neumann_series` summed.

    Attributes:
        gradient: ``u``, shaped like ``g``.
        terms: products ``g J^k`` (``k >= 1``) in ``u``.
        stop: one of ``rv_plugins.solvers.NEUMANN_STOPS`` (see ``SolverInfo.neumann_stop``).
        residual: ``||g + u J - u|| / ||u||`` (estimated from the first left-out term by ``'stop'``).
        error_estimate: estimated ``||u* - u|| / ||u||`` (geometric tail; ``inf`` if it diverges).
        growing_term: ``(k, ||term k||, ||term k-1||)`` of the first term that was not smaller than
            the one before, or None (the series does not converge along ``g`` when set).
    """

    gradient: torch.Tensor
    terms: int
    stop: str
    residual: float
    error_estimate: float
    growing_term: tuple = None


def _finite_norm(term: torch.Tensor, index: int) -> float:
    norm = float(term.norm())
    if not math.isfinite(norm):
        raise FloatingPointError(f"Neumann term {index} of the RBP backward is non-finite; J is not "
                                 "contractive - use mode='crbp' (LCP) or fewer neumann_terms")
    return norm


def tail_estimate(stop: str, next_norm: float, term_norm: float, before_norm: float) -> float:
    """Norm estimate of the terms a ``'stop'``-rule series left out, assuming a geometric tail.

    ``next_norm`` is the norm of the first term left out (for ``'tolerance'``: of the last term
    added), ``term_norm`` / ``before_norm`` those of the last two terms added."""
    if stop == "zero_gradient":
        return 0.0
    if stop == "growth":
        return math.inf
    if stop == "tolerance":  # the remainder after the last added term, ratio of the last two
        ratio = term_norm / before_norm if before_norm > 0 else 0.0
        return 0.0 if ratio == 0.0 else (math.inf if ratio >= 1 else next_norm * ratio / (1 - ratio))
    ratio = next_norm / term_norm if term_norm > 0 else math.inf
    return math.inf if ratio >= 1 else next_norm / (1 - ratio)


def neumann_series(vjp: Callable[[torch.Tensor], torch.Tensor], grad: torch.Tensor, *, max_terms: int,
                   tol: float, stop_on_growth: bool, norm_cap=None, rule: str = "stop",
                   grad_norm: Optional[float] = None) -> NeumannResult:
    """``u = sum_k g J^k`` for a finite ``grad`` (``g``), with ``vjp(v) = v J``.

    At most ``max_terms`` terms enter ``u``; ``'stop'`` runs at most ``max_terms + 1`` products (the
    last one measures the residual), ``'skip'`` exactly ``max_terms + 1`` (the last one computes
    the residual of the returned sum). Raises ``FloatingPointError`` on a non-finite term. ``grad_norm``:
    ``float(grad.norm())`` when the caller has it already.
    """
    if rule not in NEUMANN_RULES:
        raise ValueError(f"neumann_series: rule={rule!r}; choose one of {NEUMANN_RULES}")
    grad_norm = float(grad.norm()) if grad_norm is None else grad_norm
    if grad_norm == 0.0:
        return NeumannResult(grad.clone(), 0, "zero_gradient", 0.0, 0.0)
    if rule == "skip":
        return _skip_rule(vjp, grad, grad_norm, max_terms, tol, stop_on_growth, norm_cap)
    total, term, term_norm = grad.clone(), grad, grad_norm
    before_norm = math.nan  # norm of the term before `term` (for the tail estimate)
    used, stop, growing = 0, "max_terms", None
    while True:  # ends: every pass adds a term or breaks, and used <= max_terms
        next_term = vjp(term)
        next_norm = _finite_norm(next_term, used + 1)
        if used >= max_terms:
            break  # next_term is the first term left out
        if stop_on_growth and next_norm >= term_norm:
            stop, growing = "growth", (used + 1, next_norm, term_norm)
            break
        if norm_cap is not None and float((total + next_term).norm()) > norm_cap:
            stop = "norm_cap"
            break
        total.add_(next_term)
        before_norm, term, term_norm, used = term_norm, next_term, next_norm, used + 1
        if next_norm <= tol * grad_norm:
            stop = "tolerance"
            break
    total_norm = max(float(total.norm()), 1e-30)
    return NeumannResult(total, used, stop, next_norm / total_norm,
                         tail_estimate(stop, next_norm, term_norm, before_norm) / total_norm, growing)


def _skip_rule(vjp, grad, grad_norm, max_terms, tol, stop_on_growth, norm_cap) -> NeumannResult:
    """The COCO code's rule (see the module docstring); the result's residual is exact."""
    total, term, previous_norm = grad.clone(), grad, grad_norm
    kept, added, stop, growing = None, 0, "max_terms", None
    norms = [grad_norm]
    for index in range(1, max_terms + 1):
        term = vjp(term)
        norm = _finite_norm(term, index)
        norms.append(norm)
        if norm_cap is not None and float((total + term).norm()) > norm_cap:
            reason = "norm_cap"
        elif stop_on_growth and norm > previous_norm:
            reason = "growth"
            growing = growing or (index, norm, previous_norm)
        elif norm < tol * grad_norm:
            reason = "tolerance"
        else:
            reason = None
        if reason is None:
            total.add_(term)
            added += 1
        else:  # the sum as it stands now is what is returned, unless a later term is dropped too
            kept, stop = (total.clone(), added), reason
        previous_norm = norm
    gradient, terms = kept if kept is not None else (total, added)
    gradient_norm = max(float(gradient.norm()), 1e-30)
    residual = float((grad + vjp(gradient) - gradient).norm()) / gradient_norm
    ratio = norms[-1] / norms[-2] if len(norms) > 1 and norms[-2] > 0 else 0.0
    if growing is not None or ratio >= 1:
        error = math.inf
    else:  # u* - u = r (I - J)^-1: exact for J = c I with ratio c
        error = residual / (1 - ratio)
    return NeumannResult(gradient, terms, stop, residual, error, growing)
