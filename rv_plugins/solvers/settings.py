"""The validated settings of a :class:`~rv_plugins.solvers.fixed_point.FixedPointSolver`: every one is
checked when the solver is built and again whenever it is reassigned (``solver.steps = 0`` raises)."""
import math
import numbers
from typing import Optional

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
        self._neumann_tol = real_setting("neumann_tol", value)

    @property
    def neumann_norm_cap(self) -> Optional[float]:
        return self._neumann_norm_cap

    @neumann_norm_cap.setter
    def neumann_norm_cap(self, value) -> None:
        self._neumann_norm_cap = None if value is None else real_setting("neumann_norm_cap", value,
                                                                  strict=True)

    @property
    def neumann_rule(self) -> str:
        return self._neumann_rule

    @neumann_rule.setter
    def neumann_rule(self, value) -> None:
        if value not in NEUMANN_RULES:
            raise ValueError(f"FixedPointSolver: neumann_rule={value!r}; choose one of {NEUMANN_RULES} "
                             "('stop': the authors' Pathfinder code, 'skip': their COCO code)")
        self._neumann_rule = value

    @property
    def on_nonfinite_gradient(self) -> str:
        return self._on_nonfinite_gradient

    @on_nonfinite_gradient.setter
    def on_nonfinite_gradient(self, value) -> None:
        if value not in NONFINITE_GRADIENT_ACTIONS:
            raise ValueError(f"FixedPointSolver: on_nonfinite_gradient={value!r}; choose one of "
                             f"{NONFINITE_GRADIENT_ACTIONS}")
        self._on_nonfinite_gradient = value

    @property
    def lcp_lambda(self) -> float:
        return self._lcp_lambda

    @lcp_lambda.setter
    def lcp_lambda(self, value) -> None:
        self._lcp_lambda = real_setting("lcp_lambda", value)

    @property
    def lcp_weight(self) -> float:
        return self._lcp_weight

    @lcp_weight.setter
    def lcp_weight(self, value) -> None:
        self._lcp_weight = real_setting("lcp_weight", value)

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
