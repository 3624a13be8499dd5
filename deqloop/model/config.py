"""What defines a :class:`~deqloop.model.LoopedDEQ`: its architecture and its default solve.

Two plain, validated objects:

    arch = Architecture(vocab_size=10, num_classes=10, grid=(9, 9), width=128, recall="internal")
    solve = SolveSettings(solver="anderson", backward="implicit", max_iter=30, rtol=1e-4)
    config = LoopedDEQConfig(arch, solve)          # what a checkpoint stores

The architecture fixes the parameters; the solve settings are only defaults that every call of
the model may override (``model(x, max_iter=500)``).
"""

from __future__ import annotations

import copy
import dataclasses
import numbers
from dataclasses import dataclass, field
from typing import Any

from deqloop.adjoint import BACKWARD_MODES, Backward, Unrolled, as_backward
from deqloop.errors import ConfigError, ConfigKeyError
from deqloop.model.attention import ATTENTION_BACKENDS
from deqloop.model.rope import check_head_dim
from deqloop.names import (ATTENTIONS, INITS, NORM_WEIGHTS, NORMS, QK_NORM_ORDERS, RECALL_MAPS, RECALLS,
                           RESIDUALS)
from deqloop.solvers import DEFAULT_SOLVER, LoopOptions, available_solvers
from deqloop.validate import changed_copy, choice, integer, known_keys, number, setting

__all__ = ["ATTENTIONS", "Architecture", "BACKWARDS", "BF16_RTOL", "EARLIER_FORMS", "INITS", "LoopedDEQConfig",
           "ModelSettings", "NORMS", "NORM_WEIGHTS", "PRECISIONS", "QK_NORM_ORDERS", "RECALLS", "RECALL_MAPS", "RESIDUALS",
           "SOLVE_SETTINGS", "SolveSettings"]

BACKWARDS = BACKWARD_MODES

# Arguments of fixed_point that the solve settings set from their own fields, not from solver_options.
PRECISIONS = ("float32", "autocast")
BF16_RTOL = 1e-2  # a solve whose map runs in bf16 stops at 1.4e-3 (benchmarks/bf16_policy.py): about 7× that
_FIXED_POINT_ARGS = {"method", "backward", "rtol", "atol", "max_iter", "backward_options", "throw"}


@dataclass
class ModelSettings:
    """The block's own settings: every architecture setting a user chooses (the task fixes the rest).

    :class:`Architecture` is these plus what the data fixes (``vocab_size``, ``num_classes``,
    ``grid``) and whether the block is compiled. A training config nests this class rather than
    :class:`Architecture` (or an Architecture whose task fields may be unset): it cannot hold a
    vocabulary or a grid other than its task's, nor a compile flag beside the run's own ``compile``
    (which may be ``"auto"``); the trainer fills those in, and the model keeps reading one flat,
    complete object.

    width: model width ``D``; heads: attention heads (``width % heads == 0``; the head dim must
        be even on 1-D grids and divisible by 4 on 2-D grids, for RoPE; checked by
        :class:`Architecture`, which knows the grid).
    mlp_ratio: the MLP's hidden width is ``round(mlp_ratio · width)``.
    recall: input injection, one of ``RECALLS``: ``"none"`` e enters only through z₀;
        ``"external"`` h = W_z z + b_z + W_e e + b_e enters the block; ``"internal"`` every
        sublayer g sees W_z·Pre(h) + b_z + W_e·e + b_e while the residual stream carries h.
    recall_maps: internal recall's maps, one of ``RECALL_MAPS``: ``"shared"`` one pair (W_z, W_e)
        for both sublayers (the paper's: ``ashlab11/generalization``,
        ``deepthinking/models/attention.py:307-310, 410-415, 430-431``); ``"per_sublayer"`` a pair
        per sublayer (deqloop's earlier form). Read only with internal recall.
    norm: RMSNorm placement around each sublayer g, one of ``NORMS``: ``"pre"`` h + g(n(h));
        ``"peri"`` h + n(g(n(h))); ``"post"`` n(h + g(h)); ``"sandwich"`` n(h + g(n(h))) (with
        ``residual="gru"`` each ``+`` is the GRU merge; :mod:`deqloop.model.residual`).
    norm_weights: ``"shared"`` one RMSNorm per placement used by both sublayers (the paper's,
        ``attention.py:283-299``) or ``"per_sublayer"`` (deqloop's earlier form).
    residual: the merge of stream and branch, one of ``RESIDUALS``: ``"add"`` h + y; ``"gru"``
        GRUCell(input=y, hidden=h), one cell per block (``attention.py:360-366``). The paper's
        sweep row ``gru`` is ``residual="gru", norm="peri"`` (``experiments/run_all.bash:17-19``).
    bias: biases on the injection maps and the attention's qkv and output projections (the
        paper's; the MLP and readout always have them).
    blocks: different (untied) blocks applied in order per iteration; the paper's "fixed"
        baseline is ``blocks=15, recall="none"`` run for one iteration (``run_all.bash:71-77``).
    attention: ``"full"`` or ``"local"`` (each token sees the cells within ``window // 2`` on
        every axis; ``window`` is the full, odd kernel size).
    qk_norm: RMSNorm on queries and keys per head; qk_norm_order: ``"after_rope"`` (the paper's,
        ``attention.py:130-133``) or ``"before_rope"``. rope_base: RoPE frequency base.
    attention_backend: ``"sdpa"`` (fused) or ``"math"`` (supports forward-mode AD).
    gate: a contractive parameterisation: each sublayer's branch is scaled per channel by a
        learnable γ, initialised to ``gate`` and clamped to [−gate_cap, gate_cap] (LayerScale with a
        cap); ``None``: no gate.
    """

    width: int = setting("model width", default=128)
    heads: int = setting("attention heads", default=4)
    mlp_ratio: float = setting("MLP hidden width / model width", default=4.0)
    recall: str = setting("input injection: none, external or internal", default="internal")
    recall_maps: str = setting("internal recall's maps: shared (one pair W_z, W_e for both sublayers: the paper's) "
                               "or per_sublayer (a pair per sublayer)", default="shared")
    norm: str = setting("norm placement: pre, peri, post or sandwich", default="post")
    norm_weights: str = setting("RMSNorm weights: shared by the block's two sublayers (the paper's) or "
                                "per_sublayer", default="shared")
    residual: str = setting("residual merge: add (h + y) or gru (GRUCell(input=y, hidden=h); the paper's gru row "
                            "is --residual gru --norm peri)", default="add")
    bias: bool = setting("biases on the recall maps and the attention projections (the paper's)", default=True)
    blocks: int = setting("different (untied) blocks per iteration; the paper's fixed baseline: 15, recall none, "
                          "trained and tested at 1 iteration", default=1)
    attention: str = setting("attention: full or local", default="full")
    window: int = setting("local attention kernel size (odd)", default=5)
    qk_norm: bool = setting("RMSNorm queries and keys", default=True)
    qk_norm_order: str = setting("where the QK RMSNorm sits: after_rope (the paper's) or before_rope",
                                 default="after_rope")
    rope_base: float = setting("RoPE frequency base", default=10000.0)
    attention_backend: str = setting("attention kernel: sdpa (fused) or math (supports forward-mode AD)",
                                     default="sdpa")
    gate: float | None = setting("contractive parameterisation: scale each sublayer's branch by a learnable "
                                 "per-channel gate initialised to this, clamped to [-gate_cap, gate_cap] (default: "
                                 "no gate)", default=None)
    gate_cap: float = setting("the gate's clamp", default=0.75)

    def __post_init__(self) -> None:
        for name in ("width", "heads", "blocks"):
            integer(name, getattr(self, name))
        if self.width % self.heads != 0:
            raise ConfigError(f"width ({self.width}) must be divisible by heads ({self.heads})")
        number("mlp_ratio", self.mlp_ratio, low=0, low_open=True)
        integer("hidden width round(mlp_ratio · width)", round(self.mlp_ratio * self.width))
        choice("recall", self.recall, RECALLS)
        choice("recall_maps", self.recall_maps, RECALL_MAPS)
        choice("norm", self.norm, NORMS)
        choice("norm_weights", self.norm_weights, NORM_WEIGHTS)
        choice("residual", self.residual, RESIDUALS)
        choice("qk_norm_order", self.qk_norm_order, QK_NORM_ORDERS)
        choice("attention", self.attention, ATTENTIONS)
        choice("attention_backend", self.attention_backend, ATTENTION_BACKENDS)
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1 or self.window % 2 == 0:
            raise ConfigError(f"window must be an odd positive kernel size, got {self.window!r}")
        for name in ("qk_norm", "bias"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be True or False, got {getattr(self, name)!r}")
        number("rope_base", self.rope_base, low=1, low_open=True)
        number("gate_cap", self.gate_cap, low=0, low_open=True)
        if self.gate is not None:
            number("gate", self.gate, low=0, high=self.gate_cap, low_open=True)
            if self.residual != "add":
                raise ConfigError(f"gate scales the branch of the additive residual; residual={self.residual!r} "
                                  "has no such branch: use residual='add' or no gate")


@dataclass
class Architecture(ModelSettings):
    """The parameters' shapes and the block's wiring: the :class:`ModelSettings` (see there) plus
    what the data and the run fix, given by keyword.

    vocab_size: number of input token ids. num_classes: outputs per token of the readout head.
    grid: training grid, ``(L,)`` for sequences or ``(H, W)`` for boards. Inputs must have as
        many grid axes; their sizes may differ (RoPE and local attention are relative).
    compile: compile the block with ``torch.compile``.
    compile_segment: with ``compile``, :meth:`LoopedDEQ.unroll <deqloop.model.LoopedDEQ.unroll>`
        (the progressive loss's graded iterations) runs as compiled segments of 1, 2, 4, …,
        ``compile_segment`` iterations (a power of two; :class:`~deqloop.model.compiled.CompiledSegments`);
        0 (the default): through the compiled block, one call an iteration.
    """

    vocab_size: int = field(kw_only=True)
    num_classes: int = field(kw_only=True)
    grid: tuple[int, ...] = field(kw_only=True)
    compile: bool = field(default=False, kw_only=True)
    compile_segment: int = field(default=0, kw_only=True)

    def __post_init__(self) -> None:
        grid = (self.grid,) if isinstance(self.grid, int) else self.grid
        ok = isinstance(grid, (tuple, list)) and all(isinstance(n, numbers.Integral) and not isinstance(n, bool) for n in grid)
        if not ok:
            raise ConfigError(f"grid must be (L,) or (H, W) of positive integer sizes, got {grid!r}")
        self.grid = tuple(int(n) for n in grid)
        if len(self.grid) not in (1, 2) or any(n < 1 for n in self.grid):
            raise ConfigError(f"grid must be (L,) or (H, W) of positive sizes, got {grid!r}")
        for name in ("vocab_size", "num_classes"):
            integer(name, getattr(self, name))
        super().__post_init__()
        check_head_dim(self.width // self.heads, len(self.grid))
        if not isinstance(self.compile, bool):
            raise ConfigError(f"compile must be True or False, got {self.compile!r}")
        check_compile_segment(self.compile_segment)


@dataclass(frozen=True)
class SolveSettings:
    """How a call of the model solves for its equilibrium, unless the call says otherwise.

    init: z₀, one of ``INITS``: ``"embed"`` z₀ = e, ``"zeros"``, ``"noise"`` (Gaussian with
        standard deviation ``init_scale``).
    solver: method name for :func:`deqloop.solve` (``"anderson"``, ``"picard"``, ``"broyden"``,
        ``"torchdeq:<name>"``, ...); solver_options: extra keywords for it.
    backward: gradient through the equilibrium: a name of ``BACKWARDS`` (with ``backward_options``)
        or a :class:`deqloop.adjoint.Backward` object. ``"unrolled"`` backpropagates through
        naive iteration, so it solves by Picard iteration whatever ``solver`` says.
    max_iter, rtol, atol: the stopping rule ``‖f(z) − z‖ ≤ atol + rtol·‖f(z)‖`` per example.
    throw: raise when some example does not converge.
    precision: the map's precision in the solver's own evaluations (those that record no
        gradient) when the call runs under autocast, one of ``PRECISIONS``: ``"float32"`` (autocast
        off for them: under bf16 the map's rounding floors the relative residual at 1e-3 to 1e-2,
        above the default ``rtol``, so no example would converge; evaluations that carry gradients —
        phantom steps, BPTT, the implicit backward's products — keep the caller's autocast) or
        ``"autocast"`` (every evaluation in the caller's autocast; ``rtol`` is then raised to
        ``BF16_RTOL`` with a warning). Without autocast both are the same.
    """

    init: str = setting("initial state z0: embed, zeros, noise or mixed", default="embed")
    init_scale: float = setting("standard deviation of the noise init", default=0.1)
    solver: str = setting("forward solver (equilibrium loss, adaptive evaluation): anderson, picard, broyden, "
                          "torchdeq:<name>", default=DEFAULT_SOLVER)
    backward: str | Backward = setting("gradient through the equilibrium: implicit, phantom, unrolled, truncated, "
                                       "none or neumann (options in backward_options)", default="implicit")
    max_iter: int = setting("iterations per forward: the solver's budget (under the progressive loss of training: "
                            "its exact count of plain iterations)", default=30)
    rtol: float = setting("solver relative tolerance", default=1e-4)
    atol: float = setting("solver absolute tolerance", default=0.0)
    solver_options: dict[str, Any] = setting("solver options as JSON, e.g. '{\"m\": 5}'", default_factory=dict)
    backward_options: dict[str, Any] = setting("options of the backward mode as JSON, e.g. '{\"steps\": 3}' for "
                                               "phantom", default_factory=dict)
    throw: bool = setting("raise when some example does not converge", default=False)
    precision: str = setting("under amp: the precision of the solver's own evaluations of the map (no gradient): "
                             "float32 (autocast off there: solves still converge) or autocast (bf16 too; rtol raised "
                             "to what bf16 reaches, with a warning)", default="float32")
    # Resolved once from the fields above, at construction (and by with_ for what it changes):
    adjoint: Backward = field(init=False, repr=False, compare=False)
    loop: LoopOptions = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._resolve(SOLVE_SETTINGS)

    def _resolve(self, names: Any) -> None:
        """Check the fields ``names`` and rebuild what depends on them: the backward object
        (:attr:`adjoint`) and the forward loop (:attr:`loop`, a :class:`LoopOptions` whose own
        construction checks the solver, its options and the tolerances)."""
        names = set(names)
        for name in names & _OWN_CHECKS.keys():
            _OWN_CHECKS[name](getattr(self, name))
        if names & {"backward", "backward_options"}:
            object.__setattr__(self, "adjoint", as_backward(self.backward, self.backward_options))
        if names & _LOOP_FIELDS:
            options = {k: v for k, v in self.solver_options.items() if k not in _LOOP_OPTIONS}
            loop = {"method": self.method, "options": options, "rtol": self.rtol, "atol": self.atol,
                    "max_iter": self.max_iter, "throw": self.throw,
                    **{k: self.solver_options.get(k, default) for k, default in _LOOP_OPTIONS.items()}}
            built = self.__dict__.get("loop")
            # the model checks its inputs itself, so its loop skips the entry check (a host sync)
            object.__setattr__(self, "loop", LoopOptions(**loop, check_input=False) if built is None
                               else built.with_(**loop))

    def with_(self, **overrides: Any) -> SolveSettings:
        """These settings with ``overrides`` (fields of :class:`SolveSettings`): the one rule for
        per-call settings, used by the model's calls, evaluation, analysis and the training monitor.

        Switching ``solver`` or ``backward`` drops the configured options of that method unless new
        ones are given (they belong to the configured method). Only the fields that change are
        checked again; no overrides (or none that change a value) return ``self``.
        """
        if not overrides:
            return self
        known_keys(overrides, SOLVE_SETTINGS, "solve settings")
        overrides = dict(overrides)
        for key in ("solver", "backward"):
            if key in overrides and overrides[key] != getattr(self, key):
                overrides.setdefault(f"{key}_options", {})
        new, changed = changed_copy(self, overrides)
        if changed:
            new._resolve(changed)
        return new

    @property
    def method(self) -> str:
        """The forward solver actually run (``"picard"`` under the unrolled backward)."""
        return self.adjoint.default_method if isinstance(self.adjoint, Unrolled) else self.solver


def check_compile_segment(value: Any) -> int:
    """``compile_segment``: 0 or a power of two."""
    value = integer("compile_segment", value, minimum=0)
    if value & (value - 1):
        raise ConfigError(f"compile_segment must be 0 or a power of two (1, 2, 4, 8, 16, ...), got {value}")
    return value


def _flag(name: str) -> Any:
    def check(value: Any) -> None:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be True or False, got {value!r}")
    return check


def _options_dict(name: str) -> Any:
    def check(value: Any) -> None:
        if not isinstance(value, dict):
            raise ConfigKeyError(f"{name} must be a dict, got {type(value).__name__}")
        clash = sorted(set(value) & _FIXED_POINT_ARGS) if name == "solver_options" else []
        if clash:
            raise ConfigError(f"solver_options {clash} are settings of their own: pass them directly")
    return check


# What SolveSettings checks itself; the solver, its options and the tolerances are checked by the
# LoopOptions they build, the backward by as_backward.
_OWN_CHECKS: dict[str, Any] = {
    "init": lambda v: choice("init", v, INITS),
    "precision": lambda v: choice("precision", v, PRECISIONS),
    "init_scale": lambda v: number("init_scale", v, low=0),
    "throw": _flag("throw"),
    "solver": lambda v: choice("solver", v, available_solvers()),
    "solver_options": _options_dict("solver_options"),
    "backward_options": _options_dict("backward_options"),
}
# solver_options that set the loop rather than the method (see deqloop.solve)
_LOOP_OPTIONS = {f.name: f.default for f in dataclasses.fields(LoopOptions)
                 if f.name in ("trace", "check_every", "divergence")}
_LOOP_FIELDS = frozenset({"solver", "solver_options", "rtol", "atol", "max_iter", "throw", "backward",
                          "backward_options"})


# The architecture fields added with the paper's forms, and the values that give the forms every
# model had before them: a stored config without these fields (checkpoint format < 3) means these.
EARLIER_FORMS: dict[str, Any] = {"recall_maps": "per_sublayer", "norm_weights": "per_sublayer", "bias": False,
                                 "qk_norm_order": "before_rope"}

_TASK_FIXED = ("vocab_size", "num_classes", "grid")  # listed first: what every model must be given
ARCH_FIELDS = _TASK_FIXED + tuple(f.name for f in dataclasses.fields(Architecture) if f.name not in _TASK_FIXED)
SOLVE_SETTINGS = tuple(f.name for f in dataclasses.fields(SolveSettings) if f.init)


@dataclass
class LoopedDEQConfig:
    """A model's :class:`Architecture` and default :class:`SolveSettings`, as a checkpoint stores them."""

    arch: Architecture
    solve: SolveSettings = field(default_factory=SolveSettings)

    @classmethod
    def from_flat(cls, values: dict[str, Any], where: str = "LoopedDEQ") -> LoopedDEQConfig:
        """Build from one flat dict of architecture and solve fields (unknown keys are an error)."""
        known_keys(values, ARCH_FIELDS + SOLVE_SETTINGS, where)
        arch = {k: v for k, v in values.items() if k in ARCH_FIELDS}
        solve = {k: v for k, v in values.items() if k in SOLVE_SETTINGS}
        return cls(Architecture(**arch), SolveSettings(**solve))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LoopedDEQConfig:
        """Build from :meth:`to_dict`'s ``{"arch": ..., "solve": ...}`` (or a flat dict of both)."""
        if set(values) <= {"arch", "solve"} and "arch" in values:
            known_keys(values["arch"], ARCH_FIELDS, "Architecture")
            known_keys(values.get("solve", {}), SOLVE_SETTINGS, "SolveSettings")
            return cls(Architecture(**values["arch"]), SolveSettings(**values.get("solve", {})))
        return cls.from_flat(values, "LoopedDEQConfig")

    def to_dict(self) -> dict[str, Any]:
        """Plain values: ``{"arch": {...}, "solve": {...}}`` (a backward object is stored by name)."""
        solve = {name: getattr(self.solve, name) for name in SOLVE_SETTINGS}
        solve = {k: copy.deepcopy(v) if isinstance(v, dict) else v for k, v in solve.items()}
        if isinstance(self.solve.backward, Backward):
            solve["backward"], solve["backward_options"] = self.solve.backward.to_spec()
        return {"arch": dataclasses.asdict(self.arch), "solve": solve}

    def replace(self, **changes: Any) -> LoopedDEQConfig:
        """A copy with architecture and/or solve fields changed (flat keywords)."""
        known_keys(changes, ARCH_FIELDS + SOLVE_SETTINGS, "LoopedDEQConfig.replace")
        arch = {k: v for k, v in changes.items() if k in ARCH_FIELDS}
        solve = {k: v for k, v in changes.items() if k in SOLVE_SETTINGS}
        return LoopedDEQConfig(dataclasses.replace(self.arch, **arch) if arch else self.arch,
                               self.solve.with_(**solve))
