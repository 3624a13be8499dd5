"""Fixed-point correction: grade several states along the solve, not only its end.

The solver budget is cut into segments; each continues from the previous one's answer, and the
state at the end of each segment carries the backward mode's gradient, so a loss on each of them
(weighted by :func:`correction_weights`) also trains the path to the fixed point (DEQ-flow's
fixed-point correction; torchdeq's ``n_states``/``indexing``). The last state is always the
solver's own final answer (each segment keeps its best iterate), whatever cut points are chosen.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

import torch

from deqloop.adjoint import Backward
from deqloop.errors import ConfigError
from deqloop.solvers import Solution
from deqloop.validate import integer, number

__all__ = ["correction_weights", "fixed_point_states", "segments"]


def segments(max_iter: int, states: int | Sequence[int]) -> list[int]:
    """The iterations of each segment: ``states`` segments of ⌈max_iter / states⌉ iterations each
    (as ``LoopedDEQ``'s ``fp_states`` recipe splits its budget), or, for increasing iteration counts
    ``states``, the segments ending there, ``max_iter`` appended when missing (the final answer is
    always graded)."""
    max_iter = integer("max_iter", max_iter)
    if isinstance(states, int) and not isinstance(states, bool):
        n = integer("states", states)
        return [-(-max_iter // n)] * n
    ends = [integer("states entry", k) for k in states]
    if any(b <= a for a, b in zip(ends, ends[1:])) or (ends and ends[-1] > max_iter):
        raise ConfigError(f"states must be increasing iteration counts ≤ max_iter={max_iter}, got {list(states)}")
    if not ends or ends[-1] != max_iter:
        ends.append(max_iter)
    return [b - a for a, b in zip([0, *ends], ends)]


def correction_weights(n: int, gamma: float = 0.8) -> list[float]:
    """The weights of ``n`` graded states, γ^(n − 1 − i) normalised to sum 1: the last (the fixed
    point) largest."""
    integer("n", n)
    number("gamma", gamma, low=0, low_open=True)
    w = [gamma ** (n - 1 - i) for i in range(n)]
    return [v / sum(w) for v in w]


def fixed_point_states(
    f: Callable[[Any], Any],
    z0: Any,
    method: str | None = None,
    backward: str | Backward = "implicit",
    *,
    states: int | Sequence[int] = 2,
    max_iter: int = 50,
    backward_options: dict[str, Any] | None = None,
    **solve_kw: Any,
) -> tuple[list[Any], Solution]:
    """Solve f(z) = z from ``z0`` in the :func:`segments` ``(max_iter, states)``, each from the
    previous segment's answer, and return every segment's answer carrying the
    gradient of ``backward`` (as :func:`deqloop.fixed_point` attaches it), last = the final answer.

    The :class:`~deqloop.solvers.Solution` is the last segment's, with ``iterations``, ``nfe`` and
    ``sample_evals`` summed over all segments. ``solve_kw`` are the other arguments of
    :func:`deqloop.fixed_point` (``rtol``, ``atol``, ``throw``, ``check_every``, solver options).
    """
    from deqloop.adjoint import fixed_point

    out, z = [], z0
    iterations = nfe = sample_evals = 0
    sol = None
    for budget in segments(max_iter, states):
        z_star, sol = fixed_point(f, z, method, backward, max_iter=budget, backward_options=backward_options,
                                  **solve_kw)
        out.append(z_star)
        iterations = iterations + sol.iterations
        nfe += sol.nfe
        sample_evals += sol.sample_evals
        z = sol.z
    assert sol is not None
    sol.iterations = torch.as_tensor(iterations)
    sol.nfe, sol.sample_evals = nfe, sample_evals
    return out, sol
