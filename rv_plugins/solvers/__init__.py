"""Fixed-point solvers for recurrent models (plain PyTorch): ``from rv_plugins.solvers import FixedPointSolver``."""
from rv_plugins.solvers.fixed_point import FixedPointSolver, SolverInfo, lipschitz_penalty

__all__ = ["FixedPointSolver", "SolverInfo", "lipschitz_penalty"]
