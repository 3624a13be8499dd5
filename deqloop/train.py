"""Training a :class:`~deqloop.model.LoopedDEQ` on a task: one validated config, one loop.

    config = TrainConfig(task="prefix_sums", length=12, min_length=4, depth_offset=2,
                         width=32, heads=4, attention="local", window=3,
                         loss="progressive", steps=2000, out="runs/ps")
    result = train(config)                 # writes runs/ps/{config.json,metrics.jsonl,last.pt}

Two training regimes, so they can be compared:

* ``loss="equilibrium"``: the model solves for its fixed point (``solver``, ``max_iter``,
  ``rtol``) and gradients come from ``backward`` — ``"implicit"`` (implicit function theorem),
  ``"phantom"`` (a few damped steps from the detached fixed point) or ``"unrolled"``
  (backpropagation through naive iteration; needs ``solver="picard"``).
* ``loss="progressive"``: the deep-thinking loss. Plain iterations ``z ← f(z; e)`` from z₀; with
  weight ``1 − alpha`` the loss after all ``max_iter`` iterations (backpropagated through all of
  them) and with weight ``alpha`` the loss after ``n ~ U{0..max_iter−1}`` iterations without
  gradient followed by ``k ~ U{1..max_iter−n}`` with gradient. ``alpha=0`` is plain
  backpropagation through the iterations. Iterations here are exactly those of
  :meth:`LoopedDEQ.trajectory`, which the evaluation uses. For prefix sums, ``depth_offset``
  makes the depth follow each batch's length (``length + depth_offset``).

Everything a step does is a function of ``(seed, step)``: the batch, a prefix-sums curriculum
length, the progressive ``n`` and ``k``. With the optimizer, scheduler and RNG states saved in
each checkpoint, ``resume=True`` continues a run exactly where it stopped.

A step whose loss or gradient is not finite is skipped (no parameter update), logged and
counted; checkpoints are written atomically (:mod:`deqloop.checkpoint`) and never from
non-finite parameters. Under ``torchrun`` the same code trains with DistributedDataParallel
(gloo on CPU, nccl on CUDA); the global batch is split across ranks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deqloop.checkpoint import load_checkpoint, save_checkpoint
from deqloop.model import LoopedDEQ, LoopedDEQConfig

__all__ = [
    "LOSSES",
    "SCHEDULES",
    "Batches",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingError",
    "build_task",
    "progressive_draw",
    "read_metrics",
    "train",
]

log = logging.getLogger("deqloop.train")

UNCONVERGED_WARNING = 0.5  # warn (once a run) when fewer forward solves converge in an implicit-gradient step

LOSSES = ("equilibrium", "progressive")
SCHEDULES = ("cosine", "linear", "constant")
EQUILIBRIUM_BACKWARDS = ("implicit", "phantom", "unrolled")
AMP_MODES = ("auto", "bf16", "none")
TASK_NAMES = ("prefix_sums", "sudoku", "chess")

# Fields that describe how a run is executed rather than what it computes: they may differ
# between a run and its resumption.
RUNTIME_FIELDS = frozenset({"resume", "overwrite", "progress", "threads", "device", "out"})
# Metrics fields that depend on the machine's speed, not on the computation.
TIMING_FIELDS = frozenset({"time", "examples_per_s"})


class TrainingError(RuntimeError):
    """A run cannot start or continue (bad resume, poisoned parameters, ...)."""


def _help(text: str, **kw: Any) -> Any:
    return field(metadata={"help": text}, **kw)


@dataclass
class TrainConfig:
    """Everything that defines a training run; validated at construction.

    Every field is a ``deqloop train`` flag (``max_iter`` is ``--max-iter``). Unknown keys in
    :meth:`from_dict` and impossible combinations raise ``ValueError``/``TypeError``.
    """

    # -- task ----------------------------------------------------------------------------------
    task: str = _help("task: prefix_sums, sudoku or chess", default="prefix_sums")
    data: tuple[str, ...] = _help(
        "data files: one sudoku file (split easy/hard by rating), or Lichess puzzle CSVs for "
        "chess; without it sudoku and chess are generated", default=())
    length: int | None = _help("prefix_sums: training length in bits (default 32)", default=None)
    min_length: int | None = _help(
        "prefix_sums: draw each batch's length uniformly from [min_length, length] "
        "(a length curriculum; default: always length)", default=None)
    hard_length: int | None = _help("prefix_sums: length of the hard split (default 512)", default=None)
    depth_offset: int | None = _help(
        "prefix_sums: a batch of length L trains with L + depth_offset iterations "
        "(default: max_iter for every length)", default=None)
    train_size: int = _help(
        "0: a fresh batch every step from the task's generator; N: a fixed pool of N training "
        "examples drawn once and visited in shuffled epochs", default=0)
    augment: bool = _help("sudoku: apply random validity-preserving symmetries to each batch", default=False)
    # -- model ---------------------------------------------------------------------------------
    width: int = _help("model width", default=128)
    heads: int = _help("attention heads", default=4)
    mlp_ratio: float = _help("MLP hidden width / model width", default=4.0)
    recall: str = _help("input injection: none, external or internal", default="internal")
    norm: str = _help("norm placement: pre, peri, post or sandwich", default="post")
    attention: str = _help("attention: full or local", default="full")
    window: int = _help("local attention kernel size (odd)", default=5)
    qk_norm: bool = _help("RMSNorm queries and keys", default=True)
    init: str = _help("initial state z0: embed, zeros or noise", default="embed")
    # -- solve and loss ------------------------------------------------------------------------
    loss: str = _help("training regime: equilibrium (fixed-point gradients) or progressive "
                      "(deep-thinking loss through plain iterations)", default="equilibrium")
    backward: str | None = _help(
        "equilibrium loss: implicit, phantom or unrolled (default implicit); not used by the "
        "progressive loss", default=None)
    backward_options: dict[str, Any] = _help(
        "options of the backward mode as JSON, e.g. '{\"steps\": 3}' for phantom",
        default_factory=dict)
    alpha: float = _help("progressive loss: weight of the truncated (n free + k graded) term; "
                         "0 is plain backpropagation through max_iter iterations", default=0.0)
    solver: str = _help("forward solver (equilibrium loss, adaptive evaluation): anderson, "
                        "picard, broyden, torchdeq:<name>", default="anderson")
    solver_options: dict[str, Any] = _help("solver options as JSON, e.g. '{\"m\": 5}'", default_factory=dict)
    max_iter: int = _help("training depth: iterations per forward (solver budget for the "
                          "equilibrium loss, exact count for the progressive loss)", default=30)
    rtol: float = _help("solver relative tolerance", default=1e-4)
    atol: float = _help("solver absolute tolerance", default=0.0)
    # -- optimization --------------------------------------------------------------------------
    steps: int | None = _help("optimizer steps (default 1000, or from --epochs)", default=None)
    epochs: float | None = _help("passes over a fixed pool (needs --train-size)", default=None)
    batch_size: int = _help("global batch size (split across processes)", default=64)
    lr: float = _help("peak learning rate", default=1e-3)
    min_lr: float = _help("learning rate at the end of the decay", default=0.0)
    warmup_steps: int | None = _help("linear warmup steps (default: a tenth of the steps, at most 100)",
                                     default=None)
    schedule: str = _help("decay after warmup: cosine, linear or constant", default="cosine")
    weight_decay: float = _help("AdamW weight decay (not applied to norms and biases)", default=0.01)
    grad_clip: float = _help("clip the gradient norm to this (0: no clipping)", default=1.0)
    # -- evaluation and logging ----------------------------------------------------------------
    eval_every: int = _help("evaluate every N steps (0: only at the end)", default=0)
    eval_size: int = _help("examples per split (val and hard) in the evaluation during training and at "
                           "its end (0: no evaluation)", default=256)
    eval_iters: tuple[int, ...] = _help("iteration counts of the periodic evaluation "
                                        "(default: the training depth)", default=())
    log_every: int = _help("write a metrics line every N steps", default=10)
    # -- run -----------------------------------------------------------------------------------
    seed: int = _help("seed of the model, the data order and every random draw", default=0)
    out: str = _help("run folder (default runs/<task>)", default="")
    checkpoint_every: int = _help("write last.pt every N steps (and at the end)", default=500)
    keep_every: int = _help("also keep step_N.pt every N steps (0: never)", default=0)
    resume: bool = _help("continue the run in --out from its last.pt", default=False)
    overwrite: bool = _help("start afresh even if --out holds a run", default=False)
    device: str = _help("auto, cpu, cuda or cuda:N (under torchrun: the local GPU)", default="auto")
    amp: str = _help("autocast: auto (bf16 on CUDA), bf16 or none", default="auto")
    compile: bool = _help("compile the block with torch.compile", default=False)
    threads: int = _help("CPU threads for torch (0: torch's default)", default=0)
    progress: bool = _help("show a progress bar", default=True)

    def __post_init__(self) -> None:
        self.data = (self.data,) if isinstance(self.data, str) else tuple(str(p) for p in self.data)
        self.eval_iters = tuple(int(t) for t in self.eval_iters)
        if self.task not in TASK_NAMES:
            raise ValueError(f"unknown task {self.task!r}; allowed: {', '.join(TASK_NAMES)}")
        for name in ("width", "heads", "max_iter", "batch_size", "log_every", "checkpoint_every"):
            _positive_int(name, getattr(self, name))
        for name in ("train_size", "eval_size", "eval_every", "keep_every", "threads", "seed"):
            _nonnegative_int(name, getattr(self, name))
        if self.eval_every and not self.eval_size:
            raise ValueError("eval_every needs eval_size > 0")
        if any(t < 1 for t in self.eval_iters):
            raise ValueError(f"eval_iters must be positive, got {self.eval_iters}")
        _choice("loss", self.loss, LOSSES)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("amp", self.amp, AMP_MODES)
        self._check_task_fields()
        self._check_loss()
        self._check_steps()
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"min_lr must be in [0, lr={self.lr}], got {self.min_lr}")
        if self.warmup_steps is None:
            self.warmup_steps = min(100, self.steps // 10)
        _nonnegative_int("warmup_steps", self.warmup_steps)
        if self.warmup_steps >= self.steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be below steps ({self.steps})")
        for name in ("weight_decay", "grad_clip"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.resume and self.overwrite:
            raise ValueError("resume and overwrite exclude each other")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ValueError(f"unknown device {self.device!r}; allowed: auto, cpu, cuda, cuda:N")
        if not self.out:
            self.out = str(Path("runs") / self.task)
        self.model_config()  # architecture and solve settings are validated by the model's config

    def _check_task_fields(self) -> None:
        ps = self.task == "prefix_sums"
        for name in ("length", "min_length", "hard_length", "depth_offset"):
            value = getattr(self, name)
            if value is None:
                continue
            if not ps:
                raise ValueError(f"{name} applies to task 'prefix_sums' only, not {self.task!r}")
            (_nonnegative_int if name == "depth_offset" else _positive_int)(name, value)
        if ps and self.data:
            raise ValueError("task 'prefix_sums' is generated and takes no data files")
        if self.task == "sudoku" and len(self.data) > 1:
            raise ValueError(f"task 'sudoku' takes one data file, got {len(self.data)}")
        if self.augment and self.task != "sudoku":
            raise ValueError(f"augment applies to task 'sudoku' only, not {self.task!r}")
        if ps and self.min_length is not None and self.min_length > self.train_length:
            raise ValueError(f"min_length ({self.min_length}) exceeds length ({self.train_length})")

    def _check_loss(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.loss == "equilibrium":
            if self.backward is not None:
                _choice("backward", self.backward, EQUILIBRIUM_BACKWARDS)
            if self.alpha != 0.0:
                raise ValueError("alpha weighs the progressive loss; it needs loss='progressive'")
            if self.depth_offset is not None:
                raise ValueError("depth_offset sets the number of plain iterations; it needs loss='progressive'")
        else:
            if self.backward is not None or self.backward_options:
                raise ValueError(
                    "backward and backward_options apply to loss='equilibrium'; the progressive "
                    "loss backpropagates through plain iterations")

    def _check_steps(self) -> None:
        if self.epochs is not None:
            if not self.epochs > 0:
                raise ValueError(f"epochs must be > 0, got {self.epochs}")
            if self.train_size == 0:
                raise ValueError("epochs counts passes over a fixed pool: set train_size > 0")
            derived = max(1, math.ceil(self.epochs * self.train_size / self.batch_size))
            if self.steps is not None and self.steps != derived:
                raise ValueError(f"steps ({self.steps}) and epochs ({self.epochs} = {derived} steps) disagree; give one")
            self.steps = derived
        if self.steps is None:
            self.steps = 1000
        _positive_int("steps", self.steps)
        if self.train_size and self.train_size < self.batch_size:
            raise ValueError(f"train_size ({self.train_size}) is smaller than batch_size ({self.batch_size})")

    # -- derived -------------------------------------------------------------------------------

    @property
    def train_length(self) -> int:
        """prefix_sums: the longest training length."""
        return 32 if self.length is None else self.length

    @property
    def resolved_backward(self) -> str:
        return self.backward or "implicit"

    def depth(self, length: int | None = None) -> int:
        """Training iterations for a batch of ``length`` (prefix sums with ``depth_offset``)."""
        if self.depth_offset is not None:
            return (self.train_length if length is None else length) + self.depth_offset
        return self.max_iter

    def model_config(self, grid: tuple[int, ...] | None = None) -> LoopedDEQConfig:
        """The :class:`LoopedDEQConfig` this run trains."""
        import importlib

        module = importlib.import_module(f"deqloop.tasks.{self.task}")  # only this task's module
        if grid is None:
            grid = (self.train_length,) if self.task == "prefix_sums" else module.GRID
        return LoopedDEQConfig(
            vocab_size=module.VOCAB_SIZE,
            num_classes=module.NUM_CLASSES,
            grid=grid,
            width=self.width,
            heads=self.heads,
            mlp_ratio=self.mlp_ratio,
            recall=self.recall,
            norm=self.norm,
            attention=self.attention,
            window=self.window,
            qk_norm=self.qk_norm,
            compile=self.compile,
            init=self.init,
            solver=self.solver,
            backward=self.resolved_backward,
            max_iter=self.depth(),
            rtol=self.rtol,
            atol=self.atol,
            solver_options=dict(self.solver_options),
            backward_options=dict(self.backward_options),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serializable values (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a plain dict; unknown keys are an error that lists the allowed ones."""
        allowed = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(allowed))
        if unknown:
            raise TypeError(f"TrainConfig got unknown key(s) {unknown}; allowed: {', '.join(allowed)}")
        return cls(**values)


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; allowed: {', '.join(allowed)}")


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _nonnegative_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")


def build_task(config: TrainConfig):
    """The :class:`deqloop.tasks.Task` a config trains on."""
    from deqloop.tasks import get_task

    if config.task == "prefix_sums":
        kw: dict[str, Any] = {"train_length": config.train_length}
        if config.hard_length is not None:
            kw["hard_length"] = config.hard_length
        return get_task("prefix_sums", **kw)
    if config.task == "sudoku":
        return get_task("sudoku", data=config.data[0] if config.data else None)
    return get_task("chess", data=config.data or None)


# ----------------------------------------------------------------------------------------------
# Randomness as a function of (seed, step)


def _seed_of(*keys: int) -> int:
    """A 63-bit integer seed derived from ``keys`` (independent streams per key tuple)."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def _generator(*keys: int) -> torch.Generator:
    return torch.Generator().manual_seed(_seed_of(*keys))


_STREAM_BATCH, _STREAM_LENGTH, _STREAM_PROGRESSIVE, _STREAM_AUGMENT, _STREAM_EPOCH, _STREAM_POOL = range(6)


class Batches:
    """The training batch of each step, a pure function of ``(seed, step)``.

    Without a pool every step draws ``task.make("train", batch, seed=...)`` afresh; with a pool
    of ``train_size`` examples the steps walk through shuffled epochs (the last partial batch of
    an epoch is dropped). Each rank gets its slice of the global batch, so one process and many
    see the same global batches.
    """

    def __init__(self, config: TrainConfig, task: Any, rank: int = 0, world: int = 1):
        self.config = config
        self.task = task
        self.rank, self.world = rank, world
        self.pool: tuple[torch.Tensor, torch.Tensor] | None = None
        if config.train_size:
            self.pool = task.make("train", config.train_size, seed=_seed_of(config.seed, _STREAM_POOL) % 2**31)
        self.per_epoch = config.train_size // config.batch_size if config.train_size else 0

    def length(self, step: int) -> int | None:
        """prefix_sums: this step's length (the curriculum draw), else None."""
        c = self.config
        if c.task != "prefix_sums":
            return None
        if c.min_length is None:
            return c.train_length
        g = _generator(c.seed, _STREAM_LENGTH, step)
        return int(torch.randint(c.min_length, c.train_length + 1, (1,), generator=g))

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        B = c.batch_size
        if self.pool is None:
            seed = _seed_of(c.seed, _STREAM_BATCH, step) % 2**31
            if c.task == "prefix_sums":
                x, y = self.task.make("train", B, seed=seed, length=self.length(step))
            else:
                x, y = self.task.make("train", B, seed=seed)
        else:
            epoch, offset = divmod(step, self.per_epoch)
            order = torch.randperm(c.train_size, generator=_generator(c.seed, _STREAM_EPOCH, epoch))
            pick = order[offset * B : (offset + 1) * B]
            x, y = self.pool[0][pick], self.pool[1][pick]
        if c.augment:
            from deqloop.tasks.sudoku import augment

            x, y = augment(x, y, generator=_generator(c.seed, _STREAM_AUGMENT, step))
        share = B // self.world
        return x[self.rank * share : (self.rank + 1) * share], y[self.rank * share : (self.rank + 1) * share]


def progressive_draw(seed: int, step: int, depth: int) -> tuple[int, int]:
    """The progressive loss's ``(n, k)`` of a step: n ~ U{0..depth−1}, k ~ U{1..depth−n}."""
    g = _generator(seed, _STREAM_PROGRESSIVE, step)
    n = int(torch.randint(0, depth, (1,), generator=g))
    k = int(torch.randint(1, depth - n + 1, (1,), generator=g))
    return n, k


# ----------------------------------------------------------------------------------------------
# The objective (an nn.Module, so DistributedDataParallel can wrap it)


class Objective(nn.Module):
    """``(x, y) ↦ (loss, logits, stats)`` for one training regime; wraps the model."""

    def __init__(self, model: LoopedDEQ, config: TrainConfig):
        super().__init__()
        self.model = model
        self.loss_kind = config.loss
        self.alpha = config.alpha

    def forward(self, x: torch.Tensor, y: torch.Tensor, depth: int, draw: tuple[int, int]):
        if self.loss_kind == "equilibrium":
            out = self.model(x, max_iter=depth)
            return _cross_entropy(out.logits, y), out.logits, {"solution": out.solution}
        return self._progressive(x, y, depth, draw)

    def _progressive(self, x, y, depth: int, draw: tuple[int, int]):
        m = self.model
        n, k = draw
        e = m.embed(x)  # (B, *grid, D)
        z0 = m.initial_state(e)
        loss = x.new_zeros((), dtype=torch.float32)
        logits = None
        z_n = None
        residual = None
        if self.alpha < 1.0:
            z = z0
            for t in range(depth):
                if t == n:
                    z_n = z.detach()
                z_prev, z = z, m.step(z, e)
            logits = m.readout(z)
            loss = loss + (1.0 - self.alpha) * _cross_entropy(logits, y)
            residual = _relative_change(z, z_prev)
        if self.alpha > 0.0:
            if z_n is None:
                with torch.no_grad():
                    z_n = z0.detach()
                    for _ in range(n):
                        z_n = m.step(z_n, e)
            z = z_n
            for _ in range(k):
                z_prev, z = z, m.step(z, e)
            part = m.readout(z)
            loss = loss + self.alpha * _cross_entropy(part, y)
            if logits is None:
                logits, residual = part, _relative_change(z, z_prev)
        return loss, logits, {"residual": residual, "iterations": depth}


def _cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))


def _relative_change(z: torch.Tensor, z_prev: torch.Tensor) -> torch.Tensor:
    """(B,) ‖z − z_prev‖ / ‖z‖ per example, detached."""
    z, z_prev = z.detach().float().flatten(1), z_prev.detach().float().flatten(1)
    return (z - z_prev).norm(dim=1) / (z.norm(dim=1) + 1e-12)


# ----------------------------------------------------------------------------------------------
# The trainer


@dataclass
class TrainResult:
    """What :func:`train` returns."""

    out: Path
    step: int
    skipped: int
    checkpoint: Path
    seconds: float
    last_metrics: dict[str, Any]
    eval_metrics: dict[str, Any] | None
    rank: int = 0  # this process's rank; metrics and evaluation live on rank 0


def _schedule(config: TrainConfig):
    warm, total, floor = config.warmup_steps, config.steps, config.min_lr / config.lr

    def factor(step: int) -> float:  # the multiplier for optimizer step ``step`` (0-based)
        if step < warm:
            return (step + 1) / warm
        if config.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warm) / max(1, total - warm))
        if config.schedule == "linear":
            return floor + (1.0 - floor) * (1.0 - progress)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)  # norms and biases are 1-D
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _rng_state() -> dict[str, Any]:
    """Every RNG's state as tensors and plain values (loadable with ``weights_only=True``)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """Builds the model, optimizer and data of a :class:`TrainConfig` and runs the loop.

    ``Trainer(config).run()`` trains to ``config.steps``; ``step(i)`` runs one step (useful in
    tests). Attributes: ``model`` (the unwrapped :class:`LoopedDEQ`), ``optimizer``,
    ``scheduler``, ``task``, ``step_count`` (completed steps), ``skipped`` (non-finite steps).
    """

    def __init__(self, config: TrainConfig, *, task: Any = None):
        self.config = config
        self.out = Path(config.out)
        if config.resume and not self.last_path.is_file():
            raise TrainingError(f"nothing to resume: no checkpoint at {self.last_path}")
        if not config.resume and self.last_path.exists() and not config.overwrite:
            raise TrainingError(f"{self.out} already holds a run (last.pt); pass resume to continue it "
                                "or overwrite to start afresh")
        self.rank, self.world, self.local_rank = _distributed_env()
        self.device = self._pick_device()
        if config.batch_size % self.world:
            raise ValueError(f"batch_size ({config.batch_size}) must be divisible by the {self.world} processes")
        if config.threads:
            torch.set_num_threads(config.threads)
        if self.world > 1 and not torch.distributed.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            torch.distributed.init_process_group(backend=backend, device_id=self.device if backend == "nccl" else None)
        _seed_everything(config.seed)
        self.task = task if task is not None else build_task(config)
        self.model = LoopedDEQ(config.model_config()).to(self.device)
        self.objective: nn.Module = Objective(self.model, config)
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.objective = nn.parallel.DistributedDataParallel(self.objective, device_ids=ids)
        self.optimizer = torch.optim.AdamW(_param_groups(self.model, config.weight_decay), lr=config.lr,
                                           fused=self.device.type == "cuda")
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _schedule(config))
        self.batches = Batches(config, self.task, self.rank, self.world)
        self.step_count = 0
        self.skipped = 0
        self._warned_unconverged = False
        self.amp = config.amp == "bf16" or (config.amp == "auto" and self.device.type == "cuda")
        if self.amp and self.device.type != "cuda":
            raise ValueError("amp='bf16' needs a CUDA device; use amp='auto' or 'none' on CPU")
        self._eval_sets: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
        self.last_eval: dict[str, Any] | None = None
        self._prepare_out()

    # -- setup -----------------------------------------------------------------------------------

    def _pick_device(self) -> torch.device:
        want = self.config.device
        if want == "auto":
            want = "cuda" if torch.cuda.is_available() else "cpu"
        if want.startswith("cuda"):
            if not torch.cuda.is_available():
                raise ValueError(f"device {self.config.device!r} requested but CUDA is not available")
            index = self.local_rank if (want == "cuda" and self.world > 1) else (int(want[5:]) if ":" in want else 0)
            torch.cuda.set_device(index)
            return torch.device("cuda", index)
        return torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def last_path(self) -> Path:
        return self.out / "last.pt"

    @property
    def metrics_path(self) -> Path:
        return self.out / "metrics.jsonl"

    def _prepare_out(self) -> None:
        c = self.config
        if c.resume:
            self.load(self.last_path)
            if self.is_main:
                _truncate_metrics(self.metrics_path, self.step_count)
        else:
            if self.is_main:
                self.out.mkdir(parents=True, exist_ok=True)
                self.metrics_path.write_text("")
                for old in self.out.glob("step_*.pt"):
                    old.unlink()
        if self.is_main:
            (self.out / "config.json").write_text(json.dumps(c.to_dict(), indent=2) + "\n")
        self._barrier()

    # -- state -----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": 1,
            "model_config": dataclasses.asdict(self.model.config),
            "model": self.model.state_dict(),
            "train_config": self.config.to_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step_count,
            "skipped": self.skipped,
            "rng": _rng_state(),
            "world_size": self.world,
            "eval": self.last_eval,
        }

    def load(self, path: str | Path) -> None:
        """Restore a checkpoint of this same run (config must match up to runtime fields)."""
        state = load_checkpoint(path, map_location="cpu")  # RNG states must stay on the CPU
        saved = state.get("train_config")
        if saved is None or "optimizer" not in state:
            raise TrainingError(f"{path} holds model weights only, not a resumable run")
        ours = self.config.to_dict()
        differ = sorted(k for k in set(saved) | set(ours) if k not in RUNTIME_FIELDS and saved.get(k) != ours.get(k))
        if differ:
            detail = ", ".join(f"{k}: {saved.get(k)!r} → {ours.get(k)!r}" for k in differ)
            raise TrainingError(f"cannot resume {path}: the config differs ({detail})")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step_count = int(state["step"])
        self.skipped = int(state["skipped"])
        self.last_eval = state.get("eval")
        _set_rng_state(state["rng"])

    def save(self, path: str | Path | None = None) -> Path:
        """Write a checkpoint atomically (main process only); refuses non-finite parameters."""
        path = self.last_path if path is None else Path(path)
        bad = [n for n, p in self.model.named_parameters() if not bool(torch.isfinite(p).all())]
        if bad:
            raise TrainingError(f"refusing to checkpoint non-finite parameters ({', '.join(bad[:5])})")
        if self.is_main:
            save_checkpoint(path, self.state_dict())
        return path

    # -- the loop --------------------------------------------------------------------------------

    def step(self, step: int) -> dict[str, Any]:
        """Run training step ``step`` (0-based) and return its metrics."""
        c = self.config
        self.model.train()
        x, y = self.batches(step)
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        length = self.batches.length(step)
        depth = c.depth(length)
        draw = progressive_draw(c.seed, step, depth) if c.loss == "progressive" else (0, 0)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.zero_grad(set_to_none=True)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self.amp else contextlib.nullcontext()
        with autocast:
            loss, logits, stats = self.objective(x, y, depth, draw)
        finite = self._all_ranks(bool(torch.isfinite(loss)))
        if finite:
            loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip if c.grad_clip > 0 else math.inf)
        reason = None
        if not finite:
            reason = "non-finite loss"
        elif not bool(torch.isfinite(grad_norm)):
            reason = "non-finite gradient"
        if reason is None:
            self.optimizer.step()
        else:
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped += 1
        with warnings.catch_warnings():  # a skipped first step still advances the schedule
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
            self.scheduler.step()
        self.step_count = step + 1
        metrics: dict[str, Any] = {"step": step + 1, "lr": lr}
        if reason is not None:
            metrics.update(skipped=True, reason=reason, skipped_total=self.skipped)
            log.warning("step %d skipped: %s (%d skipped so far)", step + 1, reason, self.skipped)
            return metrics
        if (step + 1) % c.log_every == 0 or step + 1 == c.steps:
            metrics.update(self._metrics(loss, logits, y, x, stats, grad_norm, length, depth, draw))
        return metrics

    def _metrics(self, loss, logits, y, x, stats, grad_norm, length, depth, draw) -> dict[str, Any]:
        c = self.config
        acc = self.task.correct(logits.detach().float(), y, x).float().mean()
        m: dict[str, Any] = {
            "loss": self._mean(loss.detach().float()),
            "accuracy": self._mean(acc),
            "grad_norm": float(grad_norm),
            "skipped_total": self.skipped,
        }
        if length is not None:
            m["length"] = length
        if c.loss == "progressive":
            m["iterations"] = depth
            if c.alpha > 0:
                m["n"], m["k"] = draw
            m["residual"] = self._mean(stats["residual"].mean())
        else:
            sol = stats["solution"]
            m["iterations"] = self._mean(sol.iterations.float().mean())
            m["iterations_max"] = int(sol.iterations.max())
            m["residual"] = self._mean(sol.residual.mean())
            m["residual_max"] = float(sol.residual.max())
            m["converged"] = self._mean(sol.converged.float().mean())
            self._warn_unconverged(self.step_count, m["converged"])
            b = sol.backward
            if b.residual is not None:
                m["backward_residual"] = self._mean(b.residual.float().mean())
                m["backward_iterations"] = self._mean(b.iterations.float().mean())
                m["backward_converged"] = self._mean(b.converged.float().mean())
        return m

    def _warn_unconverged(self, step: int, converged: float) -> None:
        """Warn once when the implicit gradient is taken at states that are not fixed points."""
        c = self.config
        if self._warned_unconverged or c.backward != "implicit" or converged >= UNCONVERGED_WARNING:
            return
        self._warned_unconverged = True
        log.warning("step %d: only %.0f%% of the forward solves converged within max_iter=%d (rtol %g); the "
                    "implicit gradient assumes z* = f(z*) and is biased where that fails — a larger --max-iter, "
                    "or backward='phantom', may train better", step, 100 * converged, c.max_iter, c.rtol)

    def run(self) -> TrainResult:
        """Train from the current step to ``config.steps``; returns a :class:`TrainResult`."""
        from tqdm.auto import tqdm

        c = self.config
        start_time = time.perf_counter()
        bar = tqdm(total=c.steps, initial=self.step_count, disable=not (c.progress and self.is_main),
                   desc=f"train {c.task}", dynamic_ncols=True, leave=False)
        last: dict[str, Any] = {}
        window_start, window_examples = time.perf_counter(), 0
        try:
            for step in range(self.step_count, c.steps):
                metrics = self.step(step)
                window_examples += c.batch_size
                done = step + 1
                if "loss" in metrics or metrics.get("skipped"):
                    now = time.perf_counter()
                    metrics["examples_per_s"] = round(window_examples / max(now - window_start, 1e-9), 1)
                    metrics["time"] = round(now - start_time, 3)
                    window_start, window_examples = now, 0
                    self._write(metrics)
                    last = metrics
                    if "loss" in metrics:
                        bar.set_postfix(loss=f"{metrics['loss']:.4f}", acc=f"{metrics['accuracy']:.3f}", refresh=False)
                evaluate = c.eval_size > 0 and (done == c.steps or (c.eval_every and done % c.eval_every == 0))
                if evaluate:
                    self._write(self.evaluate())
                if done % c.checkpoint_every == 0 or done == c.steps:
                    self.save()
                    if c.keep_every and done % c.keep_every == 0:
                        self.save(self.out / f"step_{done}.pt")
                    self._barrier()
                bar.update(1)
        finally:
            bar.close()
        return TrainResult(out=self.out, step=self.step_count, skipped=self.skipped, checkpoint=self.last_path,
                           seconds=time.perf_counter() - start_time, last_metrics=last, eval_metrics=self.last_eval,
                           rank=self.rank)

    def evaluate(self) -> dict[str, Any]:
        """Exact-match accuracy on ``eval_size`` val and hard examples at ``eval_iters``."""
        from deqloop.evaluate import accuracy_by_iterations

        c = self.config
        if not self.is_main:  # rank 0 evaluates; the others wait at the next barrier
            return {}
        if self._eval_sets is None:
            seed = _seed_of(c.seed, 99) % 2**31
            self._eval_sets = {band: self.task.make(band, c.eval_size, seed=seed) for band in ("val", "hard")}
        iters = list(c.eval_iters or (c.depth(),))
        record: dict[str, Any] = {"step": self.step_count, "kind": "eval", "iters": iters}
        for band, (x, y) in self._eval_sets.items():
            acc = accuracy_by_iterations(self.model, x, y, self.task.correct, iters, device=self.device)
            record[f"{band}_accuracy"] = [round(a, 6) for a in acc]
        self.last_eval = record
        return record

    # -- helpers ---------------------------------------------------------------------------------

    def _write(self, record: dict[str, Any]) -> None:
        if self.is_main and record:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def _mean(self, value: torch.Tensor) -> float:
        if self.world > 1:
            value = value.detach().clone().float()
            torch.distributed.all_reduce(value)
            value /= self.world
        return float(value)

    def _all_ranks(self, flag: bool) -> bool:
        if self.world == 1:
            return flag
        t = torch.tensor([0.0 if flag else 1.0], device=self.device)
        torch.distributed.all_reduce(t)
        return float(t) == 0.0

    def _barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


def _distributed_env() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metrics lines written after checkpoint ``step`` (they will be written again)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line torn by a kill
            continue
        if int(record.get("step", 0)) <= step:
            keep.append(line)
    path.write_text("".join(k + "\n" for k in keep))


def read_metrics(path: str | Path) -> Iterator[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file."""
    with open(path) as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def train(config: TrainConfig, *, task: Any = None) -> TrainResult:
    """Train per ``config`` (see the module docstring) and return a :class:`TrainResult`."""
    trainer = Trainer(config, task=task)
    try:
        return trainer.run()
    finally:
        if trainer.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
