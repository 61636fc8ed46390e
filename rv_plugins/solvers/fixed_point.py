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
``solver.logger`` is replaced); so does a NaN/Inf loss gradient (``neumann_stop='nonfinite_gradient'``;
``on_nonfinite_gradient='raise'`` raises instead). The series stops on a term that does not decrease
(``>=``), so a map with ``|J| = 1`` along ``g`` (e.g. ``F = w h`` with ``|w| = 1``) cannot loop
forever, and it never runs more than ``neumann_terms`` products (:mod:`rv_plugins.solvers.neumann`
also has the authors' COCO rule, ``neumann_rule='skip'``). A transition whose output does not depend
on ``h`` through autograd cannot be differentiated in ``h``: the RBP and LCP modes raise an error
saying so.

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
from typing import Callable, Optional, Tuple

import torch
from torch import nn

from rv_plugins.ops.modes import is_tracing_or_exporting
from rv_plugins.solvers.info import NEUMANN_STOPS, RateLimitedWarning, SolverInfo
from rv_plugins.solvers.neumann import NEUMANN_RULES, neumann_series
from rv_plugins.solvers.settings import MODES, NONFINITE_GRADIENT_ACTIONS, SolverSettings, real_setting

__all__ = ["FixedPointSolver", "SolverInfo", "lipschitz_penalty", "MODES", "NEUMANN_STOPS", "NEUMANN_RULES",
           "NONFINITE_GRADIENT_ACTIONS", "RateLimitedWarning", "Transition"]

Transition = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

LOGGER = logging.getLogger(__name__)


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


def lipschitz_penalty(h_next: torch.Tensor, h_prev: torch.Tensor, lam: float,
                      reduction: str = "sum") -> Tuple[torch.Tensor, torch.Tensor]:
    """LCP of one step ``h_next = F(x, h_prev)``: ``relu(1^T dF/dh - lam)^2`` reduced.

    ``h_prev`` must be part of ``h_next``'s graph. Returns ``(penalty, colsum)`` with ``colsum``
    ``= 1^T J`` shaped like ``h_prev``; both keep a graph to F's parameters (``create_graph``).
    ``reduction='sum'`` is the authors' COCO choice, ``'mean'`` their Pathfinder one.
    """
    colsum, = torch.autograd.grad(h_next, h_prev, torch.ones_like(h_next), create_graph=True, allow_unused=True)
    if colsum is None:
        raise _state_not_used("the LCP (lipschitz_penalty)")
    excess = torch.relu(colsum - lam).pow(2)
    if reduction == "sum":
        return excess.sum(), colsum
    if reduction == "mean":
        return (excess.mean() if excess.numel() else excess.sum()), colsum
    raise ValueError(f"lipschitz_penalty: unknown reduction {reduction!r}; use 'sum' or 'mean'")


class FixedPointSolver(SolverSettings):
    """Iterate ``h <- F(x, h)`` ``steps`` times and pick how gradients are computed.

    Args:
        mode: one of ``'bptt'``, ``'cbptt'``, ``'rbp'``, ``'crbp'`` (see the module docstring).
        steps: applications of F, an int (>= 1; RBP modes need >= 2 to have a state to detach from).
        neumann_terms: most vector-Jacobian products in the RBP backward, an int >= 0 (0: the
            one-step gradient) or ``None`` (the call's ``steps``). The authors' COCO code: 15.
        neumann_tol: stop the series once a term's norm is below ``neumann_tol * ||g||`` (>= 0).
        stop_on_growth: stop (and drop the term) when a term's norm is not smaller than the
            previous one's, i.e. the series does not converge along ``g`` (as the authors).
        neumann_norm_cap: the authors' extra rule: drop the term when the norm of the accumulated
            sum would exceed this absolute bound (their code: 1.0); ``None``: off.
        neumann_rule: what a term that breaks one of the three rules above does (``NEUMANN_RULES``):
            ``'stop'`` ends the series (the authors' Pathfinder code); ``'skip'`` leaves it out,
            keeps iterating to ``neumann_terms`` and returns the sum as it stood at the last skipped
            term (the authors' COCO code). See :mod:`rv_plugins.solvers.neumann` for the sources.
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
        on_nonfinite_gradient: a NaN/Inf loss gradient reaching the state in an RBP mode always sets
            ``info.rbp_unreliable`` with ``neumann_stop='nonfinite_gradient'``; ``'warn'`` then logs
            the (rate-limited) warning and passes the gradient on unchanged, ``'raise'`` raises
            ``FloatingPointError`` from ``backward``.
    """

    def __init__(self, mode: str = "crbp", steps: int = 20, neumann_terms: Optional[int] = None,
                 neumann_tol: float = 1e-9, stop_on_growth: bool = True,
                 neumann_norm_cap: Optional[float] = None, lcp_lambda: float = 0.9,
                 lcp_weight: float = 1.0, lcp_reduction: str = "sum", check_finite: bool = True,
                 residual_threshold: float = 0.05, neumann_error_threshold: float = 0.1,
                 warn_interval_s: float = 60.0, neumann_rule: str = "stop",
                 on_nonfinite_gradient: str = "warn"):
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
        self.neumann_rule = neumann_rule
        self.on_nonfinite_gradient = on_nonfinite_gradient
        self.lcp_lambda, self.lcp_weight, self.lcp_reduction = lcp_lambda, lcp_weight, lcp_reduction
        self.check_finite = check_finite
        self.residual_threshold = real_setting("residual_threshold", residual_threshold, allow_inf=True,
                                               strict=True)
        self.neumann_error_threshold = real_setting("neumann_error_threshold", neumann_error_threshold,
                                                    allow_inf=True, strict=True)
        self.warner = RateLimitedWarning(real_setting("warn_interval_s", warn_interval_s, allow_inf=True))
        self.logger: logging.Logger = LOGGER

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
        """Return a view of ``h`` whose incoming gradient is mapped to ``g (I - J)^-1``
        (:func:`rv_plugins.solvers.neumann.neumann_series` with this solver's settings).

        The hook sits on a view, so gradients that reach ``h`` from the LCP's graph (which may
        use ``h`` as a saved output) are not passed through the Neumann series.
        """
        max_terms = steps if self.neumann_terms is None else self.neumann_terms

        def vjp(term: torch.Tensor) -> torch.Tensor:
            product, = torch.autograd.grad(h, h_prev, term, retain_graph=True, allow_unused=True)
            if product is None:
                raise _state_not_used("RBP", self.mode)
            return product

        def implicit_gradient(grad: torch.Tensor) -> torch.Tensor:
            grad_norm = float(grad.norm())
            if not math.isfinite(grad_norm):
                return self._nonfinite_gradient(grad, info)
            try:
                result = neumann_series(vjp, grad, max_terms=max_terms, tol=self.neumann_tol,
                                        stop_on_growth=self.stop_on_growth, norm_cap=self.neumann_norm_cap,
                                        rule=self.neumann_rule, grad_norm=grad_norm)
            except FloatingPointError as err:
                raise FloatingPointError(f"FixedPointSolver(mode={self.mode!r}): {err}") from None
            info.neumann_terms, info.neumann_stop = result.terms, result.stop
            info.neumann_residual, info.neumann_error_estimate = result.residual, result.error_estimate
            if result.growing_term is not None:
                index, norm, previous = result.growing_term
                kept = ("stopped" if self.neumann_rule == "stop" else
                        "skipped it ('skip' rule) and returned")
                self._unreliable(info, (
                    f"the Neumann series {kept} after {result.terms} term(s): term {index} ({norm:.3g}) is "
                    f"not smaller than term {index - 1} ({previous:.3g}), so J is not contractive along "
                    "the gradient and the series does not converge; use mode='crbp' (LCP) or BPTT"))
            elif result.error_estimate > self.neumann_error_threshold:
                why = (f"neumann_norm_cap={self.neumann_norm_cap:g} cut it" if result.stop == "norm_cap" else
                       f"J contracts too slowly for neumann_terms={max_terms}; allow more terms "
                       "or use mode='crbp' (LCP)")
                self._unreliable(info, (
                    f"the Neumann series ({result.terms} term(s), stopped by {result.stop}) has an "
                    f"estimated relative error of {result.error_estimate:.3g} > "
                    f"{self.neumann_error_threshold:g}: {why}"))
            return result.gradient

        out = h.view_as(h)
        out.register_hook(implicit_gradient)
        return out

    def _nonfinite_gradient(self, grad: torch.Tensor, info: SolverInfo) -> torch.Tensor:
        """A NaN/Inf gradient reached the state: no series (it would be NaN); flag, then warn and
        pass it on unchanged (as BPTT would: AMP's grad scaler skips such steps), or raise."""
        info.neumann_terms, info.neumann_stop = 0, "nonfinite_gradient"
        info.neumann_residual = info.neumann_error_estimate = math.nan
        bad = "NaN" if bool(torch.isnan(grad).any()) else "Inf"
        reason = (f"the loss gradient reaching the solver's state holds {bad} (no Neumann series was run; "
                  "the gradient is passed on unchanged): the loss or the layers after the solver are "
                  "not finite - check the loss, lower the learning rate, or under fp16 autocast let "
                  "the grad scaler skip the step")
        info.flag_unreliable(reason)
        if self.on_nonfinite_gradient == "raise":
            raise FloatingPointError(f"FixedPointSolver(mode={self.mode!r}, on_nonfinite_gradient='raise'): "
                                     f"{reason}")
        self.warner(self.logger, f"FixedPointSolver(mode={self.mode!r}): RBP gradient unreliable: {reason}")
        return grad


def _state_not_used(what: str, mode: Optional[str] = None) -> RuntimeError:
    owner = "FixedPointSolver" if mode is None else f"FixedPointSolver(mode={mode!r})"
    return RuntimeError(
        f"{owner}: the transition's output does not depend on its state h through "
        f"autograd (it ignores h, or cuts it off: h.detach(), h.data, torch.no_grad() or a round trip "
        f"through numpy inside F); {what} differentiates F with respect to h. Make F(x, h) differentiable "
        "in h, or use mode='bptt' for a transition that does not read its state")
