"""Everything that defines a training run: one validated dataclass.

    config = TrainConfig(task=NAME, task_options={...the task's settings...},
                         depth_offset=2, width=32, heads=4, attention="local", window=3,
                         loss="progressive", steps=2000, out="runs/ps")

The task's own settings (lengths, data files, augmentation, ...) live in ``task_options``: they
are the fields of the task's dataclass, validated by building the task. Every other field is a
``deqloop train`` flag (``max_iter`` is ``--max-iter``); the task's fields are flags too.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deqloop.adjoint import Backward, Implicit, as_backward
from deqloop.device import check_device
from deqloop.errors import ConfigError
from deqloop.model import INITS, Architecture, LoopedDEQConfig, SolveSettings
from deqloop.model.config import PRECISIONS
from deqloop.tasks import DEFAULT_TASK, Task, get_task, task_class
from deqloop.train.tracking import LOGGERS
from deqloop.validate import choice, integer, known_keys, number, setting

__all__ = ["AMP_MODES", "DEFAULT_BACKWARD", "LOGGERS", "LOSSES", "RUNTIME_FIELDS", "SCHEDULES", "STORED_DEFAULTS",
           "TrainConfig", "upgrade_stored"]

LOSSES = ("equilibrium", "progressive")
SCHEDULES = ("cosine", "linear", "constant", "paper")
EQUILIBRIUM_BACKWARDS = ("implicit", "phantom", "unrolled", "neumann")
AMP_MODES = ("auto", "bf16", "none")

# Fields that describe how a run is executed rather than what it computes: they may differ
# between a run and its resumption.
# The equilibrium loss's default recipe (see TrainConfig._default_recipe): the phantom gradient
# through 5 damped steps, no warm start.
DEFAULT_BACKWARD: tuple[str, dict[str, Any]] = ("phantom", {"steps": 5, "tau": 0.8})
RUNTIME_FIELDS = frozenset({"resume", "overwrite", "progress", "threads", "device", "out", "logger", "prefetch",
                            "stability_every", "stability_size",  # the monitor measures, never trains
                            "max_consecutive_skips",  # only decides when a failing run gives up
                            "compile"})  # the same function, compiled or not


@dataclass
class TrainConfig:
    """Everything that defines a training run; validated at construction.

    Unknown keys in :meth:`from_dict` and impossible combinations raise :class:`ConfigError`
    (a ``ValueError``; unknown keys also a ``TypeError``).
    """

    # -- task ----------------------------------------------------------------------------------
    task: str = setting("a registered task (see deqloop.tasks.task_names(); a user's own is added with "
                        "register_task) or 'package.module:ClassName'", default=DEFAULT_TASK)
    task_options: dict[str, Any] = setting("the task's own settings (the fields of its dataclass); after "
                                           "construction it holds all of them, defaults included",
                                           default_factory=dict)
    train_size: int = setting("0: a fresh batch every step from the task; N: a fixed pool of N training examples "
                              "drawn once and visited in shuffled epochs", default=0)
    # -- model ---------------------------------------------------------------------------------
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
    init: str = setting("initial state z0: embed, zeros, noise or mixed", default="embed")
    gate: float | None = setting("contractive parameterisation: scale each sublayer's branch by a learnable "
                                 "per-channel gate initialised to this, clamped to [-0.75, 0.75] (default: no gate)",
                                 default=None)
    # -- solve and loss ------------------------------------------------------------------------
    loss: str = setting("training regime: equilibrium (fixed-point gradients) or progressive (deep-thinking "
                        "loss through plain iterations)", default="equilibrium")
    backward: str | None = setting("equilibrium loss: implicit, phantom, unrolled or neumann (default phantom with "
                                   "5 damped steps, tau 0.8: the default recipe; given explicitly, phantom's options "
                                   "default to one undamped step, the Jacobian-free gradient); not used by the "
                                   "progressive loss",
                                   default=None)
    backward_options: dict[str, Any] = setting("options of the backward mode as JSON, e.g. '{\"steps\": 3}' for "
                                               "phantom", default_factory=dict)
    alpha: float | None = setting("progressive loss: weight of the truncated term (n ~ U{0..T−1} iterations "
                                  "without gradient, then k ~ U{1..T−n} graded); 1 - alpha weighs the loss after "
                                  "all T iterations, backpropagated through them (0: plain backpropagation). Default "
                                  "1 for loss=progressive (the paper's), 0 for an equilibrium warm start",
                                  default=None)
    detach_z0: bool = setting("progressive loss: detach z0 when the draw is n = 0 (deqloop's earlier form); by "
                              "default the k graded iterations then start from z0 = e with its gradient, so the "
                              "embedding learns through z0 (the paper's)", default=False)
    solver: str = setting("forward solver (equilibrium loss, adaptive evaluation): anderson, picard, broyden, "
                          "torchdeq:<name>", default="anderson")
    solver_options: dict[str, Any] = setting("solver options as JSON, e.g. '{\"m\": 5}'", default_factory=dict)
    max_iter: int = setting("training depth: iterations per forward (solver budget for the equilibrium loss, "
                            "exact count for the progressive loss)", default=30)
    depth_offset: int | None = setting("plain iterations of the progressive loss (and of the equilibrium loss's "
                                       "warm start): L + depth_offset for a batch whose task-reported propagation "
                                       "depth is L (default: max_iter always)", default=None)
    rtol: float = setting("solver relative tolerance", default=1e-4)
    # -- fixed-point training recipes (equilibrium loss; see deqloop/train/objectives.py) ----------
    pretrain_steps: int | None = setting("warm start: train the first N steps with the progressive loss (plain "
                                         "iterations, alpha and depth_offset as set), then switch to the equilibrium "
                                         "loss (default 0: none)",
                                         default=None)
    jac_reg: float = setting("weight of the Jacobian penalty: a Hutchinson estimate of ‖∂f/∂z‖²_F / dim at the "
                             "fixed point (one random vector, one extra VJP)", default=0.0)
    jac_reg_every: int = setting("apply the Jacobian penalty every N steps", default=1)
    fp_states: int = setting("fixed-point correction: split the solver budget into this many segments and "
                             "supervise each segment's end state with the backward mode's gradient", default=1)
    fp_gamma: float = setting("fixed-point correction: weight gamma^(fp_states − 1 − i) of segment i "
                              "(normalised to sum to 1)", default=0.8)
    train_init: str | None = setting("initial state of the training solves (e.g. mixed: Gaussian entries kept "
                                     "with probability 1/2, for path independence); default: the model's init",
                                     default=None)
    atol: float = setting("solver absolute tolerance", default=0.0)
    # -- optimization --------------------------------------------------------------------------
    steps: int | None = setting("optimizer steps (default 1000, or from --epochs)", default=None)
    epochs: float | None = setting("passes over a fixed pool (needs --train-size)", default=None)
    batch_size: int = setting("global batch size (split across processes)", default=64)
    lr: float = setting("peak learning rate", default=1e-3)
    min_lr: float = setting("learning rate at the end of the decay", default=0.0)
    warmup_steps: int | None = setting("warm-up steps: linear for cosine, linear and constant (default: a tenth of "
                                       "the steps, at most 100); exponential for paper (default: a tenth of the "
                                       "steps)", default=None)
    schedule: str = setting("learning-rate schedule: cosine, linear or constant decay after a linear warm-up; paper: "
                            "the paper's exponential warm-up 1 − exp(−(t+1)/P) over the first tenth, constant, then "
                            "×0.1 from six tenths of the steps on (its clock ticks once per epoch with --train-size, else "
                            "once per step; deqloop/train/runtime.py)", default="cosine")
    weight_decay: float = setting("AdamW weight decay (not applied to norms and biases)", default=0.01)
    grad_clip: float = setting("clip the gradient norm to this (0: no clipping)", default=1.0)
    max_consecutive_skips: int = setting("stop with an error after this many steps in a row skipped for a "
                                         "non-finite loss or gradient; last.pt keeps the last good step "
                                         "(0: no cap)", default=50)
    # -- evaluation and logging ----------------------------------------------------------------
    eval_every: int = setting("evaluate every N steps (0: only at the end)", default=0)
    eval_size: int = setting("examples per split (val and hard) in the evaluation during training and at its end "
                             "(0: no evaluation)", default=256)
    eval_iters: tuple[int, ...] = setting("iteration counts of the periodic evaluation (default: the training "
                                          "depth)", default=())
    log_every: int = setting("write a metrics line every N steps", default=10)
    logger: str = setting("where metrics go besides OUT/metrics.jsonl (always written): jsonl (nowhere else), "
                          "tensorboard (OUT/tensorboard) or wandb (offline, OUT/wandb)", default="jsonl")
    stability_every: int = setting("every N steps, measure the loop's stability on a fixed probe batch and write "
                                   "it to the metrics (ρ(∂f/∂z), forward, plain-iteration and backward convergence, "
                                   "gradient norm per parameter group; deqloop/train/monitor.py); 0: off", default=0)
    stability_size: int = setting("examples in the stability monitor's probe batch (drawn once from the val split)",
                                  default=16)
    # -- run -----------------------------------------------------------------------------------
    seed: int = setting("seed of the model, the data order and every random draw", default=0)
    out: str = setting("run folder (default runs/<task>)", default="")
    checkpoint_every: int = setting("write last.pt every N steps (and at the end)", default=500)
    keep_every: int = setting("also keep step_N.pt every N steps (0: never)", default=0)
    resume: bool = setting("continue the run in --out from its last.pt", default=False)
    overwrite: bool = setting("start afresh even if --out holds a run", default=False)
    device: str = setting("auto, cpu, cuda or cuda:N (under torchrun: the local GPU)", default="auto")
    solve_precision: str = setting("under amp: the precision of the solver's own evaluations of the map (no "
                                   "gradient): float32 (autocast off there: solves still converge) or autocast "
                                   "(bf16 too; rtol raised to what bf16 reaches, with a warning)",
                                   default="float32")
    amp: str = setting("autocast: auto (bf16 on a CUDA GPU of compute capability ≥ 8.0, float32 elsewhere), bf16 "
                       "(also CPU autocast) or none", default="auto")
    compile: bool | str = setting("compile the block with torch.compile: true, false, or auto (after timing the "
                                  "first steps, when it pays for itself over the run: deqloop/train/autocompile.py)",
                                  default="auto")
    threads: int = setting("CPU threads for torch (0: torch's default)", default=0)
    prefetch: int = setting("training batches made ahead by as many background threads while a step trains "
                            "(0: each batch in its step); the batches are the same either way", default=2)
    progress: bool = setting("show a progress bar", default=True)

    def __post_init__(self) -> None:
        if isinstance(self.eval_iters, (str, bytes)) or not isinstance(self.eval_iters, Iterable):
            raise ConfigError(f"eval_iters must be a sequence of integers ≥ 1, got {self.eval_iters!r}")
        self.eval_iters = tuple(integer("eval_iters entry", t) for t in self.eval_iters)
        for name in ("task_options", "solver_options", "backward_options"):
            if not isinstance(getattr(self, name), dict):
                raise ConfigError(f"{name} must be a dict, got {type(getattr(self, name)).__name__}")
        if self.compile not in (True, False, "auto"):
            raise ConfigError(f"compile must be True, False or 'auto', got {self.compile!r}")
        for name in ("qk_norm", "bias", "detach_z0", "resume", "overwrite", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if not isinstance(self.out, (str, os.PathLike)):
            raise ConfigError(f"out must be a folder path (a string), got {self.out!r}")
        self.out = os.fspath(self.out)
        self._task = get_task(self.task, **self.task_options)  # validates the task's settings
        self.task_options = self._task.settings() or dict(self.task_options)  # every setting, as plain values
        for name in ("width", "heads", "max_iter", "batch_size", "log_every", "checkpoint_every"):
            integer(name, getattr(self, name))
        for name in ("train_size", "eval_size", "eval_every", "keep_every", "threads", "prefetch", "seed", "stability_every",
                     "max_consecutive_skips"):
            integer(name, getattr(self, name), minimum=0)
        if self.seed >= 2**64:
            raise ConfigError(f"seed must be an integer in [0, 2**64) (torch's generators take 64 bits), got {self.seed}")
        if self.eval_every and not self.eval_size:
            raise ConfigError("eval_every needs eval_size > 0")
        integer("stability_size", self.stability_size)
        choice("loss", self.loss, LOSSES)
        choice("schedule", self.schedule, SCHEDULES)
        choice("amp", self.amp, AMP_MODES)
        choice("solve_precision", self.solve_precision, PRECISIONS)
        choice("logger", self.logger, LOGGERS)
        check_device(self.device)
        self._check_steps()
        self._check_loss()
        number("lr", self.lr, low=0, low_open=True)
        number("min_lr", self.min_lr, low=0, high=self.lr)
        if self.warmup_steps is None:
            self.warmup_steps = self.steps // 10 if self.schedule == "paper" else min(100, self.steps // 10)
        if self.schedule == "paper" and self.min_lr:
            raise ConfigError(f"min_lr ({self.min_lr}) has no place in schedule='paper': it ends at 0.1 × lr")
        integer("warmup_steps", self.warmup_steps, minimum=0)
        if self.warmup_steps >= self.steps:
            raise ConfigError(f"warmup_steps ({self.warmup_steps}) must be below steps ({self.steps})")
        number("weight_decay", self.weight_decay, low=0)
        number("grad_clip", self.grad_clip, low=0)
        if self.resume and self.overwrite:
            raise ConfigError("resume and overwrite exclude each other")
        if not self.out:
            self.out = str(Path("runs") / self.task.replace(":", "_"))
        self.model_config()  # architecture and solve settings are validated by the model's config

    def _check_loss(self) -> None:
        if self.alpha is None:  # the paper's alpha = 1; a warm start keeps its plain-backpropagation default
            self.alpha = 1.0 if self.loss == "progressive" else 0.0
        number("alpha", self.alpha, low=0, high=1)
        self._default_recipe()
        if self.depth_offset is not None:
            integer("depth_offset", self.depth_offset, minimum=0)
            if self.loss == "equilibrium" and not self.pretrain_steps:
                raise ConfigError("depth_offset sets plain iterations: it needs loss='progressive' or a warm start "
                                  "(pretrain_steps > 0); the equilibrium loss's solver budget is max_iter")
            if self._task.propagation_depth() is None:
                raise ConfigError(f"depth_offset needs a task that reports its propagation depth; task "
                                  f"{self.task!r} does not")
        integer("pretrain_steps", self.pretrain_steps, minimum=0)
        number("jac_reg", self.jac_reg, low=0)
        integer("jac_reg_every", self.jac_reg_every)
        integer("fp_states", self.fp_states)
        number("fp_gamma", self.fp_gamma, low=0, high=1, low_open=True)
        if self.train_init is not None:
            choice("train_init", self.train_init, INITS)
        recipes = {"pretrain_steps": self.pretrain_steps, "jac_reg": self.jac_reg, "fp_states": self.fp_states != 1,
                   "train_init": self.train_init}
        if self.loss == "equilibrium":
            if self.backward is not None:
                choice("backward", self.backward, EQUILIBRIUM_BACKWARDS)
            if self.alpha != 0.0 and not self.pretrain_steps:
                raise ConfigError("alpha weighs the progressive loss; it needs loss='progressive' or a warm start "
                                  "(pretrain_steps > 0)")
            if self.detach_z0 and not self.pretrain_steps:
                raise ConfigError("detach_z0 shapes the progressive loss; it needs loss='progressive' or a warm "
                                  "start (pretrain_steps > 0)")
            if self.pretrain_steps >= self.steps:
                raise ConfigError(f"pretrain_steps ({self.pretrain_steps}) must be below steps ({self.steps}): the "
                                  "equilibrium loss would never train")
        else:
            if self.backward is not None or self.backward_options:
                raise ConfigError("backward and backward_options apply to loss='equilibrium'; the progressive loss "
                                  "backpropagates through plain iterations")
            used = sorted(k for k, v in recipes.items() if v)
            if used:
                raise ConfigError(f"{', '.join(used)} are fixed-point training recipes: they need loss='equilibrium'")

    def _default_recipe(self) -> None:
        """The equilibrium loss's default, the gradient that trained best and most reliably in the
        recipe ablation (RESULTS.md, ``python -m experiments.sweep --preset recipes``: with a
        40-iteration budget its Anderson-solved answers are 100 / 100 / 99 % exact at 48 bits over
        three seeds, plain iteration reaching 75 / 100 / 73 %): the phantom gradient
        (:data:`DEFAULT_BACKWARD`); a field given explicitly is kept. No warm start by default: it
        inherits the progressive loss's failed seeds."""
        if self.pretrain_steps is None:
            self.pretrain_steps = 0
        if self.loss == "equilibrium" and self.backward is None:
            self.backward = DEFAULT_BACKWARD[0]
            self.backward_options = {**DEFAULT_BACKWARD[1], **self.backward_options}

    def _check_steps(self) -> None:
        if self.epochs is not None:
            number("epochs", self.epochs, low=0, low_open=True)
            if self.train_size == 0:
                raise ConfigError("epochs counts passes over a fixed pool: set train_size > 0")
            derived = max(1, math.ceil(self.epochs * self.train_size / self.batch_size))
            if self.steps is not None and self.steps != derived:
                raise ConfigError(f"steps ({self.steps}) and epochs ({self.epochs} = {derived} steps) disagree; "
                                  "give one")
            self.steps = derived
        if self.steps is None:
            self.steps = 1000
        integer("steps", self.steps)
        if self.train_size and self.train_size < self.batch_size:
            raise ConfigError(f"train_size ({self.train_size}) is smaller than batch_size ({self.batch_size})")

    # -- derived -------------------------------------------------------------------------------

    def build_task(self) -> Task:
        """The task this run trains on (built once, from ``task`` and ``task_options``)."""
        return self._task

    def adjoint(self) -> Backward:
        """The backward mode of the equilibrium loss (implicit when ``backward`` is unset)."""
        return as_backward(self.backward or "implicit", self.backward_options)

    def depth(self, x: Any = None) -> int:
        """Iterations per training forward for a batch ``x`` (``None``: the largest training batch):
        the progressive loss's plain iterations (:meth:`plain_depth`), or the equilibrium loss's
        solver budget ``max_iter``."""
        return self.plain_depth(x) if self.loss == "progressive" else self.max_iter

    def plain_depth(self, x: Any = None) -> int:
        """Plain iterations of the progressive loss (or warm start) on ``x``: the task's propagation
        depth plus ``depth_offset`` when that is set, else ``max_iter``."""
        if self.depth_offset is not None:
            return self._task.propagation_depth(x) + self.depth_offset
        return self.max_iter

    def schedule_tick(self) -> int:
        """Steps per tick of the ``paper`` schedule's clock: an epoch of the fixed pool (the paper
        steps its schedulers once per epoch), or 1 without a pool."""
        return max(1, self.train_size // self.batch_size) if self.train_size else 1

    def model_config(self) -> LoopedDEQConfig:
        """The :class:`LoopedDEQConfig` this run trains."""
        t = self._task
        arch = Architecture(vocab_size=t.vocab_size, num_classes=t.num_classes, grid=t.grid, width=self.width,
                            heads=self.heads, mlp_ratio=self.mlp_ratio, recall=self.recall,
                            recall_maps=self.recall_maps, norm=self.norm, norm_weights=self.norm_weights,
                            residual=self.residual, bias=self.bias, blocks=self.blocks, attention=self.attention,
                            window=self.window, qk_norm=self.qk_norm, qk_norm_order=self.qk_norm_order,
                            compile=self.compile is True, gate=self.gate)
        solve = SolveSettings(init=self.init, solver=self.solver, backward=self.backward or "implicit",
                              max_iter=self.depth(), rtol=self.rtol, atol=self.atol,
                              solver_options=dict(self.solver_options), backward_options=dict(self.backward_options),
                              precision=self.solve_precision)
        return LoopedDEQConfig(arch, solve)

    @property
    def implicit(self) -> bool:
        """Whether steps take the exact implicit gradient (the IFT assumes converged solves)."""
        return self.loss == "equilibrium" and isinstance(self.adjoint(), Implicit)

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serializable values (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a plain dict; unknown keys are an error that lists the allowed ones."""
        known_keys(values, [f.name for f in dataclasses.fields(cls)], "TrainConfig")
        return cls(**values)

    @classmethod
    def from_flat(cls, values: dict[str, Any] | None = None, /, **more: Any) -> TrainConfig:
        """Build from flat setting names (those of ``deqloop train``'s flags, ``max_iter`` for
        ``--max-iter``) given as a dict and/or keywords; unknown names are an error that lists the
        allowed ones. The stable way to build a config from name → value pairs."""
        return cls.from_dict({**(values or {}), **more})


STORED_DEFAULTS: dict[str, Any] = {"detach_z0": True, "solve_precision": "float32"}
"""What a stored config that lacks a field ran with: the form before the field existed (a run
trained before ``detach_z0`` existed detached z₀; one before ``solve_precision`` solved in float32,
since autocast then ran on CUDA alone and no run had used it)."""


def upgrade_stored(values: dict[str, Any]) -> dict[str, Any]:
    """A stored training config (a checkpoint's or ``config.json``'s) with the fields it predates
    filled in as that run ran them: :data:`STORED_DEFAULTS`, and for the task's settings its class's
    ``stored_defaults`` (e.g. an earlier chess encoding). A new dict; ``values`` is not changed."""
    out = {**{k: v for k, v in STORED_DEFAULTS.items() if k not in values}, **values}
    options = values.get("task_options")
    if isinstance(options, dict):
        try:
            legacy = task_class(values.get("task", DEFAULT_TASK)).stored_defaults
        except ConfigError:  # an unknown task fails where the config is built, with its own message
            legacy = {}
        out["task_options"] = {**{k: v for k, v in legacy.items() if k not in options}, **options}
    return out
