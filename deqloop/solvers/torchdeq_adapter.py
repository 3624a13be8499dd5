"""Adapters that run torchdeq's solvers and return a :class:`Solution`, for side-by-side checks.

torchdeq stops a batch only when its slowest sample converges and does not freeze converged
samples. Its reported residuals belong to the point before the estimate it returns (it returns
f(x) for the best x), so they are slightly pessimistic; they are passed through unchanged.
Registered as ``"torchdeq:anderson"``, ``"torchdeq:broyden"``, ``"torchdeq:fixed_point_iter"``.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from deqloop import inputs
from deqloop.solvers.loop import check_image
from deqloop.solvers.solution import Solution, SolverStatus
from deqloop.validate import known_keys

TORCHDEQ_METHODS = ("anderson", "broyden", "fixed_point_iter")

# the options each torchdeq solver reads (it silently ignores any other keyword; we do not)
_OPTIONS = {
    "anderson": {"m", "lam", "tau"},
    "broyden": {"LBFGS_thres", "ls"},
    "fixed_point_iter": {"tau"},
}


def make_torchdeq_solver(name: str) -> Callable[..., Solution]:
    if name not in TORCHDEQ_METHODS:
        raise ValueError(f"unknown torchdeq solver {name!r}; known: {', '.join(TORCHDEQ_METHODS)}")

    def run(f, z0, *, rtol=1e-4, atol=0.0, max_iter=50, trace=False, **options: Any) -> Solution:
        from deqloop.extras import require

        get_solver = require("torchdeq.solver", f"method 'torchdeq:{name}'").get_solver

        inputs.state("z0", z0)  # the tolerances were checked by the LoopOptions that called this
        known_keys(options, sorted(_OPTIONS[name]), f"solver options of method 'torchdeq:{name}'")
        if atol > 0 and rtol > 0:
            raise ValueError("torchdeq solvers take one tolerance: give rtol or atol, not both")
        stop_mode, tol = ("abs", atol) if atol > 0 else ("rel", rtol)
        calls = [0]

        def counted(z: torch.Tensor) -> torch.Tensor:
            calls[0] += 1
            return check_image(z, f(z), z0.dtype)

        with torch.no_grad():
            z, _, info = get_solver(name)(counted, z0.detach(), max_iter=max_iter, tol=tol, stop_mode=stop_mode, **options)
        B = z0.shape[0]
        # torchdeq's residuals are those of the point *before* its returned estimate f(x)
        abs_r = info["abs_lowest"].reshape(-1).float().expand(B).clone()
        rel = info["rel_lowest"].reshape(-1).float().expand(B).clone()
        measured = abs_r if stop_mode == "abs" else rel
        finite = torch.isfinite(measured)
        converged = finite & (measured <= tol * (1 + 1e-6))
        status = torch.full((B,), int(SolverStatus.MAX_ITER), dtype=torch.long, device=z.device)
        status[converged] = int(SolverStatus.CONVERGED)
        status[~finite] = int(SolverStatus.NONFINITE)
        nstep = info["nstep"].reshape(-1).to(torch.long)
        iterations = nstep.expand(B).clone() if nstep.numel() == 1 else nstep
        rel_trace = info["rel_trace"]
        return Solution(
            z=z,
            converged=converged,
            residual=rel,
            abs_residual=abs_r,
            iterations=iterations.to(z.device),
            nfe=calls[0],
            status=status,
            sample_evals=calls[0] * B,
            trace=rel_trace.T.float() if trace and rel_trace.dim() == 2 else None,
            method=f"torchdeq:{name}",
        )

    run.__name__ = f"torchdeq_{name}"
    return run
