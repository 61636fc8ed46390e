"""The validated settings of a :class:`~rv_plugins.solvers.fixed_point.FixedPointSolver`: every one is
checked when the solver is built and again whenever it is reassigned (``solver.steps = 0`` raises)."""
import math
import numbers
from typing import Any, Callable, Optional

from rv_plugins.solvers.neumann import NEUMANN_RULES

__all__ = ["MODES", "NONFINITE_GRADIENT_ACTIONS", "SolverSettings", "real_setting"]

MODES = ("bptt", "cbptt", "rbp", "crbp")
NONFINITE_GRADIENT_ACTIONS = ("warn", "raise")


def real_setting(name: str, value, minimum: float = 0.0, allow_inf: bool = False,
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


def _validated(name: str, check: Callable[[Any, Any], Any]) -> property:
    """A property whose setter stores ``check(solver, value)`` (which raises for a bad value)."""
    attr = f"_{name}"
    return property(lambda self: getattr(self, attr), lambda self, value: setattr(self, attr, check(self, value)),
                    doc=f"``{name}``, checked whenever it is set")


def _one_of(name: str, choices: tuple, hint: str = "") -> Callable[[Any, Any], Any]:
    def check(_, value):
        if value not in choices:
            raise ValueError(f"FixedPointSolver: {name}={value!r}; choose one of {choices}{hint}")
        return value
    return check


def _neumann_terms(_, value) -> Optional[int]:
    if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0):
        raise ValueError(f"FixedPointSolver: neumann_terms={value!r}; need an integer >= 0 "
                         "(0: one-step gradient) or None (as many as steps)")
    return None if value is None else int(value)


class SolverSettings:
    """Validated properties shared by the solver (``mode`` is set first and not reassigned)."""

    mode: str

    @staticmethod
    def _valid_steps(steps, mode: str) -> int:
        minimum = 2 if mode in ("rbp", "crbp") else 1
        if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < minimum:
            raise ValueError(f"FixedPointSolver(mode={mode!r}): steps={steps!r}; need an integer "
                             f">= {minimum}")
        return int(steps)

    steps = _validated("steps", lambda self, value: self._valid_steps(value, self.mode))
    neumann_terms = _validated("neumann_terms", _neumann_terms)
    neumann_tol = _validated("neumann_tol", lambda _, value: real_setting("neumann_tol", value))
    neumann_norm_cap = _validated("neumann_norm_cap", lambda _, value: None if value is None else real_setting(
        "neumann_norm_cap", value, strict=True))
    neumann_rule = _validated("neumann_rule", _one_of(
        "neumann_rule", NEUMANN_RULES, " ('stop': the authors' Pathfinder code, 'skip': their COCO code)"))
    on_nonfinite_gradient = _validated("on_nonfinite_gradient", _one_of(
        "on_nonfinite_gradient", NONFINITE_GRADIENT_ACTIONS))
    lcp_lambda = _validated("lcp_lambda", lambda _, value: real_setting("lcp_lambda", value))
    lcp_weight = _validated("lcp_weight", lambda _, value: real_setting("lcp_weight", value))

    @property
    def uses_lcp(self) -> bool:
        return self.mode in ("cbptt", "crbp")

    @property
    def uses_rbp(self) -> bool:
        return self.mode in ("rbp", "crbp")

    def __repr__(self) -> str:
        return (f"FixedPointSolver(mode={self.mode!r}, steps={self.steps}, "
                f"neumann_terms={self.neumann_terms}, neumann_norm_cap={self.neumann_norm_cap}, "
                f"neumann_rule={self.neumann_rule!r}, "
                f"lcp_lambda={self.lcp_lambda}, lcp_weight={self.lcp_weight}, "
                f"lcp_reduction={self.lcp_reduction!r})")
