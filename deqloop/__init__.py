"""deqloop: looped (weight-tied, single-block) transformers as deep equilibrium models.

The public names are imported lazily, so ``import deqloop.tasks`` stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "solve": "deqloop.solvers",
    "Solution": "deqloop.solvers",
    "SolverStatus": "deqloop.solvers",
    "register_solver": "deqloop.solvers",
    "available_solvers": "deqloop.solvers",
    "SolverError": "deqloop.solvers",
    "fixed_point": "deqloop.adjoint",
    "BackwardError": "deqloop.adjoint",
    "Backward": "deqloop.adjoint",
    "Implicit": "deqloop.adjoint",
    "Phantom": "deqloop.adjoint",
    "Unrolled": "deqloop.adjoint",
    "Truncated": "deqloop.adjoint",
    "NoGrad": "deqloop.adjoint",
    "Neumann": "deqloop.adjoint",
    "BackwardWarning": "deqloop.adjoint",
    "LoopedDEQ": "deqloop.model",
    "LoopOutput": "deqloop.model",
    "Run": "deqloop.run",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'deqloop' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)


if TYPE_CHECKING:  # pragma: no cover
    from deqloop.adjoint import (Backward, BackwardError, BackwardWarning, Implicit, Neumann, NoGrad, Phantom,
                                  Truncated, Unrolled)
    from deqloop.adjoint import fixed_point
    from deqloop.run import Run
    from deqloop.model import LoopedDEQ, LoopOutput
    from deqloop.solvers import (
        Solution,
        SolverError,
        SolverStatus,
        available_solvers,
        register_solver,
        solve,
    )
