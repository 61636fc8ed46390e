"""Fixed-point solvers for recurrent models (plain PyTorch; imports no toolkit).

``FixedPointSolver`` runs a transition ``h <- F(h, x)`` in one of ``MODES`` (``'bptt'``,
``'cbptt'``, ``'rbp'``, ``'crbp'``: backprop through time or recurrent back-propagation, each with or
without the Lipschitz-constant penalty :func:`lipschitz_penalty`) and returns a ``SolverInfo``;
``SolverInfo.log_scalars(prefix)`` is the one way its diagnostics become training-log scalars
(used by the mmseg ``RecurrentSegmentor`` and the Detectron2 ``HGRUMaskHead``).
``NEUMANN_STOPS`` lists why the RBP backward's Neumann series can stop and ``NEUMANN_RULES`` the two
rules for a term that breaks a stop condition (the authors' Pathfinder and COCO codes);
``RateLimitedWarning`` is the solver's warning throttle. Files: ``fixed_point.py`` (the solver and
the LCP), ``neumann.py`` (the series), ``settings.py`` (validated settings), ``info.py`` (its report).

    from rv_plugins.solvers import FixedPointSolver, SolverInfo
"""
from rv_plugins.solvers.fixed_point import (MODES, NEUMANN_RULES, NEUMANN_STOPS, NONFINITE_GRADIENT_ACTIONS,
                                            FixedPointSolver, RateLimitedWarning, SolverInfo, Transition,
                                            lipschitz_penalty)

__all__ = ["FixedPointSolver", "SolverInfo", "lipschitz_penalty", "MODES", "NEUMANN_STOPS", "NEUMANN_RULES",
           "NONFINITE_GRADIENT_ACTIONS", "RateLimitedWarning", "Transition"]
