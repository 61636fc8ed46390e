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
  at the last step, ``relu(1^T J - lambda)^2`` reduced by sum or mean, with ``1^T J`` one
  vector-Jacobian product of a ones vector through ``h_N = F(x, h_{N-1})`` (``create_graph=True``).
  The caller adds it to the loss: ``loss = task + info.weighted_lcp`` (``= lcp_weight * info.lcp``).

Penalty scales the C-RBP authors used (their code, read in the public repositories):

* Pathfinder (``c-rbp/pathfinder_experiments``, ``mainclean.py``): ``penalty.mean() * 10``, i.e.
  ``lcp_reduction='mean', lcp_weight=10``, ``lambda = 0.9``.
* COCO mask head (``c-rbp/panoptic_segmentation``, ``detectron2/modeling/backbone/rnns.py``
  ``CBP_penalty`` and ``configs/BASE-RCNN-RFPN-CBP*.yaml``): the sum, weight ``XI = 0.001``,
  ``tau = 0.95`` in their code (the paper says ``lambda = 0.9``), 15 Neumann terms, 20 steps.

When RBP cannot be trusted. RBP's gradient is the implicit-function gradient at a fixed point; it
is wrong when (a) the forward did not reach one (large ``fixed_point_residual``) or (b) the series
``sum_k g J^k`` does not converge within the terms allowed (``J`` not contractive along ``g``).
The solver then sets ``info.rbp_unreliable`` with ``info.rbp_unreliable_reason`` and logs a
rate-limited warning (``logging``, logger ``rv_plugins.solvers.fixed_point`` unless
``solver.logger`` is replaced). The series stops on a term that does not decrease (``>=``), so a
map with ``|J| = 1`` along ``g`` (e.g. ``F = w h`` with ``|w| = 1``) cannot loop forever, and it
never runs more than ``neumann_terms`` products.

Usage::

    solver = FixedPointSolver(mode="crbp", steps=20)
    h, info = solver(cell, x, torch.zeros_like(x))
    loss = criterion(readout(h), target) + info.weighted_lcp
    loss.backward()          # info.neumann_terms / neumann_residual / neumann_stop are filled now

``F`` is any ``nn.Module`` or callable taking ``(x, h)`` and returning one tensor shaped like
``h``; ``x`` and ``h`` may have any shapes. Under ``torch.no_grad()`` every mode just runs the N
steps (no LCP, ``info.lcp is None``), and so it does while a tracer or exporter records it (fvcore,
``torch.jit.trace``, ``torch.export``, ONNX: the LCP's ``autograd.grad`` and the RBP hook are no graph ops).
"""
import logging
import math
import numbers
import time
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import nn

from rv_plugins.ops.modes import is_tracing_or_exporting

MODES = ("bptt", "cbptt", "rbp", "crbp")
NEUMANN_STOPS = ("max_terms", "tolerance", "growth", "norm_cap", "zero_gradient")

Transition = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

LOGGER = logging.getLogger(__name__)


@dataclass
class SolverInfo:
    """What one solver call did. Neumann fields stay ``None`` until ``backward`` reaches ``h``.

    Attributes:
        mode, steps: the mode and the number of applications of F.
        fixed_point_residual: ``||h_N - h_{N-1}|| / ||h_N||`` (a float, no graph).
        lcp: the unweighted penalty ``reduce(relu(1^T J - lambda)^2)`` (a tensor with a graph), or None.
        weighted_lcp: ``lcp_weight * lcp`` to add to the loss, or None.
        jacobian_colsum_max: ``max(1^T J)``, the largest column sum seen by the LCP, or None.
        neumann_terms: vector-Jacobian products added to ``g`` by the RBP backward (last backward).
        neumann_residual: ``||g J^(K+1)|| / ||u||`` of that backward, ``u = sum_{k<=K} g J^k``:
            the relative residual ``||g + u J - u|| / ||u||`` of the linear system ``u (I - J) = g``
            (when stopped by ``neumann_tol`` the last added term stands in for ``g J^(K+1)``).
        neumann_stop: why the series stopped, one of ``NEUMANN_STOPS``: ``'max_terms'`` (used
            ``neumann_terms``), ``'tolerance'`` (a term fell below ``neumann_tol * ||g||``),
            ``'growth'`` (a term was not smaller than the previous one: the series diverges along
            ``g``), ``'norm_cap'`` (the sum would exceed ``neumann_norm_cap``, the authors' rule),
            ``'zero_gradient'`` (``g = 0``).
        neumann_error_estimate: estimated relative error ``||u* - u|| / ||u||`` of the truncated
            series, from the ratio ``r`` of its last two terms (geometric tail ``t / (1 - r)``);
            ``inf`` when ``r >= 1``. A heuristic: exact for ``J = c I``.
        rbp_unreliable: True when RBP's gradient should not be trusted (RBP modes only): the
            forward's residual exceeded ``residual_threshold``, the series stopped on growth, or
            its error estimate exceeded ``neumann_error_threshold``. Set by the forward and/or
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


def _transition_name(transition) -> str:
    if isinstance(transition, nn.Module):
        return type(transition).__name__
    return getattr(transition, "__qualname__", None) or type(transition).__name__


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, (tuple, list)):
        inner = ", ".join(_describe(v) for v in value[:4]) + (", ..." if len(value) > 4 else "")
        return f"a {type(value).__name__} of {len(value)} ({inner})"
    return f"a {type(value).__name__}"


def _check_finite(h: torch.Tensor, step: int, steps: int, mode: str) -> None:
    """Raise when the state at ``step`` holds NaN or Inf."""
    if not bool(torch.isfinite(h).all()):
        raise FloatingPointError(
            f"FixedPointSolver(mode={mode!r}): the state became non-finite (NaN/Inf) at step "
            f"{step} of {steps}; the transition diverges - lower the learning rate, use an LCP "
            "mode ('cbptt'/'crbp') or a smaller lcp_lambda, or run fewer steps")


def _real(name: str, value, minimum: float = 0.0, allow_inf: bool = False,
          strict: bool = False) -> float:
    """``value`` as a float ``>= minimum`` (``> minimum`` if ``strict``), finite unless ``allow_inf``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"FixedPointSolver: {name}={value!r}; need a number")
    value = float(value)
    if math.isnan(value) or (math.isinf(value) and not allow_inf) or value < minimum or (
            strict and value == minimum):
        bound = f"> {minimum}" if strict else f">= {minimum}"
        raise ValueError(f"FixedPointSolver: {name}={value!r}; need a "
                         f"{'' if allow_inf else 'finite '}number {bound}")
    return value


def lipschitz_penalty(h_next: torch.Tensor, h_prev: torch.Tensor, lam: float,
                      reduction: str = "sum") -> Tuple[torch.Tensor, torch.Tensor]:
    """LCP of one step ``h_next = F(x, h_prev)``: ``relu(1^T dF/dh - lam)^2`` reduced.

    ``h_prev`` must be part of ``h_next``'s graph. Returns ``(penalty, colsum)`` with ``colsum``
    ``= 1^T J`` shaped like ``h_prev``; both keep a graph to F's parameters (``create_graph``).
    ``reduction='sum'`` is the authors' COCO choice, ``'mean'`` their Pathfinder one.
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
        steps: applications of F, an int (>= 1; RBP modes need >= 2 to have a state to detach from).
        neumann_terms: most vector-Jacobian products in the RBP backward, an int >= 0 (0: the
            one-step gradient) or ``None`` (the call's ``steps``). The authors' COCO code: 15.
        neumann_tol: stop the series once a term's norm is below ``neumann_tol * ||g||`` (>= 0).
        stop_on_growth: stop (and drop the term) when a term's norm is not smaller than the
            previous one's, i.e. the series does not converge along ``g`` (as the authors).
        neumann_norm_cap: the authors' extra rule: stop (and drop the term) when the norm of the
            accumulated sum would exceed this absolute bound (their code: 1.0); ``None``: off.
        lcp_lambda: the Lipschitz target ``lambda`` (finite, >= 0; the paper 0.9, the authors'
            COCO code 0.95).
        lcp_weight: factor of ``info.weighted_lcp`` (finite, >= 0).
        lcp_reduction: ``'sum'`` over all elements (the authors' COCO head) or ``'mean'`` (their
            Pathfinder model).
        check_finite: raise ``FloatingPointError`` naming the step when a state is NaN/Inf.
        residual_threshold: in RBP modes, a training forward whose ``fixed_point_residual``
            exceeds this flags ``info.rbp_unreliable`` (``inf``: never).
        neumann_error_threshold: a backward whose ``neumann_error_estimate`` exceeds this flags
            ``info.rbp_unreliable`` (``inf``: never; growth always flags).
        warn_interval_s: at most one unreliability warning per this many seconds per solver.
    """

    def __init__(self, mode: str = "crbp", steps: int = 20, neumann_terms: Optional[int] = None,
                 neumann_tol: float = 1e-9, stop_on_growth: bool = True,
                 neumann_norm_cap: Optional[float] = None, lcp_lambda: float = 0.9,
                 lcp_weight: float = 1.0, lcp_reduction: str = "sum", check_finite: bool = True,
                 residual_threshold: float = 0.05, neumann_error_threshold: float = 0.1,
                 warn_interval_s: float = 60.0):
        if mode not in MODES:
            raise ValueError(f"FixedPointSolver: unknown mode {mode!r}; choose one of {MODES}")
        if lcp_reduction not in ("sum", "mean"):
            raise ValueError(f"FixedPointSolver: lcp_reduction={lcp_reduction!r}; use 'sum' or 'mean'")
        self.mode = mode
        self.steps = steps
        self.neumann_terms = neumann_terms
        self.neumann_tol = neumann_tol
        self.stop_on_growth = bool(stop_on_growth)
        self.neumann_norm_cap = neumann_norm_cap
        self.lcp_lambda, self.lcp_weight, self.lcp_reduction = lcp_lambda, lcp_weight, lcp_reduction
        self.check_finite = check_finite
        self.residual_threshold = _real("residual_threshold", residual_threshold, allow_inf=True,
                                        strict=True)
        self.neumann_error_threshold = _real("neumann_error_threshold", neumann_error_threshold,
                                             allow_inf=True, strict=True)
        self.warner = RateLimitedWarning(_real("warn_interval_s", warn_interval_s, allow_inf=True))
        self.logger: logging.Logger = LOGGER

    # validated settings (checked again whenever they are reassigned) -----------------------
    @staticmethod
    def _valid_steps(steps, mode: str) -> int:
        minimum = 2 if mode in ("rbp", "crbp") else 1
        if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < minimum:
            raise ValueError(f"FixedPointSolver(mode={mode!r}): steps={steps!r}; need an integer "
                             f">= {minimum}")
        return int(steps)

    @property
    def steps(self) -> int:
        return self._steps

    @steps.setter
    def steps(self, value) -> None:
        self._steps = self._valid_steps(value, self.mode)

    @property
    def neumann_terms(self) -> Optional[int]:
        return self._neumann_terms

    @neumann_terms.setter
    def neumann_terms(self, value) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral)
                                  or value < 0):
            raise ValueError(f"FixedPointSolver: neumann_terms={value!r}; need an integer >= 0 "
                             "(0: one-step gradient) or None (as many as steps)")
        self._neumann_terms = None if value is None else int(value)

    @property
    def neumann_tol(self) -> float:
        return self._neumann_tol

    @neumann_tol.setter
    def neumann_tol(self, value) -> None:
        self._neumann_tol = _real("neumann_tol", value)

    @property
    def neumann_norm_cap(self) -> Optional[float]:
        return self._neumann_norm_cap

    @neumann_norm_cap.setter
    def neumann_norm_cap(self, value) -> None:
        self._neumann_norm_cap = None if value is None else _real("neumann_norm_cap", value,
                                                                  strict=True)

    @property
    def lcp_lambda(self) -> float:
        return self._lcp_lambda

    @lcp_lambda.setter
    def lcp_lambda(self, value) -> None:
        self._lcp_lambda = _real("lcp_lambda", value)

    @property
    def lcp_weight(self) -> float:
        return self._lcp_weight

    @lcp_weight.setter
    def lcp_weight(self, value) -> None:
        self._lcp_weight = _real("lcp_weight", value)

    @property
    def uses_lcp(self) -> bool:
        return self.mode in ("cbptt", "crbp")

    @property
    def uses_rbp(self) -> bool:
        return self.mode in ("rbp", "crbp")

    def __repr__(self) -> str:
        return (f"FixedPointSolver(mode={self.mode!r}, steps={self.steps}, "
                f"neumann_terms={self.neumann_terms}, neumann_norm_cap={self.neumann_norm_cap}, "
                f"lcp_lambda={self.lcp_lambda}, lcp_weight={self.lcp_weight}, "
                f"lcp_reduction={self.lcp_reduction!r})")

    # running -----------------------------------------------------------------------------
    def __call__(self, transition: Transition, x: torch.Tensor, h0: torch.Tensor,
                 steps: Optional[int] = None) -> Tuple[torch.Tensor, SolverInfo]:
        """Run the transition; ``steps`` overrides the configured count for this call.

        Returns ``(h_N, info)``; ``h_N`` is shaped like ``h0``.
        """
        steps = self.steps if steps is None else self._valid_steps(steps, self.mode)
        if isinstance(transition, (nn.LSTMCell, nn.RNNBase)):
            raise TypeError(
                f"FixedPointSolver: the transition is a {type(transition).__name__}, which takes "
                "and returns a (h, c) tuple or a sequence; the solver needs F(x, h) -> next state, "
                "one tensor shaped like h. Wrap it, e.g. keep h and c stacked in one state tensor "
                "and split it inside a small nn.Module")
        if not torch.is_grad_enabled() or is_tracing_or_exporting():  # a traced graph: the N steps alone
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
            h = self._step(transition, x, h_prev, steps, steps)
        info = SolverInfo(self.mode, steps, self._residual(h, h_prev))
        if self.uses_rbp and info.fixed_point_residual > self.residual_threshold:
            self._unreliable(info, (
                f"fixed-point residual {info.fixed_point_residual:.3g} > "
                f"{self.residual_threshold:g} after {steps} steps: the state has not converged, so "
                "the RBP gradient (which assumes h = F(x, h)) is not this forward's gradient; run "
                "more steps or use mode='crbp' (LCP)"))
        if not (h.requires_grad and h_prev.requires_grad):
            return h, info  # nothing to differentiate: no LCP, no implicit backward
        if self.uses_lcp:
            info.lcp, colsum = lipschitz_penalty(h, h_prev, self.lcp_lambda, self.lcp_reduction)
            info.weighted_lcp = self.lcp_weight * info.lcp
            if colsum.numel():  # an empty batch (e.g. no ROIs) has no column sums
                info.jacobian_colsum_max = float(colsum.detach().max())
        if self.uses_rbp:
            h = self._attach_implicit_backward(h, h_prev, info, steps)
        return h, info

    def _unreliable(self, info: SolverInfo, reason: str) -> None:
        info.flag_unreliable(reason)
        self.warner(self.logger, f"FixedPointSolver(mode={self.mode!r}): RBP gradient unreliable: "
                                 f"{reason}")

    def _step(self, transition: Transition, x: torch.Tensor, h: torch.Tensor, step: int,
              total_steps: int) -> torch.Tensor:
        """One checked application ``F(x, h)``: a tensor shaped like ``h`` (finite if checked)."""
        out = transition(x, h)
        if not isinstance(out, torch.Tensor) or out.shape != h.shape:
            raise TypeError(
                f"FixedPointSolver: the transition {_transition_name(transition)} returned "
                f"{_describe(out)} at step {step}; it must return the next state as one tensor "
                f"shaped like h {tuple(h.shape)} (for a cell returning (h, c) or (out, h), return "
                "only the state, or keep a tuple state stacked in one tensor)")
        if self.check_finite and not is_tracing_or_exporting():  # a traced graph cannot branch on data
            _check_finite(out, step, total_steps, self.mode)
        return out

    def _iterate(self, transition: Transition, x: torch.Tensor, h: torch.Tensor, count: int,
                 total_steps: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Apply F ``count`` times; returns the last two states ``(h_{count-1}, h_count)``."""
        h_prev = h
        for index in range(count):
            h_prev, h = h, self._step(transition, x, h, index + 1, total_steps)
        return h_prev, h

    @staticmethod
    def _residual(h: torch.Tensor, h_prev: torch.Tensor) -> float:
        if is_tracing_or_exporting():  # a float of the data is no part of a traced graph: not measured
            return math.nan
        h, h_prev = h.detach(), h_prev.detach()
        return float((h - h_prev).norm() / h.norm().clamp_min(torch.finfo(h.dtype).tiny))

    def _attach_implicit_backward(self, h: torch.Tensor, h_prev: torch.Tensor,
                                  info: SolverInfo, steps: int) -> torch.Tensor:
        """Return a view of ``h`` whose incoming gradient is mapped to ``g (I - J)^-1``.

        The hook sits on a view, so gradients that reach ``h`` from the LCP's graph (which may
        use ``h`` as a saved output) are not passed through the Neumann series. At most
        ``max_terms + 1`` vector-Jacobian products run (the last one measures the residual).
        """
        max_terms = steps if self.neumann_terms is None else self.neumann_terms
        cap, tol, on_growth = self.neumann_norm_cap, self.neumann_tol, self.stop_on_growth

        def implicit_gradient(grad: torch.Tensor) -> torch.Tensor:
            total, term = grad.clone(), grad
            grad_norm = term_norm = float(grad.norm())
            before_norm = math.nan  # norm of the term before `term` (for the tail estimate)
            used, next_norm, stop = 0, 0.0, "zero_gradient"
            while grad_norm > 0.0:  # ends: every pass adds a term or breaks, and used <= max_terms
                next_term, = torch.autograd.grad(h, h_prev, term, retain_graph=True)
                next_norm = float(next_term.norm())
                if not math.isfinite(next_norm):
                    raise FloatingPointError(
                        f"FixedPointSolver(mode={self.mode!r}): Neumann term {used + 1} of the RBP "
                        "backward is non-finite; J is not contractive - use mode='crbp' (LCP) or "
                        "fewer neumann_terms")
                if used >= max_terms:
                    stop = "max_terms"
                    break  # next_term is the first term left out
                if on_growth and next_norm >= term_norm:
                    stop = "growth"
                    break
                if cap is not None and float((total + next_term).norm()) > cap:
                    stop = "norm_cap"
                    break
                total.add_(next_term)
                before_norm, term, term_norm, used = term_norm, next_term, next_norm, used + 1
                if next_norm <= tol * grad_norm:
                    stop = "tolerance"
                    break
            total_norm = max(float(total.norm()), 1e-30)
            info.neumann_terms, info.neumann_stop = used, stop
            info.neumann_residual = next_norm / total_norm if grad_norm > 0.0 else 0.0
            info.neumann_error_estimate = self._tail_estimate(
                stop, next_norm, term_norm, before_norm) / total_norm
            if stop == "growth":
                self._unreliable(info, (
                    f"the Neumann series stopped after {used} term(s): term {used + 1} "
                    f"({next_norm:.3g}) is not smaller than term {used} ({term_norm:.3g}), so J is "
                    "not contractive along the gradient and the series does not converge; use "
                    "mode='crbp' (LCP) or BPTT"))
            elif info.neumann_error_estimate > self.neumann_error_threshold:
                why = (f"neumann_norm_cap={cap:g} cut it" if stop == "norm_cap" else
                       f"J contracts too slowly for neumann_terms={max_terms}; allow more terms "
                       "or use mode='crbp' (LCP)")
                self._unreliable(info, (
                    f"the Neumann series ({used} term(s), stopped by {stop}) has an estimated "
                    f"relative error of {info.neumann_error_estimate:.3g} > "
                    f"{self.neumann_error_threshold:g}: {why}"))
            return total

        out = h.view_as(h)
        out.register_hook(implicit_gradient)
        return out

    @staticmethod
    def _tail_estimate(stop: str, next_norm: float, term_norm: float, before_norm: float) -> float:
        """Norm estimate of the terms the series left out, assuming a geometric tail.

        ``next_norm`` is the norm of the first term left out (for ``'tolerance'``: of the last
        term added), ``term_norm`` / ``before_norm`` those of the last two terms added."""
        if stop == "zero_gradient":
            return 0.0
        if stop == "growth":
            return math.inf
        if stop == "tolerance":  # the remainder after the last added term, ratio of the last two
            ratio = term_norm / before_norm if before_norm > 0 else 0.0
            return 0.0 if ratio == 0.0 else (math.inf if ratio >= 1 else next_norm * ratio / (1 - ratio))
        ratio = next_norm / term_norm if term_norm > 0 else math.inf
        return math.inf if ratio >= 1 else next_norm / (1 - ratio)
