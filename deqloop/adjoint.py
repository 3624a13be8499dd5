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
forward loop run differently, :meth:`Backward.forward`, which receives the caller's
:class:`~deqloop.solvers.LoopOptions`). :func:`fixed_point` is the entry point.

* :class:`Implicit` — ``f`` is re-evaluated once at z* with autograd and a hook replaces the
  incoming gradient v by the solution g of gᵀ = gᵀJ + vᵀ (J = ∂f/∂z at z*), found by a solver of
  its own; its convergence goes to ``sol.backward`` (a :class:`~deqloop.solvers.BackwardStats`),
  and failures warn with :class:`BackwardWarning`, aggregated (:mod:`deqloop.adjoint_warnings`),
  or raise :class:`BackwardError` with ``throw=True``.
* Second-order gradients (``create_graph=True``) through ``Implicit`` or ``Neumann`` raise
  :class:`BackwardError`: their adjoint is not differentiable. ``Unrolled``, ``Phantom`` and
  ``Truncated`` are plain autograd and support them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch

from deqloop.adjoint_warnings import BackwardWarning, backward_warnings
from deqloop.errors import ConfigError, ConfigKeyError, DeqloopError
from deqloop import inputs
from deqloop.solvers import DEFAULT_SOLVER, BackwardStats, LoopOptions, Solution
from deqloop.solvers.packing import Packing, packed_map
from deqloop.validate import choice, integer, known_keys, number

__all__ = ["BACKWARD_MODES", "EQUILIBRIUM_BACKWARDS", "Backward", "BackwardError", "BackwardWarning", "Implicit", "Neumann", "NoGrad",
           "Phantom", "Truncated", "Unrolled", "as_backward", "fixed_point"]

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


def _init_fields(cls: Any) -> list[dataclasses.Field]:
    """A mode's options: its dataclass fields set at construction (not what it derives from them)."""
    return [f for f in dataclasses.fields(cls) if f.init]


def vjp_hook(mode: Backward, f: Map, z_star: torch.Tensor,
             correct: Callable[[Callable[[torch.Tensor], torch.Tensor], torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``f(z*)`` evaluated once more with autograd, with a hook that replaces the gradient ``v``
    arriving at it by ``correct(vjp, v)``, where ``vjp(g) = Jᵀg`` (J = ∂f/∂z at z*): the shared
    machinery of the adjoint-based modes (:class:`Implicit`, :class:`Neumann`). The hook lets the
    adjoint's own vector-Jacobian products through unchanged and refuses second-order use."""
    z_in = z_star.clone().requires_grad_()
    fz = f(z_in)
    if not fz.requires_grad:  # f depends on nothing that needs gradients
        return fz
    busy = [False]  # the adjoint's own VJPs flow back through fz: let them pass unchanged

    def vjp(g: torch.Tensor) -> torch.Tensor:
        return torch.autograd.grad(fz, z_in, g, retain_graph=True)[0]

    def hook(v: torch.Tensor) -> torch.Tensor | None:
        if busy[0] or v is None:
            return None
        first_order_only(mode)
        busy[0] = True
        try:
            return correct(vjp, v)
        finally:
            busy[0] = False

    fz.register_hook(hook)
    return fz


@dataclass(frozen=True)
class Backward:
    """Base of the backward modes. Subclasses are frozen dataclasses of their options."""

    name: ClassVar[str] = ""
    default_method: ClassVar[str] = DEFAULT_SOLVER  # the forward solver when the caller names none
    trains_equilibrium: ClassVar[bool] = True  # a gradient the equilibrium training loss may take

    def solve(self, f: Map, z0: torch.Tensor, loop: LoopOptions) -> tuple[torch.Tensor, Solution]:
        """Run the forward ``loop`` as this mode needs it (:meth:`forward`) and attach the gradient.
        Under ``torch.no_grad()`` the detached fixed point is returned without building a graph."""
        sol = self.forward(loop)(f, z0)
        z = sol.z
        sol.z = z.detach()
        if not torch.is_grad_enabled():
            return sol.z, sol
        return self.attach(f, z, sol), sol

    def forward(self, loop: LoopOptions) -> LoopOptions:
        """The forward loop this mode runs, given the caller's (by default the caller's itself)."""
        return loop

    def attach(self, f: Map, z_star: torch.Tensor, sol: Solution) -> torch.Tensor:
        """The fixed point ``z_star`` (detached, unless :meth:`forward` made the loop differentiable)
        made to carry gradients to what ``f`` closes over."""
        raise NotImplementedError

    def to_spec(self) -> tuple[str, dict[str, Any]]:
        """``(name, options)``: the shorthand that rebuilds this mode (as stored in checkpoints)."""
        if self.name not in _MODES or type(self) is not _MODES[self.name]:
            raise ConfigError(f"{type(self).__name__} is not a registered backward mode and cannot be stored by name")
        return self.name, self.options()

    def options(self) -> dict[str, Any]:
        """The options that differ from the defaults, as plain values."""
        out = {}
        for f in _init_fields(self):
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
        known_keys(options, [f.name for f in _init_fields(cls)], f"backward={cls.name!r}")
        return cls(**options)


@dataclass(frozen=True)
class NoGrad(Backward):
    """No gradient through the solve: the fixed point is returned detached."""

    name: ClassVar[str] = "none"
    trains_equilibrium: ClassVar[bool] = False

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
    trains_equilibrium: ClassVar[bool] = False  # the progressive loss's gradient, not the fixed point's

    def __post_init__(self) -> None:
        integer("truncated grad_steps", self.grad_steps)

    def forward(self, loop: LoopOptions) -> LoopOptions:
        return loop.with_(keep="last", return_image=True)

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
    default_method: ClassVar[str] = "picard"

    def forward(self, loop: LoopOptions) -> LoopOptions:
        if loop.method != "picard":
            raise ConfigError(f"backward='unrolled' backpropagates through naive iteration; it cannot run "
                              f"method={loop.method!r} (leave the method unset or use 'picard')")
        return loop.with_(differentiable=True, keep="last", return_image=True)

    def attach(self, f: Map, z_star: torch.Tensor, sol: Solution) -> torch.Tensor:
        return z_star  # the loop recorded the iterations: z_star carries their gradient


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

    method: str = DEFAULT_SOLVER
    rtol: float = 1e-6
    atol: float = 0.0
    max_iter: int = 50
    throw: bool = False
    check_every: int | None = None
    fallback: str = "none"
    solver_options: dict[str, Any] = field(default_factory=dict)
    callback: Callable[[BackwardStats], None] | None = field(default=None, compare=False)
    loop: LoopOptions = field(init=False, repr=False, compare=False)  # the backward solve, built once
    name: ClassVar[str] = "implicit"

    def __post_init__(self) -> None:
        choice("implicit method", self.method, _IMPLICIT_METHODS)
        choice("implicit fallback", self.fallback, IMPLICIT_FALLBACKS)
        number("implicit rtol", self.rtol, low=0)
        number("implicit atol", self.atol, low=0)
        integer("implicit max_iter", self.max_iter)
        if not isinstance(self.solver_options, dict):
            raise ConfigError(f"implicit solver_options must be a dict, got {type(self.solver_options).__name__}")
        try:  # the backward solve's options are checked now, not at the first backward
            loop = LoopOptions(method=self.method, options=self.solver_options, rtol=self.rtol, atol=self.atol,
                               max_iter=self.max_iter, check_every=self.check_every, check_input=False)
            object.__setattr__(self, "loop", loop)
        except ConfigKeyError as e:
            own = [f.name for f in _init_fields(self) if f.name not in ("solver_options", "callback")]
            raise ConfigKeyError(f"backward='implicit': {e}; the backward's own options are {', '.join(own)}") from None

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> Backward:
        """Known fields by name; any other key is an option of the backward solver (e.g. ``m``),
        checked against that solver's options at once."""
        own = {f.name for f in _init_fields(cls)} - {"solver_options", "callback"}
        kw = {k: v for k, v in options.items() if k in own}
        return cls(**kw, solver_options={k: v for k, v in options.items() if k not in own})

    def options(self) -> dict[str, Any]:
        out = super().options()
        out.pop("callback", None)
        return out

    def attach(self, f: Map, z_star: torch.Tensor, sol: Solution) -> torch.Tensor:
        stats = sol.backward = BackwardStats()
        return vjp_hook(self, f, z_star, lambda vjp, v: self._adjoint(vjp, v, stats, sol.converged))

    def _adjoint(self, vjp: Callable[[torch.Tensor], torch.Tensor], v: torch.Tensor, stats: BackwardStats,
                 forward_converged: torch.Tensor | None = None) -> torch.Tensor:
        bsol = self.loop(lambda g: vjp(g) + v, v.detach())  # g ↦ Jᵀg + v
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
            backward_warnings.warn(what, failed, bsol.batch_size, worst, stacklevel=4)
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
        return vjp_hook(self, f, z_star, self._series)

    def _series(self, vjp: Callable[[torch.Tensor], torch.Tensor], v: torch.Tensor) -> torch.Tensor:
        limit = self.clip * v.flatten(1).norm(dim=1) if self.clip > 0 else None
        g = total = v
        for _ in range(self.k):
            g = vjp(g)
            if limit is not None:
                norm = g.flatten(1).norm(dim=1).clamp_min(torch.finfo(g.dtype).tiny)
                g = g * (limit / norm).clamp(max=1.0).reshape(-1, *([1] * (g.dim() - 1)))
            total = total + g
        return total


IMPLICIT_FALLBACKS = ("none", "jfb")

_MODES: dict[str, type[Backward]] = {cls.name: cls for cls in (Implicit, Phantom, Unrolled, Truncated, NoGrad,
                                                                Neumann)}
BACKWARD_MODES = tuple(_MODES)
EQUILIBRIUM_BACKWARDS = tuple(name for name, mode in _MODES.items() if mode.trains_equilibrium)
"""The modes the equilibrium training loss accepts (``deqloop train --backward``)."""


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


def fixed_point(
    f: Callable[[Any], Any],
    z0: Any,
    method: str | None = None,
    backward: str | Backward = "implicit",
    *,
    rtol: float = 1e-4,
    atol: float = 0.0,
    max_iter: int = 50,
    backward_options: dict[str, Any] | None = None,
    throw: bool = False,
    check_every: int | None = None,
    trace: bool = False,
    **options: Any,
) -> tuple[Any, Solution]:
    """Solve f(z) = z from ``z0`` and return ``(z_star, solution)`` with ``z_star`` differentiable.

        z_star, sol = fixed_point(f, z0, method="anderson", backward=Implicit(rtol=1e-6), max_iter=50)
        z_star, sol = fixed_point(f, z0, backward="phantom", backward_options={"steps": 5, "tau": 0.8})

    ``f`` may close over parameters and inputs; ``z_star`` carries gradients to all of them.
    ``z0`` is a batch-first tensor or a tuple, list or dict of them (a multi-branch state, solved
    as one ``(B, N)`` tensor per sample, see :mod:`deqloop.solvers.packing`); ``z_star`` and
    ``solution.z`` then have its structure, and every backward mode differentiates through the
    whole state. Forward arguments are those of :func:`deqloop.solve` (``method`` defaults to the
    backward mode's: ``"anderson"``, or ``"picard"`` for the unrolled mode, which iterates plainly).
    ``backward`` is a :class:`Backward` or a name with ``backward_options``. Under
    ``torch.no_grad()`` every mode returns the detached fixed point without building a graph.

    Bad input raises :class:`~deqloop.errors.InputError` naming the argument, as for
    :func:`deqloop.solve`.
    """
    adjoint = as_backward(backward, backward_options)
    loop = LoopOptions(method=method or adjoint.default_method, options=options, rtol=rtol, atol=atol,
                       max_iter=max_iter, throw=throw, check_every=check_every, trace=trace)
    if isinstance(z0, torch.Tensor):
        return adjoint.solve(f, z0, loop)
    inputs.callable_map("f", f)
    packing = Packing.of("z0", z0)
    z, sol = adjoint.solve(packed_map(f, packing), packing.pack(z0, "z0"), loop)
    sol.z = packing.unpack(sol.z)
    return packing.unpack(z), sol
