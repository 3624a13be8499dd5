"""LoopedDEQ: one weight-tied transformer block f(z; e), applied until z stops changing.

Reading order: :mod:`deqloop.model.config` (what defines a model), :mod:`deqloop.model.layers`
(the block), then this file: the model, whose ``forward`` hands ``z ↦ step(z, e)`` to
:func:`deqloop.fixed_point`.

Shapes: ``B`` batch, ``grid`` the token grid (``(L,)`` or ``(H, W)``), ``N = prod(grid)``,
``D`` the width, ``C`` the number of classes. The state ``z`` and the embedding ``e`` are
``(B, *grid, D)``; inside the block tokens are flattened to ``(B, N, D)``.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from deqloop import inputs
from deqloop.errors import InputError, InputTypeError, allocating
from deqloop.model.attention import Attention, check_backend
from deqloop.model.compiled import CompiledBlock, CompiledSegments
from deqloop.model.config import (
    BF16_RTOL,
    INITS,
    Architecture,
    LoopedDEQConfig,
    SolveSettings,
)
from deqloop.model.layers import Block, Blocks, Readout
from deqloop.model.local_attention import LocalWindow, local_pattern
from deqloop.model.rope import rope_table
from deqloop.solvers import BatchedMap, Solution
from deqloop.solvers.base import without_autocast
from deqloop.validate import choice, number

__all__ = ["LoopOutput", "LoopedDEQ"]


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

    Build from keyword arguments (the fields of :class:`Architecture` and :class:`SolveSettings`),
    or from a :class:`LoopedDEQConfig` (optionally with keywords that replace some fields)::

        model = LoopedDEQ(vocab_size=13, num_classes=2, grid=(8, 8), width=256, heads=8)
        out = model(x)                       # LoopOutput: .logits (B, *grid, C), .z, .solution
        out = model(x, max_iter=500, rtol=1e-5)

    The defaults are the paper's block (``ashlab11/generalization``,
    ``deepthinking/models/attention.py``; see :class:`Architecture`): internal recall through one
    injection pair with biases shared by the attention and MLP sublayers, one set of norms per
    block, biased qkv/output projections, QK-norm after RoPE, additive residual. Each variant is
    one option: ``recall_maps="per_sublayer"``, ``norm_weights="per_sublayer"``, ``bias=False``,
    ``qk_norm_order="before_rope"``, ``residual="gru"``, ``blocks=15`` (untied blocks).

    Inputs may have other grid sizes than ``grid`` (the number of grid axes must match): RoPE and
    local attention are relative, so a 1-D model runs on longer sequences and a 2-D model on other
    board sizes — that is how a looped model extrapolates. The input checks keep it so: they fix
    the number of grid axes, never their sizes.

    Every public method checks its arguments once at entry and raises
    :class:`~deqloop.errors.InputError` (``InputTypeError`` for a wrong type or dtype) naming the
    argument, the bad value and what is allowed: token ids ``x`` must be an integer tensor
    ``(B, *grid)`` with ``B ≥ 1``, no empty axis, ids in ``[0, vocab_size)`` (one min/max per call,
    outside the solver's loop) on the model's device; a given ``z0`` must be a finite tensor of
    the state's shape, dtype and device. ``step`` checks only metadata (no host synchronisation).

    ``model.config`` is the validated :class:`LoopedDEQConfig` (``.arch``, ``.solve``);
    ``LoopedDEQ(LoopedDEQConfig.from_dict(config.to_dict()))`` rebuilds the same model.
    """

    def __init__(self, config: LoopedDEQConfig | Architecture | None = None, /, **kwargs: Any):
        super().__init__()
        if config is None:
            config = LoopedDEQConfig.from_flat(kwargs, "LoopedDEQ")
        elif isinstance(config, Architecture):
            config = LoopedDEQConfig(config, SolveSettings(**kwargs))
        elif kwargs:
            config = config.replace(**kwargs)
        self.config = config
        arch = config.arch
        with allocating(f"the model's weights (width {arch.width}, vocab_size {arch.vocab_size})"):
            self.embedding = nn.Embedding(arch.vocab_size, arch.width)
            self.block = Block(arch) if arch.blocks == 1 else Blocks(arch)  # Blocks: untied, applied in order
            self.head = Readout(arch.width, arch.num_classes)
        self._compiled_block = None  # built on first use when arch.compile; never pickled
        self._compiled_segments = None  # likewise, when arch.compile_segment

    @property
    def arch(self) -> Architecture:
        return self.config.arch

    # -- the pieces --------------------------------------------------------------------------

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Token ids ``(B, *grid)`` → embedding ``e`` ``(B, *grid, D)``.

        ``x`` is checked (see the class docstring): integer dtype, ``len(grid)`` grid axes of any
        size ≥ 1, ``B ≥ 1``, ids in ``[0, vocab_size)``, on the model's device.
        """
        weight = self.embedding.weight
        inputs.token_ids("x", x, vocab_size=self.arch.vocab_size, grid_axes=len(self.arch.grid), device=weight.device)
        if x.dtype not in (torch.int32, torch.int64):
            x = x.long()  # nn.Embedding takes int32 or int64 ids
        return self.embedding(x)  # (B, *grid, D)

    def initial_state(
        self, e: torch.Tensor, init: str | None = None, *, scale: float | None = None
    ) -> torch.Tensor:
        """z₀ for embedding ``e``: ``"embed"`` (e itself), ``"zeros"``, ``"noise"`` (Gaussian with
        standard deviation ``scale``) or ``"mixed"`` (standard Gaussian entries, each kept with
        probability 1/2, else 0: torchdeq's mixed initialisation)."""
        init = self.config.solve.init if init is None else choice("init", init, INITS)
        scale = self.config.solve.init_scale if scale is None else number("scale", scale, low=0)
        inputs.float_tensor("e", e)
        return self._initial_state(e, init, scale)

    @staticmethod
    def _initial_state(e: torch.Tensor, init: str, scale: float) -> torch.Tensor:
        """:meth:`initial_state` for settings already checked (a forward's resolved settings)."""
        if init == "embed":
            return e
        if init == "zeros":
            return torch.zeros_like(e)
        if init == "mixed":
            return torch.randn_like(e) * torch.bernoulli(torch.full_like(e, 0.5))
        return scale * torch.randn_like(e)

    def step(self, z: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """One application of the loop map, ``z ↦ f(z; e)``; both ``(B, *grid, D)``.

        The result has the dtype of ``z`` (under autocast the block computes in lower precision
        while the state stays float32).
        """
        block = self.block
        if self._compiling():
            if self._compiled_block is None:
                self._compiled_block = CompiledBlock(self.block.forward)
            block = self._compiled_block
        out = block(*self._block_inputs(z, e))  # (B, N, D)
        return out.reshape(z.shape).to(z.dtype)

    def _block_inputs(self, z: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The block's arguments for states ``z``, ``e`` ``(B, *grid, D)`` (checked): both as
        ``(B, N, D)`` (``e``'s own tensor twice when ``z`` is ``e``), the RoPE tables and the mask."""
        self._check_state("z", z)
        self._check_state("e", e)
        if z.shape != e.shape:
            raise InputError(f"z has shape {tuple(z.shape)}, the embedding e {tuple(e.shape)}; they must match")
        B, *grid, D = z.shape
        cos, sin, mask = self._geometry(tuple(grid), z.device)
        e_flat = e.reshape(B, -1, D)
        return e_flat if z is e else z.reshape(B, -1, D), e_flat, cos, sin, mask

    def _compiling(self) -> bool:
        """Whether the block runs compiled: ``compile`` set and attention not on the ``"math"``
        backend (twice differentiable, so eager)."""
        return self.arch.compile and self._attentions()[0].backend != "math"

    def iterates(self, z: torch.Tensor, e: torch.Tensor, steps: int) -> Iterator[torch.Tensor]:
        """``z_1, ..., z_steps`` with ``z_t = f(z_{t−1}; e)``, under the caller's grad mode.

        The one "iterate the block" loop of the library: training (progressive loss), evaluation
        and :meth:`trajectory` all walk it.
        """
        steps = inputs.steps("steps", steps)
        for _ in range(steps):
            z = self.step(z, e)
            yield z

    def unroll(self, z: torch.Tensor, e: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z_{steps−1}, z_steps)``: the last two of :meth:`iterates`' states (``steps ≥ 1``),
        under the caller's grad mode.

        With ``compile`` and ``compile_segment`` set, the iterations run as compiled segments of
        1, 2, 4, …, ``compile_segment`` iterations (:class:`~deqloop.model.compiled.CompiledSegments`:
        at most one graph per segment length and grad mode, whatever ``steps``); otherwise one
        :meth:`step` at a time. Both give the same values and gradients within float tolerance.
        """
        steps = inputs.steps("steps", steps)
        if not (self.arch.compile_segment and self._compiling()):
            prev = z
            for z_next in self.iterates(z, e, steps):
                prev, z = z, z_next
            return prev, z
        if self._compiled_segments is None or self._compiled_segments.longest != self.arch.compile_segment:
            self._compiled_segments = CompiledSegments(self.block.forward, self.arch.compile_segment)
        prev, last = self._compiled_segments(*self._block_inputs(z, e), steps)  # (B, N, D) each
        return prev.reshape(z.shape), last.reshape(z.shape)

    def iterate(self, z: torch.Tensor, e: torch.Tensor, steps: int) -> torch.Tensor:
        """``z_steps``: the state after ``steps`` plain iterations from ``z`` (``z`` itself for 0)."""
        for z in self.iterates(z, e, steps):
            pass
        return z

    def readout(self, z: torch.Tensor) -> torch.Tensor:
        """Per-token logits ``(B, *grid, C)`` of any state ``z`` ``(B, *grid, D)``."""
        self._check_state("z", z)
        return self.head(z)

    def _check_state(self, name: str, z: Any) -> None:
        """``z`` is a float ``(B, *grid, D)`` tensor on the model's device (metadata only, no sync)."""
        inputs.float_tensor(name, z)
        weight = self.embedding.weight
        axes, width = len(self.arch.grid), self.arch.width
        if z.dim() != axes + 2 or z.shape[-1] != width:
            raise InputError(f"{name} must have shape (B, *grid, {width}) with {axes} grid axis(es); "
                             f"got shape {tuple(z.shape)}")
        if z.device != weight.device:
            raise InputError(f"{name} is on {z.device}, the model on {weight.device}")

    def _geometry(
        self, grid: tuple[int, ...], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | LocalWindow | None]:
        """RoPE tables ``(N, hd/2)`` and the local-attention pattern (None for full attention):
        a dense ``(N, N)`` mask on small grids, a banded :class:`LocalWindow` on large ones."""
        dtype = torch.promote_types(self.embedding.weight.dtype, torch.float32)
        cos, sin = rope_table(grid, self.arch.width // self.arch.heads, self.arch.rope_base, device, dtype)
        mask = None
        if self.arch.attention == "local":
            mask = local_pattern(grid, self.arch.window, device)
        return cos, sin, mask

    # -- solving -----------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, *, z0: torch.Tensor | None = None, **overrides: Any) -> LoopOutput:
        """Solve for the equilibrium of ``x`` ``(B, *grid)`` and read it out.

        ``z0`` ``(B, *grid, D)`` starts the solve from a given state instead of ``init``'s.
        Keyword arguments override the configured :class:`SolveSettings` for this call only;
        allowed: ``solver, backward, max_iter, rtol, atol, init, init_scale, solver_options,
        backward_options, throw, precision``.
        """
        s = self.config.solve.with_(**overrides)
        e = self.embed(x)  # (B, *grid, D)
        if z0 is None:
            z0 = self._initial_state(e, s.init, s.init_scale)  # (B, *grid, D)
        else:
            self._check_z0(z0, e)
        step, loop = self.step, s.loop
        if s.precision == "float32":
            step = self._solver_step
        elif torch.is_autocast_enabled(e.device.type) and loop.rtol < BF16_RTOL:
            if torch.get_autocast_dtype(e.device.type) in (torch.bfloat16, torch.float16):
                warnings.warn(f"precision='autocast': the map runs in {torch.get_autocast_dtype(e.device.type)}, "
                              f"whose rounding floors the residual; rtol {loop.rtol:g} raised to {BF16_RTOL:g}",
                              stacklevel=2)
                loop = loop.with_(rtol=BF16_RTOL)
        f = BatchedMap(step, e)  # lets the solver stop evaluating converged examples
        if s.precision == "float32":
            f.compute_dtype = torch.promote_types(e.dtype, torch.float32)  # what the solver's evaluations use
        # x and z0 were checked above (the model's own initial states are finite): s.loop skips that
        z, solution = s.adjoint.solve(f, z0, loop)
        return LoopOutput(logits=self.readout(z), z=z, solution=solution)

    def _solver_step(self, z: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """:meth:`step` in float32 (autocast off) when no gradient is recorded, i.e. in the solver's
        own evaluations; under the caller's autocast when one is (``precision="float32"``)."""
        if torch.is_grad_enabled():
            return self.step(z, e)
        with without_autocast(z.device):
            return self.step(z, e)

    def _check_z0(self, z0: Any, e: torch.Tensor) -> None:
        """A given initial state: of the state's shape, dtype and device, and finite (one sync)."""
        inputs.float_tensor("z0", z0)
        if z0.shape != e.shape:
            raise InputError(f"z0 has shape {tuple(z0.shape)}; the state of these inputs is {tuple(e.shape)}")
        if z0.dtype != e.dtype:
            raise InputTypeError(f"z0 has dtype {z0.dtype}; the model's state is {e.dtype}")
        if z0.device != e.device:
            raise InputError(f"z0 is on {z0.device}, the model on {e.device}")
        inputs.finite("z0", z0)

    def trajectory(
        self, x: torch.Tensor, iters: int | None = None, *, init: str | None = None
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield ``(t, logits)`` after each of ``iters`` plain iterations ``z ← f(z; e)``.

        No gradients are kept, so memory does not grow with ``iters`` (default: ``max_iter``).
        The arguments are checked when it is called, before the first iteration is asked for.
        """
        iters = self.config.solve.max_iter if iters is None else inputs.steps("iters", iters)
        with torch.no_grad():
            e = self.embed(x)
            states = self.iterates(self.initial_state(e, init), e, iters)
        return self._walk(states, iters)

    def _walk(self, states: Iterator[torch.Tensor], iters: int) -> Iterator[tuple[int, torch.Tensor]]:
        for t in range(1, iters + 1):
            # Grad mode is entered per iteration, not around the loop: a generator suspended
            # inside ``no_grad`` would leak the mode into the caller's code between yields.
            with torch.no_grad():
                logits = self.readout(next(states))
            yield t, logits

    def solve_settings(self, **overrides: Any) -> SolveSettings:
        """The configured :class:`SolveSettings` with ``overrides`` for one call
        (:meth:`SolveSettings.with_`: switching ``solver`` or ``backward`` drops the configured
        options of that method unless new ones are given)."""
        return self.config.solve.with_(**overrides)

    # -- utilities ---------------------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_compiled_block"] = state["_compiled_segments"] = None  # compiled code is rebuilt on demand,
        # not copied or saved
        return state

    @contextlib.contextmanager
    def eager(self) -> Iterator[None]:
        """Run the block uncompiled inside this context (e.g. probes on another batch, which would
        compile the block anew); the model's config is restored after."""
        previous = self.config
        if previous.arch.compile:
            self.config = previous.replace(compile=False)
        try:
            yield
        finally:
            self.config = previous

    @contextlib.contextmanager
    def use_attention_backend(self, backend: str) -> Iterator[None]:
        """Temporarily compute attention with ``"sdpa"`` or ``"math"`` (forward-mode AD, double
        backward). With ``"math"`` the block also runs eagerly when ``compile`` is set: compiled code
        (AOTAutograd) has no double backward, which the Jacobian penalty and Jacobian products need."""
        check_backend(backend)
        layers = self._attentions()
        previous = [a.backend for a in layers]
        for a in layers:
            a.backend = backend
        try:
            yield
        finally:
            for a, b in zip(layers, previous):
                a.backend = b

    def _attentions(self) -> list[Attention]:
        """The attention layers of the block (of each untied block, in order)."""
        return [m for m in self.block.modules() if isinstance(m, Attention)]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def extra_repr(self) -> str:
        a, s = self.arch, self.config.solve
        return (
            f"grid={a.grid}, blocks={a.blocks}, recall={a.recall!r}, norm={a.norm!r}, residual={a.residual!r}, "
            f"attention={a.attention!r}, "
            f"solver={s.solver!r}, backward={s.backward!r}, max_iter={s.max_iter}"
        )
