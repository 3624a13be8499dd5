"""Equilibrium autograd: a fixed point that carries gradients, by one of five backward modes.

    z_star, sol = fixed_point(f, z0, method="anderson", backward="implicit", rtol=1e-4, max_iter=50,
                              backward_options=dict(method="anderson", rtol=1e-6, max_iter=50))

``f`` may close over parameters and inputs; ``z_star`` carries gradients to all of them.

Backward modes:

* ``"implicit"`` — implicit function theorem. The forward solve runs without autograd; ``z_star``
  is ``f(z*)`` re-evaluated once with autograd, and a hook on it replaces the incoming gradient
  v by the solution g of gᵀ = gᵀJ + vᵀ (J = ∂f/∂z at z*), found by a solver of its own (picard is
  the Neumann series). Its convergence is recorded in ``sol.backward``; a failed backward solve
  warns with :class:`BackwardWarning` (or raises :class:`BackwardError` with ``throw=True``).
  Options: ``method``, ``rtol``, ``atol``, ``max_iter``, ``throw``, ``check_every`` and the
  method's own options (e.g. ``m``).
* ``"phantom"`` — from the detached fixed point, ``steps`` damped steps z ← (1 − τ)z + τ f(z)
  with autograd (``steps=1, tau=1``: Jacobian-free backpropagation). Options: ``steps``, ``tau``.
* ``"unrolled"`` — backpropagation through every forward iteration of naive iteration; each
  sample stops at its own convergence. ``z_star`` is the last iterate z_n = f(z_{n-1}) (n ≤
  ``max_iter`` evaluations). No options; the forward ``method`` must be ``"picard"``.
* ``"truncated"`` — the forward solve without autograd (``max_iter`` iterations at most, ending
  at the last state z_n), then ``grad_steps`` iterations with autograd: the progressive-loss
  style of training (z_{n+k}). Options: ``grad_steps``. Needs a :class:`~deqloop.solvers.Solver`
  method (picard, anderson, broyden), not a torchdeq adapter.
* ``"none"`` — no gradient through the solve (``z_star`` is detached).
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import torch

from deqloop.solvers import Picard, Solution, solve
from deqloop.solvers.loop import run_solver

BACKWARD_MODES = ("implicit", "phantom", "unrolled", "truncated", "none")

_IMPLICIT_KEYS = {"method", "rtol", "atol", "max_iter", "throw", "check_every"}
_OPTION_DEFAULTS: dict[str, dict[str, Any]] = {
    "implicit": {"method": "anderson", "rtol": 1e-6, "atol": 0.0, "max_iter": 50, "throw": False},
    "phantom": {"steps": 1, "tau": 1.0},
    "unrolled": {},
    "truncated": {"grad_steps": 1},
    "none": {},
}


class BackwardWarning(RuntimeWarning):
    """The implicit backward solve did not converge for some samples."""


class BackwardError(RuntimeError):
    """The implicit backward solve failed and ``backward_options["throw"]`` was set."""


def backward_options_for(backward: str, options: dict[str, Any] | None) -> dict[str, Any]:
    """Defaults of ``backward`` updated by ``options``; unknown keys are an error."""
    if backward not in BACKWARD_MODES:
        raise ValueError(f"unknown backward mode {backward!r}; allowed: {', '.join(BACKWARD_MODES)}")
    options = dict(options or {})
    merged = {**_OPTION_DEFAULTS[backward], **options}
    if backward == "implicit":
        return merged  # method options (e.g. m) are validated by the solver itself
    unknown = sorted(set(options) - set(_OPTION_DEFAULTS[backward]))
    if unknown:
        allowed = ", ".join(_OPTION_DEFAULTS[backward]) or "(none)"
        raise TypeError(f"unknown backward option(s) {', '.join(map(repr, unknown))} for backward={backward!r}; allowed: {allowed}")
    if backward == "phantom":
        if isinstance(merged["steps"], bool) or not isinstance(merged["steps"], int) or merged["steps"] < 1:
            raise ValueError(f"phantom steps must be an integer ≥ 1, got {merged['steps']!r}")
        if not 0.0 < float(merged["tau"]) <= 1.0:
            raise ValueError(f"phantom tau must be in (0, 1], got {merged['tau']!r}")
    if backward == "truncated":
        k = merged["grad_steps"]
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"truncated grad_steps must be an integer ≥ 1, got {k!r}")
    return merged


def fixed_point(
    f: Callable[[torch.Tensor], torch.Tensor],
    z0: torch.Tensor,
    method: str = "anderson",
    backward: str = "implicit",
    *,
    rtol: float = 1e-4,
    atol: float = 0.0,
    max_iter: int = 50,
    backward_options: dict[str, Any] | None = None,
    throw: bool = False,
    check_every: int | None = None,
    trace: bool = False,
    **options: Any,
) -> tuple[torch.Tensor, Solution]:
    """Solve f(z) = z from ``z0`` and return ``(z_star, solution)`` with ``z_star`` differentiable.

    Forward arguments are those of :func:`deqloop.solve`; ``backward`` and ``backward_options``
    are described in the module docstring. Under ``torch.no_grad()`` every mode returns the
    detached fixed point without building a graph.
    """
    bopts = backward_options_for(backward, backward_options)
    grad = torch.is_grad_enabled()
    kw = dict(rtol=rtol, atol=atol, max_iter=max_iter, check_every=check_every, trace=trace)

    if backward == "unrolled":
        if method != "picard":
            raise ValueError(f"backward='unrolled' backpropagates through naive iteration: use method='picard', not {method!r}")
        solver = Picard.from_options("picard", options)
        sol = run_solver(f, z0, solver, method="picard", differentiable=grad, keep="last", return_image=True, **kw)
        z = sol.z
        sol.z = z.detach()
        if throw:
            sol.raise_on_failure()
        return z, sol

    # truncated: "n iterations, then k": keep the n-th state itself, z_n = f(z_{n-1})
    image = dict(keep="last", return_image=True) if backward == "truncated" else {}
    sol = solve(f, z0, method, throw=throw, **kw, **image, **options)
    z_star = sol.z.detach()
    if not grad or backward == "none":
        return z_star, sol

    if backward == "phantom":
        z, tau = z_star, float(bopts["tau"])
        for _ in range(bopts["steps"]):
            z = f(z) if tau == 1.0 else torch.lerp(z, f(z), tau)
        return z, sol

    if backward == "truncated":
        z = z_star
        for _ in range(bopts["grad_steps"]):
            z = f(z)
        return z, sol

    return _attach_implicit(f, z_star, sol, bopts), sol


def _attach_implicit(f, z_star: torch.Tensor, sol: Solution, bopts: dict[str, Any]) -> torch.Tensor:
    """Re-evaluate f at z* with autograd and hook the implicit-function-theorem solve onto it."""
    z_in = z_star.clone().requires_grad_()
    fz = f(z_in)
    if not fz.requires_grad:  # f depends on nothing that needs gradients
        return fz
    solver_kw = {k: v for k, v in bopts.items() if k not in _IMPLICIT_KEYS}
    stats = sol.backward
    busy = [False]  # the adjoint's own VJPs flow back through fz: let them pass unchanged

    def vjp_solve(v: torch.Tensor) -> torch.Tensor | None:
        if busy[0] or v is None:
            return None
        busy[0] = True
        try:
            return _solve_adjoint(v)
        finally:
            busy[0] = False

    def _solve_adjoint(v: torch.Tensor) -> torch.Tensor:
        def adjoint(g: torch.Tensor) -> torch.Tensor:  # g ↦ Jᵀg + v
            (jtg,) = torch.autograd.grad(fz, z_in, g, retain_graph=True)
            return jtg + v

        bsol = solve(adjoint, v.detach(), bopts["method"], rtol=bopts["rtol"], atol=bopts["atol"],
                     max_iter=bopts["max_iter"], check_every=bopts.get("check_every"), **solver_kw)
        stats.converged, stats.residual, stats.iterations = bsol.converged, bsol.residual, bsol.iterations
        stats.nfe += bsol.nfe
        stats.calls += 1
        if not bool(bsol.converged.all()):
            failed = bsol.failures()
            msg = (f"implicit backward solve ({bopts['method']}, rtol={bopts['rtol']}, max_iter={bopts['max_iter']}) "
                   f"did not converge for {len(failed)} of {bsol.batch_size} samples; largest relative residual "
                   f"{float(bsol.residual.max()):.3g}. Gradients for those samples are approximate.")
            if bopts["throw"]:
                raise BackwardError(msg)
            warnings.warn(msg, BackwardWarning, stacklevel=2)
        return bsol.z

    fz.register_hook(vjp_solve)
    return fz
