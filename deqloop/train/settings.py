"""The training config's own groups of settings, each a validated dataclass.

:class:`~deqloop.train.config.TrainConfig` nests these beside the model's own
:class:`~deqloop.model.ModelSettings` and :class:`~deqloop.model.SolveSettings`:

    ObjectiveSettings   the loss and the fixed-point training recipes
    OptimSettings       the data pool, steps, batch, optimiser and learning-rate schedule
    EvalSettings        evaluation during training, metrics logging, the stability monitor
    RunSettings         seed, run folder, checkpoints, device and runtime

Each validates its own fields at construction; what ties groups together (a task's propagation
depth, a warm start shorter than the run) is checked by ``TrainConfig``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from deqloop.device import check_device
from deqloop.errors import ConfigError
from deqloop.model.config import check_compile_segment
from deqloop.names import INITS
from deqloop.train.tracking import LOGGERS
from deqloop.validate import choice, integer, number, setting

__all__ = ["AMP_MODES", "EvalSettings", "LOSSES", "ObjectiveSettings", "OptimSettings", "RunSettings", "SCHEDULES"]

LOSSES = ("equilibrium", "progressive")
SCHEDULES = ("cosine", "linear", "constant", "paper")
AMP_MODES = ("auto", "bf16", "none")


def _flags(obj: Any, *names: str) -> None:
    for name in names:
        if not isinstance(getattr(obj, name), bool):
            raise ConfigError(f"{name} must be True or False, got {getattr(obj, name)!r}")


@dataclass
class ObjectiveSettings:
    """What a training step minimises: the loss and the fixed-point training recipes
    (:mod:`deqloop.train.objectives`)."""

    loss: str = setting("training regime: equilibrium (fixed-point gradients) or progressive (deep-thinking "
                        "loss through plain iterations)", default="equilibrium")
    alpha: float | None = setting("progressive loss: weight of the truncated term (n ~ U{0..T−1} iterations "
                                  "without gradient, then k ~ U{1..T−n} graded); 1 - alpha weighs the loss after "
                                  "all T iterations, backpropagated through them (0: plain backpropagation). Default "
                                  "1 for loss=progressive (the paper's), 0 for an equilibrium warm start",
                                  default=None)
    detach_z0: bool = setting("progressive loss: detach z0 when the draw is n = 0 (deqloop's earlier form); by "
                              "default the k graded iterations then start from z0 = e with its gradient, so the "
                              "embedding learns through z0 (the paper's)", default=False)
    depth_offset: int | None = setting("plain iterations of the progressive loss (and of the equilibrium loss's "
                                       "warm start): L + depth_offset for a batch whose task-reported propagation "
                                       "depth is L (default: max_iter always)", default=None)
    pretrain_steps: int = setting("warm start: train the first N steps with the progressive loss (plain "
                                  "iterations, alpha and depth_offset as set), then switch to the equilibrium "
                                  "loss (0: none)", default=0)
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

    def __post_init__(self) -> None:
        choice("loss", self.loss, LOSSES)
        _flags(self, "detach_z0")
        if self.alpha is None:  # the paper's alpha = 1; a warm start keeps its plain-backpropagation default
            self.alpha = 1.0 if self.loss == "progressive" else 0.0
        number("alpha", self.alpha, low=0, high=1)
        if self.depth_offset is not None:
            integer("depth_offset", self.depth_offset, minimum=0)
            if self.loss == "equilibrium" and not self.pretrain_steps:
                raise ConfigError("depth_offset sets plain iterations: it needs loss='progressive' or a warm start "
                                  "(pretrain_steps > 0); the equilibrium loss's solver budget is max_iter")
        integer("pretrain_steps", self.pretrain_steps, minimum=0)
        number("jac_reg", self.jac_reg, low=0)
        integer("jac_reg_every", self.jac_reg_every)
        integer("fp_states", self.fp_states)
        number("fp_gamma", self.fp_gamma, low=0, high=1, low_open=True)
        if self.train_init is not None:
            choice("train_init", self.train_init, INITS)
        if self.loss == "equilibrium":
            if self.alpha != 0.0 and not self.pretrain_steps:
                raise ConfigError("alpha weighs the progressive loss; it needs loss='progressive' or a warm start "
                                  "(pretrain_steps > 0)")
            if self.detach_z0 and not self.pretrain_steps:
                raise ConfigError("detach_z0 shapes the progressive loss; it needs loss='progressive' or a warm "
                                  "start (pretrain_steps > 0)")
        else:
            recipes = {"pretrain_steps": self.pretrain_steps, "jac_reg": self.jac_reg,
                       "fp_states": self.fp_states != 1, "train_init": self.train_init}
            used = sorted(k for k, v in recipes.items() if v)
            if used:
                raise ConfigError(f"{', '.join(used)} are fixed-point training recipes: they need loss='equilibrium'")


@dataclass
class OptimSettings:
    """The training data's pool, the number of steps, the batch, AdamW and the learning-rate schedule."""

    train_size: int = setting("0: a fresh batch every step from the task; N: a fixed pool of N training examples "
                              "drawn once and visited in shuffled epochs", default=0)
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

    def __post_init__(self) -> None:
        integer("batch_size", self.batch_size)
        integer("train_size", self.train_size, minimum=0)
        choice("schedule", self.schedule, SCHEDULES)
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

    def schedule_tick(self) -> int:
        """Steps per tick of the ``paper`` schedule's clock: an epoch of the fixed pool (the paper
        steps its schedulers once per epoch), or 1 without a pool."""
        return max(1, self.train_size // self.batch_size) if self.train_size else 1


@dataclass
class EvalSettings:
    """What the trainer measures and writes besides training: evaluation, metrics, the stability monitor."""

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

    def __post_init__(self) -> None:
        if isinstance(self.eval_iters, (str, bytes)) or not isinstance(self.eval_iters, Iterable):
            raise ConfigError(f"eval_iters must be a sequence of integers ≥ 1, got {self.eval_iters!r}")
        self.eval_iters = tuple(integer("eval_iters entry", t) for t in self.eval_iters)
        integer("log_every", self.log_every)
        for name in ("eval_size", "eval_every", "stability_every"):
            integer(name, getattr(self, name), minimum=0)
        if self.eval_every and not self.eval_size:
            raise ConfigError("eval_every needs eval_size > 0")
        integer("stability_size", self.stability_size)
        choice("logger", self.logger, LOGGERS)


@dataclass
class RunSettings:
    """Where and how the run executes: seed, folder, checkpoints, device, precision, compilation."""

    seed: int = setting("seed of the model, the data order and every random draw", default=0)
    out: str = setting("run folder (default runs/<task>)", default="")
    checkpoint_every: int = setting("write last.pt every N steps (and at the end)", default=500)
    keep_every: int = setting("also keep step_N.pt every N steps (0: never)", default=0)
    resume: bool = setting("continue the run in --out from its last.pt", default=False)
    overwrite: bool = setting("start afresh even if --out holds a run", default=False)
    device: str = setting("auto, cpu, cuda or cuda:N (under torchrun: the local GPU)", default="auto")
    amp: str = setting("autocast: auto (bf16 on a CUDA GPU of compute capability ≥ 8.0, float32 elsewhere), bf16 "
                       "(also CPU autocast) or none", default="auto")
    compile: bool | str = setting("compile the block with torch.compile: true, false, or auto (after timing the "
                                  "first steps, when it pays for itself over the run: deqloop/train/autocompile.py)",
                                  default="auto")
    compile_segment: int | str = setting("when compiled, run the progressive loss's graded iterations as compiled "
                                         "segments of 1, 2, 4, ..., N iterations (N a power of two; 0: one compiled "
                                         "call an iteration; auto: 16 where compile=auto compiles and a rule says the "
                                         "segments pay too, else 0: deqloop/train/autocompile.py)", default="auto")
    threads: int = setting("CPU threads for torch (0: torch's default)", default=0)
    prefetch: int = setting("training batches made ahead by as many background threads while a step trains "
                            "(0: each batch in its step); the batches are the same either way", default=2)
    progress: bool = setting("show a progress bar", default=True)
    max_consecutive_skips: int = setting("stop with an error after this many steps in a row skipped for a "
                                         "non-finite loss or gradient; last.pt keeps the last good step "
                                         "(0: no cap)", default=50)

    def __post_init__(self) -> None:
        if self.compile not in (True, False, "auto"):
            raise ConfigError(f"compile must be True, False or 'auto', got {self.compile!r}")
        if self.compile_segment != "auto":
            try:
                check_compile_segment(self.compile_segment)
            except ConfigError:
                raise ConfigError(f"compile_segment must be 'auto', 0 or a power of two (1, 2, 4, 8, 16, ...), "
                                  f"got {self.compile_segment!r}") from None
        _flags(self, "resume", "overwrite", "progress")
        if not isinstance(self.out, (str, os.PathLike)):
            raise ConfigError(f"out must be a folder path (a string), got {self.out!r}")
        self.out = os.fspath(self.out)
        integer("checkpoint_every", self.checkpoint_every)
        for name in ("keep_every", "threads", "prefetch", "seed", "max_consecutive_skips"):
            integer(name, getattr(self, name), minimum=0)
        if self.seed >= 2**64:
            raise ConfigError(f"seed must be an integer in [0, 2**64) (torch's generators take 64 bits), got {self.seed}")
        choice("amp", self.amp, AMP_MODES)
        check_device(self.device)
        if self.resume and self.overwrite:
            raise ConfigError("resume and overwrite exclude each other")
