"""LoopedDEQ: one weight-tied transformer block f(z; e), applied until z stops changing.

Reading order: the configuration, the pieces of the block (MLP, input injection, a residual
sublayer with its norms), the block, the readout head, and the model, whose ``forward`` hands
``z ↦ step(z, e)`` to :func:`deqloop.fixed_point`.

Shapes: ``B`` batch, ``grid`` the token grid (``(L,)`` or ``(H, W)``), ``N = prod(grid)``,
``D`` the width, ``C`` the number of classes. The state ``z`` and the embedding ``e`` are
``(B, *grid, D)``; inside the block tokens are flattened to ``(B, N, D)``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from deqloop.attention import ATTENTION_BACKENDS, Attention, check_backend, local_mask
from deqloop.equilibrium import fixed_point
from deqloop.norm import RMSNorm
from deqloop.rope import check_head_dim, rope_table
from deqloop.solvers import BatchedMap, Solution, available_solvers

RECALLS = ("none", "external", "internal")
NORMS = ("pre", "peri", "post", "sandwich")
ATTENTIONS = ("full", "local")
INITS = ("embed", "zeros", "noise")
BACKWARDS = ("implicit", "phantom", "unrolled", "truncated", "none")

# Settings that ``model(x, **overrides)`` may change per call.
SOLVE_SETTINGS = (
    "solver",
    "backward",
    "max_iter",
    "rtol",
    "atol",
    "init",
    "init_scale",
    "solver_options",
    "backward_options",
    "throw",
)


# Arguments of fixed_point that the model sets from its own fields, not from solver_options.
_FIXED_POINT_ARGS = {"method", "backward", "rtol", "atol", "max_iter", "backward_options", "throw"}


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; allowed: {', '.join(map(repr, allowed))}")


@dataclass
class LoopedDEQConfig:
    """Everything that defines a :class:`LoopedDEQ`; validated at construction.

    Architecture:
        vocab_size: number of input token ids.
        num_classes: outputs per token of the readout head.
        grid: training grid, ``(L,)`` for sequences or ``(H, W)`` for boards. Inputs must have
            as many grid axes; their sizes may differ (RoPE and local attention are relative).
        width: model width ``D``; heads: attention heads (``width % heads == 0``; the head dim
            must be even on 1-D grids and divisible by 4 on 2-D grids, for RoPE).
        mlp_ratio: MLP hidden width is ``round(mlp_ratio · width)``.
        recall: input injection, one of ``RECALLS``:
            ``"none"`` e enters only through z₀; ``"external"`` h = W_z z + W_e e enters the
            block; ``"internal"`` every sublayer sees W_z·norm(h) + W_e·e (one pair of maps per
            sublayer) while the residual stream carries h.
        norm: RMSNorm placement around each sublayer g, one of ``NORMS``:
            ``"pre"`` h + g(n(h)); ``"peri"`` h + n(g(n(h))); ``"post"`` n(h + g(h)) (the state
            itself is normalized); ``"sandwich"`` n(h + g(n(h))).
        attention: ``"full"`` or ``"local"`` (each token sees cells within ``window // 2`` on
            every axis; ``window`` is the full, odd kernel size).
        qk_norm: RMSNorm on queries and keys per head. rope_base: RoPE frequency base.
        attention_backend: ``"sdpa"`` (fused) or ``"math"`` (supports forward-mode AD).
        compile: compile the block with ``torch.compile``.

    Solve (defaults for each call; ``model(x, **overrides)`` can change any of ``SOLVE_SETTINGS``):
        init: z₀, one of ``INITS``: ``"embed"`` z₀ = e, ``"zeros"``, ``"noise"`` (Gaussian
            with standard deviation ``init_scale``).
        solver: method name for :func:`deqloop.solve` (``"anderson"``, ``"picard"``,
            ``"broyden"``, ``"torchdeq:<name>"``, ...); solver_options: extra keywords for it.
        backward: gradient through the equilibrium, one of ``BACKWARDS``; backward_options: its
            keywords (see :func:`deqloop.fixed_point`).
        max_iter, rtol, atol: stopping rule ``‖f(z) − z‖ ≤ atol + rtol·‖f(z)‖`` per example.
        throw: raise when some example does not converge.
    """

    vocab_size: int
    num_classes: int
    grid: tuple[int, ...]
    width: int = 256
    heads: int = 8
    mlp_ratio: float = 4
    recall: str = "internal"
    norm: str = "post"
    attention: str = "full"
    window: int = 5
    qk_norm: bool = True
    rope_base: float = 10000.0
    attention_backend: str = "sdpa"
    compile: bool = False
    init: str = "embed"
    init_scale: float = 0.1
    solver: str = "anderson"
    backward: str = "implicit"
    max_iter: int = 30
    rtol: float = 1e-4
    atol: float = 0.0
    solver_options: dict[str, Any] = field(default_factory=dict)
    backward_options: dict[str, Any] = field(default_factory=dict)
    throw: bool = False

    def __post_init__(self) -> None:
        grid = self.grid
        if isinstance(grid, int):
            grid = (grid,)
        self.grid = tuple(int(n) for n in grid)
        if len(self.grid) not in (1, 2) or any(n < 1 for n in self.grid):
            raise ValueError(f"grid must be (L,) or (H, W) of positive sizes, got {grid!r}")
        for name in ("vocab_size", "num_classes", "width", "heads", "max_iter"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.width % self.heads != 0:
            raise ValueError(f"width ({self.width}) must be divisible by heads ({self.heads})")
        check_head_dim(self.width // self.heads, len(self.grid))
        if round(self.mlp_ratio * self.width) < 1:
            raise ValueError(f"mlp_ratio must give a positive hidden width, got {self.mlp_ratio}")
        _choice("recall", self.recall, RECALLS)
        _choice("norm", self.norm, NORMS)
        _choice("attention", self.attention, ATTENTIONS)
        _choice("attention_backend", self.attention_backend, ATTENTION_BACKENDS)
        _choice("init", self.init, INITS)
        _choice("backward", self.backward, BACKWARDS)
        if self.window < 1 or self.window % 2 == 0:
            raise ValueError(f"window must be an odd positive kernel size, got {self.window}")
        if self.rope_base <= 1:
            raise ValueError(f"rope_base must be > 1, got {self.rope_base}")
        for name in ("init_scale", "rtol", "atol"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("solver_options", "backward_options"):
            if not isinstance(getattr(self, name), dict):
                raise TypeError(f"{name} must be a dict, got {type(getattr(self, name)).__name__}")
        clash = sorted(set(self.solver_options) & _FIXED_POINT_ARGS)
        if clash:
            raise ValueError(f"solver_options {clash} are settings of their own: pass them directly")
        _check_solver(self.solver)
        if self.backward == "unrolled" and self.solver != "picard":
            raise ValueError(
                "backward='unrolled' backpropagates through naive iteration and needs "
                f"solver='picard', got solver={self.solver!r}"
            )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LoopedDEQConfig:
        """Build from a plain dict (e.g. ``asdict(config)`` stored in a checkpoint)."""
        _check_keys(values, tuple(f.name for f in dataclasses.fields(cls)), "LoopedDEQConfig")
        return cls(**values)


def _check_keys(given: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise TypeError(f"{where} got unknown keyword(s) {unknown}; allowed: {', '.join(allowed)}")


def _check_solver(name: str) -> None:
    allowed = tuple(available_solvers())
    if name in allowed:
        return
    raise ValueError(f"unknown solver {name!r}; allowed: {', '.join(map(repr, allowed))}")


# ----------------------------------------------------------------------------------------------
# The block


class MLP(nn.Module):
    """Linear → GELU → Linear, per token."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc = nn.Linear(width, hidden)
        self.proj = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))  # (B, N, D)


class Injection(nn.Module):
    """Input injection (recall): ``W_z h + W_e e``."""

    def __init__(self, width: int):
        super().__init__()
        self.w_z = nn.Linear(width, width, bias=False)
        self.w_e = nn.Linear(width, width, bias=False)

    def forward(self, h: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return self.w_z(h) + self.w_e(e)  # (B, N, D)


class Residual(nn.Module):
    """The norms and (internal) recall around one sublayer g; the sublayer itself lives outside.

    pre: h + g(n(h))   peri: h + n(g(n(h)))   post: n(h + g(h))   sandwich: n(h + g(n(h)))
    With internal recall, g's input u becomes W_z u + W_e e (after the pre-norm, if any).
    """

    def __init__(self, width: int, norm: str, recall: str):
        super().__init__()
        self.norm_in = RMSNorm(width) if norm in ("pre", "peri", "sandwich") else None
        self.norm_branch = RMSNorm(width) if norm == "peri" else None
        self.norm_out = RMSNorm(width) if norm in ("post", "sandwich") else None
        self.inject = Injection(width) if recall == "internal" else None

    def forward(self, h: torch.Tensor, e: torch.Tensor, sublayer, *args) -> torch.Tensor:
        u = h if self.norm_in is None else self.norm_in(h)  # (B, N, D)
        if self.inject is not None:
            u = self.inject(u, e)
        y = sublayer(u, *args)  # (B, N, D)
        if self.norm_branch is not None:
            y = self.norm_branch(y)
        h = h + y
        return h if self.norm_out is None else self.norm_out(h)


class Block(nn.Module):
    """One transformer block with recall: ``(z, e) ↦ f(z; e)``, both ``(B, N, D)``."""

    def __init__(self, config: LoopedDEQConfig):
        super().__init__()
        D = config.width
        self.inject = Injection(D) if config.recall == "external" else None
        self.attn = Attention(D, config.heads, config.qk_norm, config.attention_backend)
        self.attn_res = Residual(D, config.norm, config.recall)
        self.mlp = MLP(D, round(config.mlp_ratio * D))
        self.mlp_res = Residual(D, config.norm, config.recall)

    def forward(
        self,
        z: torch.Tensor,
        e: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        h = z if self.inject is None else self.inject(z, e)  # (B, N, D)
        h = self.attn_res(h, e, self.attn, cos, sin, mask)
        return self.mlp_res(h, e, self.mlp)  # (B, N, D)


class Readout(nn.Module):
    """Per-token head: RMSNorm → Linear → GELU → Linear(num_classes)."""

    def __init__(self, width: int, num_classes: int):
        super().__init__()
        self.norm = RMSNorm(width)
        self.fc = nn.Linear(width, width)
        self.out = nn.Linear(width, num_classes)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(F.gelu(self.fc(self.norm(z))))  # (..., C)


# ----------------------------------------------------------------------------------------------
# The model


@dataclass
class LoopOutput:
    """What :meth:`LoopedDEQ.forward` returns.

    Attributes:
        logits: ``(B, *grid, C)`` readout of the equilibrium state.
        z: ``(B, *grid, D)`` equilibrium state (carries gradients per the backward mode).
        solution: the solver's :class:`deqloop.Solution` (per-example convergence, residual,
            iterations, ...; ``solution.backward`` fills in when an implicit backward runs).
    """

    logits: torch.Tensor
    z: torch.Tensor
    solution: Solution

    @property
    def iterations(self) -> torch.Tensor:
        """``(B,)`` iterations each example used (adaptive compute)."""
        return self.solution.iterations


class LoopedDEQ(nn.Module):
    """A looped, weight-tied transformer block solved to its fixed point z* = f(z*; e).

    Build with keyword arguments (see :class:`LoopedDEQConfig`) or a config::

        model = LoopedDEQ(vocab_size=13, num_classes=2, grid=(8, 8), width=256, heads=8)
        out = model(x)                       # LoopOutput: .logits (B, *grid, C), .z, .solution
        out = model(x, max_iter=500, rtol=1e-5)

    ``model.config`` is the validated :class:`LoopedDEQConfig`; ``LoopedDEQ(**asdict(config))``
    rebuilds the same architecture.
    """

    def __init__(self, config: LoopedDEQConfig | None = None, /, **kwargs: Any):
        super().__init__()
        if config is None:
            config = LoopedDEQConfig.from_dict(kwargs)
        elif kwargs:
            _check_keys(kwargs, tuple(f.name for f in dataclasses.fields(config)), "LoopedDEQ")
            config = dataclasses.replace(config, **kwargs)
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.width)
        self.block = Block(config)
        self.head = Readout(config.width, config.num_classes)
        self._compiled_block = None  # built on first use when config.compile; never pickled

    # -- the pieces --------------------------------------------------------------------------

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Token ids ``(B, *grid)`` → embedding ``e`` ``(B, *grid, D)``."""
        ndim = len(self.config.grid)
        if x.dim() != ndim + 1:
            raise ValueError(
                f"expected token ids of shape (B, *grid) with {ndim} grid axis(es), like the "
                f"configured grid {self.config.grid}; got shape {tuple(x.shape)}"
            )
        if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
            raise TypeError(f"token ids must be an integer tensor, got {x.dtype}")
        return self.embedding(x)  # (B, *grid, D)

    def initial_state(
        self, e: torch.Tensor, init: str | None = None, *, scale: float | None = None
    ) -> torch.Tensor:
        """z₀ for embedding ``e``: ``"embed"`` (e itself), ``"zeros"`` or ``"noise"``."""
        init = self.config.init if init is None else init
        _choice("init", init, INITS)
        if init == "embed":
            return e
        if init == "zeros":
            return torch.zeros_like(e)
        scale = self.config.init_scale if scale is None else scale
        return scale * torch.randn_like(e)

    def step(self, z: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """One application of the loop map, ``z ↦ f(z; e)``; both ``(B, *grid, D)``.

        The result has the dtype of ``z`` (under autocast the block computes in lower precision
        while the state stays float32).
        """
        if z.shape != e.shape:
            raise ValueError(f"state {tuple(z.shape)} and embedding {tuple(e.shape)} differ")
        B, *grid, D = z.shape
        cos, sin, mask = self._geometry(tuple(grid), z.device)
        block = self.block
        if self.config.compile:
            if self._compiled_block is None:
                self._compiled_block = torch.compile(self.block.forward)
            block = self._compiled_block
        out = block(z.reshape(B, -1, D), e.reshape(B, -1, D), cos, sin, mask)  # (B, N, D)
        return out.reshape(z.shape).to(z.dtype)

    def readout(self, z: torch.Tensor) -> torch.Tensor:
        """Per-token logits ``(B, *grid, C)`` of any state ``z`` ``(B, *grid, D)``."""
        return self.head(z)

    def _geometry(
        self, grid: tuple[int, ...], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """RoPE tables ``(N, hd/2)`` and the local-attention mask ``(N, N)`` (or None); cached."""
        dtype = torch.promote_types(self.embedding.weight.dtype, torch.float32)
        cos, sin = rope_table(grid, self.block.attn.head_dim, self.config.rope_base, device, dtype)
        mask = None
        if self.config.attention == "local":
            mask = local_mask(grid, self.config.window, device)
        return cos, sin, mask

    # -- solving -----------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, **overrides: Any) -> LoopOutput:
        """Solve for the equilibrium of ``x`` ``(B, *grid)`` and read it out.

        Keyword arguments override the configured solve settings for this call only; allowed:
        ``solver, backward, max_iter, rtol, atol, init, init_scale, solver_options,
        backward_options, throw``.
        """
        s = self._settings(overrides)
        e = self.embed(x)  # (B, *grid, D)
        z0 = self.initial_state(e, s.init, scale=s.init_scale)  # (B, *grid, D)
        z, solution = fixed_point(
            BatchedMap(self.step, e),  # lets the solver stop evaluating converged examples
            z0,
            method=s.solver,
            backward=s.backward,
            rtol=s.rtol,
            atol=s.atol,
            max_iter=s.max_iter,
            backward_options=s.backward_options,
            throw=s.throw,
            **s.solver_options,
        )
        return LoopOutput(logits=self.readout(z), z=z, solution=solution)

    def trajectory(
        self, x: torch.Tensor, iters: int | None = None, *, init: str | None = None
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield ``(t, logits)`` after each of ``iters`` plain iterations ``z ← f(z; e)``.

        No gradients are kept, so memory does not grow with ``iters`` (default: ``max_iter``).
        """
        iters = self.config.max_iter if iters is None else int(iters)
        if iters < 0:
            raise ValueError(f"iters must be >= 0, got {iters}")
        with torch.no_grad():
            e = self.embed(x)
            z = self.initial_state(e, init)
        for t in range(1, iters + 1):
            # Grad mode is entered per iteration, not around the loop: a generator suspended
            # inside ``no_grad`` would leak the mode into the caller's code between yields.
            with torch.no_grad():
                z = self.step(z, e)
                logits = self.readout(z)
            yield t, logits

    def _settings(self, overrides: dict[str, Any]) -> LoopedDEQConfig:
        _check_keys(overrides, SOLVE_SETTINGS, f"{type(self).__name__}.forward")
        if not overrides:
            return self.config
        overrides = dict(overrides)
        # options belong to the configured solver/backward: switching either drops them unless new ones are given
        for key in ("solver", "backward"):
            if key in overrides and overrides[key] != getattr(self.config, key):
                overrides.setdefault(f"{key}_options", {})
        return dataclasses.replace(self.config, **overrides)

    # -- utilities ---------------------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_compiled_block"] = None  # compiled code is rebuilt on demand, not copied or saved
        return state

    @contextlib.contextmanager
    def use_attention_backend(self, backend: str) -> Iterator[None]:
        """Temporarily compute attention with ``"sdpa"`` or ``"math"`` (forward-mode AD)."""
        check_backend(backend)
        previous = self.block.attn.backend
        self.block.attn.backend = backend
        try:
            yield
        finally:
            self.block.attn.backend = previous

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"grid={c.grid}, recall={c.recall!r}, norm={c.norm!r}, attention={c.attention!r}, "
            f"solver={c.solver!r}, backward={c.backward!r}, max_iter={c.max_iter}"
        )
