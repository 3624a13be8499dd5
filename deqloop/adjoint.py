"""Backward modes: how gradients reach the parameters through a solved fixed point.

Each mode is a small object with one method, :meth:`Backward.attach`, that turns the solved
fixed point into a tensor carrying gradients (in the manner of optimistix's adjoints):

    Implicit(method="anderson", rtol=1e-6, max_iter=50)   # implicit function theorem
    Phantom(steps=5, tau=0.8)                             # damped steps from the detached z*
    Unrolled()                                            # BPTT through naive iteration
    Truncated(grad_steps=k)                               # k steps with autograd after the solve
    Neumann(k=5, clip=1.0)                                # the IFT's Neumann series, cut after k terms
    NoGrad()                                              # z* detached

``fixed_point(f, z0, backward=Phantom(steps=3))`` and ``LoopedDEQ(..., backward=Phantom(3))``
take an object; the names (``"implicit"``, ``"phantom"``, ``"unrolled"``, ``"truncated"``,
``"none"``) plus an options dict are shorthands, resolved in one place by :func:`as_backward`.
A user's own mode is a subclass that overrides :meth:`Backward.attach` (and, if it needs the
forward solve run differently, :meth:`Backward.solve`).

* :class:`Implicit` — the forward solve runs without autograd; ``f`` is re-evaluated once at z*
  with autograd and a hook replaces the incoming gradient v by the solution g of
  gᵀ = gᵀJ + vᵀ (J = ∂f/∂z at z*), found by a solver of its own (picard is the Neumann series).
  Each backward solve's convergence is recorded in a :class:`~deqloop.solvers.BackwardStats`
  (``sol.backward``, created with the solution) and passed to ``callback``; a failed solve warns
  with :class:`BackwardWarning`, aggregated: the first failure in full, then one line with counts
  every 100 backward passes (:mod:`deqloop.adjoint_warnings`); ``throw=True`` raises
  :class:`BackwardError` instead.
* Second-order gradients (``create_graph=True``) through ``Implicit`` or ``Neumann`` raise
  :class:`BackwardError`: their adjoint is not differentiable. ``Unrolled``, ``Phantom`` and
  ``Truncated`` are plain autograd and support them.
* :class:`Unrolled` — backpropagation through every iteration of naive (Picard) iteration; each
  sample stops at its own convergence. It *is* a forward method too: it always iterates plainly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch

from deqloop.adjoint_warnings import BackwardWarning, backward_warnings
from deqloop.errors import ConfigError, ConfigKeyError, DeqloopError
from deqloop import inputs
from deqloop.solvers import BackwardStats, Picard, Solution, solve, solve_unchecked
from deqloop.solvers.loop import run_solver
from deqloop.validate import choice, integer, known_keys, number

__all__ = ["BACKWARD_MODES", "Backward", "BackwardError", "BackwardWarning", "Implicit", "Neumann", "NoGrad",
           "Phantom", "Truncated", "Unrolled", "as_backward"]

Map = Callable[[torch.Tensor], torch.Tensor]


class BackwardError(DeqloopError, RuntimeError):
    """The implicit backward solve failed and ``throw`` was set."""


def first_order_only(mode: Backward) -> None:
    """Raise :class:`BackwardError` when called in a backward pass that records a graph
    (``create_graph=True``): the adjoint computed by ``mode``'s hook is not differentiable, so a
    second-order gradient through it would be silently wrong."""
    if torch.is_grad_enabled():  # autograd enables grad mode in a backward pass exactly when create_graph
        raise BackwardError(
            f"a second-order gradient (a backward pass with create_graph=True: a gradient penalty, a "
            f"Hessian-vector product, torch.autograd.grad(..., create_graph=True)) reached the {type(mode).__name__} "
            "backward mode, whose adjoint is not differentiable: the result would be wrong. Use Unrolled() (exact "
            "through the iterations) or Phantom / Truncated (plain autograd through steps of f), or differentiate "
            "f itself at the fixed point (as deqloop.tools.jacobian_penalty does)")


@dataclass(frozen=True)
class Backward:
    """Base of the backward modes. Subclasses are frozen dataclasses of their options."""

    name: ClassVar[str] = ""

    def solve(self, f: Map, z0: torch.Tensor, *, method: str | None, options: dict[str, Any],
              check: bool = True, **solve_kw: Any) -> tuple[torch.Tensor, Solution]:
        """Run the forward solve with ``method`` and its ``options`` (``solve_kw``: the other arguments
        of :func:`deqloop.solve`) and attach the gradient. Under ``torch.no_grad()`` the detached
        fixed point is returned without building a graph. ``check=False`` skips the entry check that
        ``z0`` is finite (for a caller that validated it already, saving a host synchronisation).
        """
        run = solve if check else solve_unchecked
        sol = run(f, z0, method or "anderson", **solve_kw, **self._forward_kw(), **options)
        z_star = sol.z.detach()
        if not torch.is_grad_enabled():
            return z_star, sol
        return self.attach(f, z_star, sol), sol

    def attach(self, f: Map, z_star: torch.Tensor, sol: Solution) -> torch.Tensor:
        """The fixed point ``z_star`` (detached) made to carry gradients to what ``f`` closes over."""
        raise NotImplementedError

    def _forward_kw(self) -> dict[str, Any]:
        return {}

    def to_spec(self) -> tuple[str, dict[str, Any]]:
        """``(name, options)``: the shorthand that rebuilds this mode (as stored in checkpoints)."""
        if self.name not in _MODES or type(self) is not _MODES[self.name]:
            raise ConfigError(f"{type(self).__name__} is not a registered backward mode and cannot be stored by name")
        return self.name, self.options()

    def options(self) -> dict[str, Any]:
        """The options that differ from the defaults, as plain values."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if f.name == "solver_options":
                out.update(value)
            elif value != default:
                out[f.name] = value
        return out

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> Backward:
        """Build from a shorthand's options dict; unknown keys are an error listing the allowed ones."""
        known_keys(options, [f.name for f in dataclasses.fields(cls)], f"backward={cls.name!r}")
        return cls(**options)


@dataclass(frozen=True)
class NoGrad(Backward):
    """No gradient through the solve: the fixed point is returned detached."""

    name: ClassVar[str] = "none"

    def attach(self, f: Map, z_star: torch.Tensor, sol: Solution) -> torch.Tensor:
        return z_star


@dataclass(frozen=True)
class Phantom(Backward):
    """From the detached fixed point, ``steps`` damped steps z ← (1 − τ)z + τ f(z) with autograd
    (``steps=1, tau=1``: Jacobian-free backpropagation)."""

    steps: int = 1
    tau: float = 1.0
    name: ClassVar[str] = "phantom"

    def __post_init__(self) -> None:
        integer("phantom steps", self.steps)
        number("phantom tau", self.tau, low=0, high=1, low_open=True)

    def attach(self, f: Map, z_star: torch.Tensor, sol: Solution) -> torch.Tensor:
        z, tau = z_star, float(self.tau)
        for _ in range(self.steps):
            z = f(z) if tau == 1.0 else torch.lerp(z, f(z), tau)
        return z


@dataclass(frozen=True)
class Truncated(Backward):
    """The forward solve without autograd, ending at its last state z_n = f(z_{n−1}), then
    ``grad_steps`` iterations with autograd: the progressive loss's z_{n+k}. Needs a
    :class:`~deqloop.solvers.Solver` method (picard, anderson, broyden), not a torchdeq adapter."""

    grad_steps: int = 1
    name: ClassVar[str] = "truncated"

    def __post_init__(self) -> None:
        integer("truncated grad_steps", self.grad_steps)

    def _forward_kw(self) -> dict[str, Any]:
        return {"keep": "last", "return_image": True}

    def attach(self, f: Map, z_star: torch.Tensor, sol: Solution) -> torch.Tensor:
        z = z_star
        for _ in range(self.grad_steps):
            z = f(z)
        return z


@dataclass(frozen=True)
class Unrolled(Backward):
    """Backpropagation through every Picard iteration of the forward solve (each sample stops at
    its own convergence); the result is the last iterate z_n = f(z_{n−1}). Always iterates plainly:
    ``method`` may only be ``None`` or ``"picard"``."""

    name: ClassVar[str] = "unrolled"

    def solve(self, f: Map, z0: torch.Tensor, *, method: str | None, options: dict[str, Any],
              check: bool = True, **solve_kw: Any) -> tuple[torch.Tensor, Solution]:
        if method not in (None, "picard"):
            raise ConfigError(f"backward='unrolled' backpropagates through naive iteration; it cannot run "
                              f"method={method!r} (leave the method unset or use 'picard')")
        throw = solve_kw.pop("throw", False)
        inputs.callable_map("f", f)
        if check:
            inputs.finite("z0", inputs.state("z0", z0))
        solver = Picard.from_options("picard", options)
        sol = run_solver(f, z0, solver, method="picard", differentiable=torch.is_grad_enabled(), keep="last",
                         return_image=True, **solve_kw)
        z = sol.z
        sol.z = z.detach()
        if throw:
            sol.raise_on_failure()
        return z, sol

    def attach(self, f: Map, z_star: torch.Tensor, sol: Solution) -> torch.Tensor:  # pragma: no cover - solve() does it
        raise NotImplementedError("Unrolled attaches its gradient during the solve")


_IMPLICIT_METHODS = ("picard", "anderson", "broyden")


@dataclass(frozen=True)
class Implicit(Backward):
    """Implicit differentiation: solve gᵀ = gᵀJ + vᵀ at z* with ``method`` to ``rtol``/``atol``
    in at most ``max_iter`` vector-Jacobian products. ``solver_options`` go to the method (e.g.
    ``{"m": 5}``); ``callback(stats)`` is called after each backward solve.

    ``fallback="jfb"``: a sample whose forward or backward solve did not converge takes the
    Jacobian-free gradient g = v instead (backpropagation through one application of f, as
    ``Phantom(steps=1, tau=1)``), since the implicit function theorem says nothing at a point that
    is not a fixed point; its rows are marked in ``stats.fallback``, and no warning is raised for
    them. ``"none"`` (default): every sample takes the solve's g, converged or not."""

    method: str = "anderson"
    rtol: float = 1e-6
    atol: float = 0.0
    max_iter: int = 50
    throw: bool = False
    check_every: int | None = None
    fallback: str = "none"
    solver_options: dict[str, Any] = field(default_factory=dict)
    callback: Callable[[BackwardStats], None] | None = field(default=None, compare=False)
    name: ClassVar[str] = "implicit"

    def __post_init__(self) -> None:
        choice("implicit method", self.method, _IMPLICIT_METHODS)
        choice("implicit fallback", self.fallback, IMPLICIT_FALLBACKS)
        number("implicit rtol", self.rtol, low=0)
        number("implicit atol", self.atol, low=0)
        integer("implicit max_iter", self.max_iter)
        if not isinstance(self.solver_options, dict):
            raise ConfigError(f"implicit solver_options must be a dict, got {type(self.solver_options).__name__}")
        from deqloop.solvers import get_solver  # the options are checked now, not at the first backward

        try:
            get_solver(self.method, **self.solver_options)
        except ConfigKeyError as e:
            own = [f.name for f in dataclasses.fields(self) if f.name not in ("solver_options", "callback")]
            raise ConfigKeyError(f"backward='implicit': {e}; the backward's own options are {', '.join(own)}") from None

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> Backward:
        """Known fields by name; any other key is an option of the backward solver (e.g. ``m``),
        checked against that solver's options at once."""
        own = {f.name for f in dataclasses.fields(cls)} - {"solver_options", "callback"}
        kw = {k: v for k, v in options.items() if k in own}
        return cls(**kw, solver_options={k: v for k, v in options.items() if k not in own})

    def options(self) -> dict[str, Any]:
        out = super().options()
        out.pop("callback", None)
        return out

    def attach(self, f: Map, z_star: torch.Tensor, sol: Solution) -> torch.Tensor:
        z_in = z_star.clone().requires_grad_()
        fz = f(z_in)
        if not fz.requires_grad:  # f depends on nothing that needs gradients
            return fz
        stats = BackwardStats()
        sol.backward = stats
        busy = [False]  # the adjoint's own VJPs flow back through fz: let them pass unchanged

        def hook(v: torch.Tensor) -> torch.Tensor | None:
            if busy[0] or v is None:
                return None
            first_order_only(self)
            busy[0] = True
            try:
                return self._adjoint(fz, z_in, v, stats, sol.converged)
            finally:
                busy[0] = False

        fz.register_hook(hook)
        return fz

    def _adjoint(self, fz: torch.Tensor, z_in: torch.Tensor, v: torch.Tensor, stats: BackwardStats,
                 forward_converged: torch.Tensor | None = None) -> torch.Tensor:
        def adjoint(g: torch.Tensor) -> torch.Tensor:  # g ↦ Jᵀg + v
            (jtg,) = torch.autograd.grad(fz, z_in, g, retain_graph=True)
            return jtg + v

        bsol = solve_unchecked(adjoint, v.detach(), self.method, rtol=self.rtol, atol=self.atol,
                               max_iter=self.max_iter, check_every=self.check_every, **self.solver_options)
        stats.record(bsol)
        g = bsol.z
        if self.fallback == "jfb":  # the Jacobian-free gradient where the IFT does not apply
            bad = ~bsol.converged
            if forward_converged is not None:
                bad = bad | ~forward_converged.to(bad.device)
            stats.fallback = bad
            g = torch.where(bad.reshape(-1, *([1] * (v.dim() - 1))), v, g)
        if self.callback is not None:
            self.callback(stats)
        if self.fallback == "none":
            what = f"implicit backward solve ({self.method}, rtol={self.rtol}, max_iter={self.max_iter})"
            failed = int((~bsol.converged).sum())
            worst = float(bsol.residual.max()) if failed else 0.0
            if failed and self.throw:
                raise BackwardError(f"{what} did not converge for {failed} of {bsol.batch_size} samples; largest "
                                    f"relative residual {worst:.3g}")
            backward_warnings.warn(what, failed, bsol.batch_size, worst, stacklevel=3)
        return g


@dataclass(frozen=True)
class Neumann(Backward):
    """An approximate implicit gradient: the Neumann series of (I − Jᵀ)⁻¹ v cut after ``k`` terms,
    g = v + Jᵀv + … + (Jᵀ)ᵏ v, each term's norm clipped to ``clip`` times ‖v‖ per sample (``clip``
    0: no clipping). ``k`` vector-Jacobian products, no solve; exact for ρ(J) → 0 as k grows."""

    k: int = 5
    clip: float = 1.0
    name: ClassVar[str] = "neumann"

    def __post_init__(self) -> None:
        integer("neumann k", self.k, minimum=0)
        number("neumann clip", self.clip, low=0)

    def attach(self, f: Map, z_star: torch.Tensor, sol: Solution) -> torch.Tensor:
        z_in = z_star.clone().requires_grad_()
        fz = f(z_in)
        if not fz.requires_grad:
            return fz
        busy = [False]

        def hook(v: torch.Tensor) -> torch.Tensor | None:
            if busy[0] or v is None:
                return None
            first_order_only(self)
            busy[0] = True
            try:
                limit = self.clip * v.flatten(1).norm(dim=1) if self.clip > 0 else None
                g = total = v
                for _ in range(self.k):
                    (g,) = torch.autograd.grad(fz, z_in, g, retain_graph=True)
                    if limit is not None:
                        norm = g.flatten(1).norm(dim=1).clamp_min(torch.finfo(g.dtype).tiny)
                        g = g * (limit / norm).clamp(max=1.0).reshape(-1, *([1] * (g.dim() - 1)))
                    total = total + g
                return total
            finally:
                busy[0] = False

        fz.register_hook(hook)
        return fz


IMPLICIT_FALLBACKS = ("none", "jfb")

_MODES: dict[str, type[Backward]] = {cls.name: cls for cls in (Implicit, Phantom, Unrolled, Truncated, NoGrad,
                                                                Neumann)}
BACKWARD_MODES = tuple(_MODES)


def as_backward(backward: str | Backward, options: dict[str, Any] | None = None) -> Backward:
    """The :class:`Backward` for a shorthand name plus options, or an object itself (then
    ``options`` must be empty: they belong to the object)."""
    if isinstance(backward, Backward):
        if options:
            raise ConfigError(f"backward options {sorted(options)} given with a {type(backward).__name__} object; "
                              "set them on the object instead")
        return backward
    if isinstance(backward, type) and issubclass(backward, Backward):
        raise ConfigError(f"backward={backward.__name__} is a class; pass an instance, e.g. {backward.__name__}()")
    choice("backward", backward, BACKWARD_MODES)
    return _MODES[backward].from_options(dict(options or {}))
