"""``analyze(model, x)``: every stability measure of a batch of inputs, in one report.

Stages, in order (each can be left out through ``measures``, except reachability):

1. Reachability: solve from each initial state in ``inits``; convergence, iterations, residual,
   contraction factor; agreement between initial states; distinct fixed points and their spread
   (from the first init, the *reference*).
2. ``"spectrum"`` — leading eigenvalues of J = ∂f/∂z at z*, ρ(J) and the regime label.
3. ``"sigma_max"`` — σ_max(J).
4. ``"resolvent"`` — ‖(I − J)⁻¹‖₂.
5. ``"sensitivity"`` — ‖∂z*/∂e · v‖ by the implicit function theorem.
6. ``"smoothness"`` — ‖Δz*‖ / ‖Δe‖ for a small perturbation, both solved from z*.
   ``"input_fd"`` — the same with each solve started at its own input, z₀ = e and z₀ = e + Δe
   (the paper's start for every recall mode): 0 where z* is locally constant in e.
7. ``"backward"`` — the model's implicit backward solve for a random cotangent.

The paper's weight diagnostics (:func:`deqloop.analysis.weights.weight_diagnostics`) need no
input and are always included.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from deqloop.analysis.backward import backward_stats
from deqloop.analysis.jacobian import EIG_METHODS, LoopJacobian, leading_eigenvalues
from deqloop.analysis.norms import RESOLVENT_METHODS, resolvent_norm, sigma_max
from deqloop.analysis.reachability import agreement, count_distinct, relative_spread, solve_from
from deqloop.analysis.report import StabilityReport, regimes
from deqloop.analysis.sensitivity import input_sensitivity, local_smoothness
from deqloop.analysis.weights import weight_diagnostics
from deqloop import inputs
from deqloop.errors import ConfigError, InputError, InputTypeError
from deqloop.model import INITS
from deqloop.validate import choice, integer, known_keys, number, quoted

__all__ = ["MEASURES", "AnalysisOptions", "analyze"]

MEASURES = ("spectrum", "sigma_max", "resolvent", "sensitivity", "smoothness", "input_fd", "backward")


@dataclass
class AnalysisOptions:
    """Everything :func:`analyze` can be told; validated at construction.

    Solving (``None``: the model's own setting, so reachability is judged on its budget):
        inits: initial states to solve from, a non-empty tuple of ``"embed"``, ``"zeros"``,
            ``"noise"``; the first is the reference whose fixed points the geometry uses.
        solver, solver_options, max_iter, rtol, atol: the forward solve.
        noise_scale: standard deviation of the ``"noise"`` initial state.

    What to compute:
        measures: a subset of ``MEASURES``.
        delta: regime margin: contractive ρ < 1 − δ, expansive ρ > 1 + δ, else critical.
        cluster_rtol: relative distance under which two fixed points count as the same (for
            agreement between inits and for distinct fixed points).

    Eigenvalues and norms (J's spectrum, σ_max, ‖(I − J)⁻¹‖):
        eig_method: one of ``EIG_METHODS`` (``"krylov"`` batched Krylov–Schur, ``"arpack"``
            per example with a Krylov–Schur fallback).
        eig_k: leading eigenvalues kept per example; eig_ncv: Krylov dimension;
        eig_tol: relative residual of the leading eigenpair; eig_maxiter: restarts.
        resolvent_method: one of ``RESOLVENT_METHODS``: ``"normal"`` (smallest eigenvalue of
            (I − J)ᵀ(I − J); cheap, limited to moderate condition numbers in float32) or
            ``"inverse"`` (largest of (I − J)⁻¹(I − J)⁻ᵀ; two linear solves per product).
        resolvent_ncv, resolvent_maxiter: Krylov dimension and restarts for ‖(I − J)⁻¹‖.

    Linear solves (GMRES, for the implicit function theorem and the resolvent):
        linear_rtol, linear_restart, linear_maxiter (restart cycles).

    Sensitivity and smoothness:
        directions: random unit directions per example for ‖∂z*/∂e · v‖.
        smoothness_eps: perturbation size relative to ‖e‖; refine_rtol, refine_max_iter: the
            tight re-solves of the base and perturbed fixed points (``"input_fd"`` solves from
            z₀ = e with at least the solve's ``max_iter``).

    Backward:
        backward_options: options of the implicit backward solve; ``None``: the model's
            ``backward_options`` (when its backward is implicit) over the library defaults.

    Other:
        seed: random directions, start vectors and noise (the global RNG is not touched).
        progress: show a tqdm progress bar (it appears only if the analysis takes over 2 s).
    """

    inits: tuple[str, ...] = ("embed", "zeros", "noise")
    solver: str | None = None
    solver_options: dict[str, Any] | None = None
    max_iter: int | None = None
    rtol: float | None = None
    atol: float | None = None
    noise_scale: float | None = None
    measures: tuple[str, ...] = MEASURES
    delta: float = 0.05
    cluster_rtol: float = 1e-2
    eig_method: str = "krylov"
    eig_k: int = 6
    eig_ncv: int = 20
    eig_tol: float = 1e-4
    eig_maxiter: int = 30
    resolvent_method: str = "normal"
    resolvent_ncv: int = 20
    resolvent_maxiter: int = 10
    linear_rtol: float = 1e-5
    linear_restart: int = 30
    linear_maxiter: int = 3
    directions: int = 4
    smoothness_eps: float = 1e-2
    refine_rtol: float = 1e-5
    refine_max_iter: int = 100
    backward_options: dict[str, Any] | None = None
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        from deqloop.solvers import available_solvers

        self.inits = (self.inits,) if isinstance(self.inits, str) else tuple(self.inits)
        if not self.inits:
            raise ConfigError(f"inits must name at least one initial state; allowed: {quoted(INITS)}")
        for init in self.inits:
            choice("init", init, INITS)
        if len(set(self.inits)) != len(self.inits):
            raise ConfigError(f"inits must not repeat, got {self.inits}")
        self.measures = (self.measures,) if isinstance(self.measures, str) else tuple(self.measures)
        for m in self.measures:
            choice("measure", m, MEASURES)
        choice("resolvent_method", self.resolvent_method, RESOLVENT_METHODS)
        choice("eig_method", self.eig_method, EIG_METHODS)
        if self.solver is not None:
            choice("solver", self.solver, available_solvers())
        for name in ("solver_options", "backward_options"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, dict):
                raise ConfigError(f"{name} must be a dict or None, got {type(v).__name__}")
        for name, minimum in (("eig_k", 1), ("eig_ncv", self.eig_k + 1), ("eig_maxiter", 1), ("resolvent_ncv", 2),
                              ("resolvent_maxiter", 1), ("linear_restart", 1), ("linear_maxiter", 1),
                              ("directions", 1), ("refine_max_iter", 1), ("seed", 0)):
            integer(name, getattr(self, name), minimum)
        if self.max_iter is not None:
            integer("max_iter", self.max_iter)
        for name in ("eig_tol", "linear_rtol", "refine_rtol", "delta", "cluster_rtol", "smoothness_eps"):
            number(name, getattr(self, name), low=0, high=1, low_open=True, high_open=True)
        for name in ("rtol", "atol", "noise_scale"):
            if getattr(self, name) is not None:
                number(name, getattr(self, name), low=0)
        if not isinstance(self.progress, bool):
            raise ConfigError(f"progress must be a bool, got {self.progress!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _options(options: AnalysisOptions | None, overrides: dict[str, Any]) -> AnalysisOptions:
    known_keys(overrides, [f.name for f in dataclasses.fields(AnalysisOptions)], "analyze")
    if options is None:
        return AnalysisOptions(**overrides)
    if not isinstance(options, AnalysisOptions):
        raise ConfigError(f"options must be an AnalysisOptions, got {type(options).__name__}")
    return dataclasses.replace(options, **overrides) if overrides else options


class _Stages:
    """Progress bar over stages and the time each took."""

    def __init__(self, total: int, enabled: bool):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc="analyze", delay=2.0, disable=not enabled, leave=False)
        self.timings: dict[str, float] = {}

    def run(self, name: str, fn, *args, **kwargs):
        self.bar.set_postfix_str(name)
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t
        self.bar.update(1)
        return out

    def close(self) -> None:
        self.bar.close()


def analyze(model, x: Tensor, options: AnalysisOptions | None = None, **overrides: Any) -> StabilityReport:
    """Stability analysis of ``model`` (a :class:`~deqloop.model.LoopedDEQ`) on inputs ``x``.

    Args:
        model: the looped model; it is not modified (its attention backend is switched to
            ``"math"`` only while Jacobian graphs are built).
        x: token ids ``(B, *grid)`` (checked as by :meth:`LoopedDEQ.embed`: integer ids in
            ``[0, vocab_size)``, ``B ≥ 1``; bad input raises :class:`~deqloop.errors.InputError`).
        options: an :class:`AnalysisOptions`; keyword arguments override its fields (or build
            one), e.g. ``analyze(model, x, inits=("zeros",), measures=("spectrum",))``.

    Returns:
        a :class:`StabilityReport`. All per-example geometry is evaluated at the fixed points
        reached from ``options.inits[0]``.
    """
    from deqloop.model import LoopedDEQ

    if not isinstance(model, LoopedDEQ):
        raise InputTypeError(f"model must be a LoopedDEQ, got {type(model).__name__}")
    bad = [name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        raise InputError(f"model has non-finite weights (NaN or inf) in {', '.join(bad[:3])}"
                         f"{f' and {len(bad) - 3} more' if len(bad) > 3 else ''}: there is no map to analyze")
    inputs.tensor("x", x)
    opts = _options(options, overrides)
    given = {"solver": opts.solver, "solver_options": opts.solver_options, "max_iter": opts.max_iter,
             "rtol": opts.rtol, "atol": opts.atol, "init_scale": opts.noise_scale}
    cfg = model.config.solve.with_(**{k: v for k, v in given.items() if v is not None})
    solver, solver_options, max_iter, rtol, atol = cfg.solver, cfg.solver_options, cfg.max_iter, cfg.rtol, cfg.atol
    scale = cfg.init_scale
    gen = torch.Generator().manual_seed(opts.seed)
    device = next(model.parameters()).device
    measures = set(opts.measures)
    needs_jacobian = bool(measures & {"spectrum", "sigma_max", "resolvent", "sensitivity"})
    stages = _Stages(len(opts.inits) + needs_jacobian + len(measures), opts.progress)
    try:
        with torch.no_grad():
            e = model.embed(x.to(device))  # (B, *grid, D)
        B = e.shape[0]
        n = e[0].numel()

        # 1. reachability
        reach, solutions = {}, {}
        for init in opts.inits:
            reach[init], solutions[init] = stages.run(
                f"solve[{init}]", solve_from, model, e, init, solver=solver, rtol=rtol, atol=atol,
                max_iter=max_iter, scale=scale, generator=gen, solver_options=solver_options,
            )
        ref = opts.inits[0]
        z_star = solutions[ref].z.detach()
        ok = reach[ref].converged
        agree = {}
        for i, a in enumerate(opts.inits):
            for b in opts.inits[i + 1:]:
                agree[f"{a}/{b}"], _ = agreement(solutions[a].z, solutions[b].z, reach[a].converged, reach[b].converged, opts.cluster_rtol)
        zc = z_star.cpu()[ok]
        report = StabilityReport(
            batch=B,
            grid=list(e.shape[1:-1]),
            state_dim=n,
            model=_plain_config(model.config),
            options=opts.to_dict(),
            reference_init=ref,
            reachability=reach,
            agreement=agree,
            converged_fraction=reach[ref].converged_fraction,
            distinct_fixed_points=count_distinct(zc, opts.cluster_rtol),
            fixed_point_spread=relative_spread(zc),
            weights=weight_diagnostics(model),
        )

        if needs_jacobian:
            jac = stages.run("jacobian", LoopJacobian.from_model, model, z_star, e)
        linear = dict(rtol=opts.linear_rtol, restart=opts.linear_restart, maxiter=opts.linear_maxiter)

        # 2–4. geometry of J
        if "spectrum" in measures:
            est = stages.run("spectrum", leading_eigenvalues, jac, method=opts.eig_method, k=opts.eig_k,
                             ncv=opts.eig_ncv, tol=opts.eig_tol, maxiter=opts.eig_maxiter, seed=opts.seed)
            report.spectral_radius = est.radius
            report.eigenvalues = est.eigenvalues
            report.eig_converged = est.converged
            report.regime = regimes(est.radius, opts.delta)
        if "sigma_max" in measures:
            s = stages.run("sigma_max", sigma_max, jac, ncv=opts.eig_ncv, tol=opts.eig_tol,
                           maxiter=opts.eig_maxiter, seed=opts.seed)
            report.sigma_max, report.sigma_converged = s.value, s.converged
        if "resolvent" in measures:
            r = stages.run("resolvent", resolvent_norm, jac, method=opts.resolvent_method, ncv=opts.resolvent_ncv, tol=opts.eig_tol,
                           maxiter=opts.resolvent_maxiter, linear_rtol=opts.linear_rtol,
                           linear_restart=opts.linear_restart, linear_maxiter=opts.linear_maxiter, seed=opts.seed)
            report.resolvent_norm, report.resolvent_converged = r.value, r.converged

        # 5–6. input dependence
        if "sensitivity" in measures:
            sens = stages.run("sensitivity", input_sensitivity, jac, opts.directions, seed=opts.seed, **linear)
            report.input_sensitivity = sens.rms
            report.sensitivity_converged = sens.converged.all(dim=1)
        if "smoothness" in measures:
            sm = stages.run("smoothness", local_smoothness, model, e, z_star, eps=opts.smoothness_eps,
                            seed=opts.seed + 1, solver=solver, rtol=opts.refine_rtol, atol=0.0,
                            max_iter=opts.refine_max_iter, solver_options=solver_options)
            report.local_smoothness = sm.ratio
        if "input_fd" in measures:
            fd = stages.run("input_fd", local_smoothness, model, e, z_star, eps=opts.smoothness_eps, start="input",
                            seed=opts.seed + 1, solver=solver, rtol=opts.refine_rtol, atol=0.0,
                            max_iter=max(max_iter, opts.refine_max_iter), solver_options=solver_options)
            report.input_fd = fd.ratio

        # 7. backpropagation
        if "backward" in measures:
            conv, iters, res = stages.run("backward", backward_stats, model, e, z_star, solver=solver,
                                          solver_options=solver_options, options=opts.backward_options, seed=opts.seed)
            report.backward_converged, report.backward_iterations, report.backward_residual = conv, iters, res
        report.timings = stages.timings
        return report
    finally:
        stages.close()


def _plain_config(config) -> dict[str, Any]:
    """The model's architecture and solve settings in one flat dict of plain values."""
    d = config.to_dict()
    flat = {**d["arch"], **d["solve"]}
    flat["grid"] = list(flat["grid"])
    return flat
