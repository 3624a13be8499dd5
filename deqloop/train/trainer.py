"""The training loop: build everything a :class:`TrainConfig` names, then step, log, evaluate, save.

Everything a step does is a function of ``(seed, step)`` (the batch, a task's curriculum, the
progressive ``n`` and ``k``); with the optimizer, scheduler and RNG states saved in each
checkpoint, ``resume=True`` continues a run exactly where it stopped. A step whose loss or
gradient is not finite is skipped (no update), logged and counted, and writes no checkpoint (but
the last step's); ``max_consecutive_skips`` skipped steps in a row stop the run with a
:class:`TrainingError`, ``last.pt`` still holding the last checkpoint of a good step. Checkpoints
are written atomically and never from non-finite parameters; the trainer holds the run folder's
lock while it lives, refuses a folder holding another run unless ``overwrite``, and resumes from the
newest readable checkpoint (:mod:`deqloop.train.run_folder`). SIGINT or SIGTERM stops the run
after the step in progress, with a checkpoint of it (:mod:`deqloop.train.interrupt`,
:class:`TrainingInterrupted`). Under ``torchrun`` the same code trains with
DistributedDataParallel (the global batch is split across ranks; rank 0 logs and evaluates;
every rank stops at the same step).
"""

from __future__ import annotations

import json
import logging
import math
import signal
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deqloop import seeds
from deqloop.checkpoint import load_checkpoint, save_checkpoint
from deqloop.device import resolve_device
from deqloop.errors import ConfigError, TrainingError, TrainingInterrupted, allocating
from deqloop.eval.curves import accuracy_by_iterations
from deqloop.files import atomic_write, fingerprint
from deqloop.model import LoopedDEQ
from deqloop.tasks import Task
from deqloop.train import runtime
from deqloop.train.autocompile import AutoCompile
from deqloop.train.config import TrainConfig
from deqloop.train.data import Batches, Prefetcher
from deqloop.train.interrupt import StopSignals
from deqloop.train.metrics import MetricsLog
from deqloop.train.monitor import StabilityMonitor, grad_norms, probe_batch
from deqloop.train.resume import checkpoint_state, restore
from deqloop.train.run_folder import RunFolder
from deqloop.train.objectives import build_objective

__all__ = ["TrainResult", "Trainer", "train"]

log = logging.getLogger("deqloop.train")


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


class Trainer:
    """Builds the task, model, objective, optimizer and data of a :class:`TrainConfig`; runs the loop.

    ``Trainer(config).run()`` trains to ``config.optim.steps``; ``step(i)`` runs one step (useful in
    tests). ``task`` replaces the config's task (same settings object kind). Attributes: ``model``
    (the unwrapped :class:`LoopedDEQ`), ``optimizer``, ``scheduler``, ``task``, ``step_count``
    (completed steps), ``skipped`` (non-finite steps), ``skipped_in_a_row`` (the current streak of
    them), ``checkpoint_step`` (the step ``last.pt`` holds for this run; ``None`` before the first).
    """

    def __init__(self, config: TrainConfig, *, task: Task | None = None):
        self.config = config
        self.out = Path(config.run.out)
        self.rank, self.world, local_rank = runtime.distributed_env()
        # One writer per run folder for the trainer's life (rank 0 holds it for all ranks), checked
        # writable before any work.
        self.folder = RunFolder(self.out, lock=self.rank == 0)
        try:
            self._setup(task, local_rank)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the run folder's lock (:meth:`run` does when it ends); closing twice is harmless."""
        self.folder.release()

    def _setup(self, task: Task | None, local_rank: int) -> None:
        c = self.config
        self._resume_from: tuple[Path, dict[str, Any]] | None = self.folder.resume_source() if c.run.resume else None
        held = self.folder.held()
        if not c.run.resume and held and not c.run.overwrite:
            raise TrainingError(f"{self.out} already holds a run ({', '.join(held)}); pass resume to continue it "
                                "or overwrite to start afresh (which deletes them)")
        self.device = resolve_device(c.run.device, local_rank=local_rank if self.world > 1 else None)
        if c.optim.batch_size % self.world:
            raise ConfigError(f"batch_size ({c.optim.batch_size}) must be divisible by the {self.world} processes")
        if c.run.threads:
            torch.set_num_threads(c.run.threads)
        runtime.init_distributed(self.device, self.world)
        runtime.seed_everything(c.run.seed)
        self.task = task if task is not None else c.build_task()
        self.model = LoopedDEQ(c.model_config()).to(self.device)
        self.objective: nn.Module = build_objective(self.model, c, loss_mask=self.task.loss_mask)
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.objective = nn.parallel.DistributedDataParallel(self.objective, device_ids=ids)
        self.optimizer = torch.optim.AdamW(runtime.param_groups(self.model, c.optim.weight_decay), lr=c.optim.lr,
                                           fused=self.device.type == "cuda")
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, runtime.lr_schedule(c.optim.schedule, c.optim.warmup_steps, c.optim.steps,
                                                c.optim.min_lr / c.optim.lr, tick=c.optim.schedule_tick()))
        self.batches = Batches(self.task, c.optim.batch_size, c.run.seed, train_size=c.optim.train_size, rank=self.rank,
                               world=self.world)
        self._prefetch: Prefetcher | None = None  # while run() runs: the coming steps' batches, made ahead
        self.step_count = 0
        self.skipped = 0
        self.skipped_in_a_row = 0
        self.checkpoint_step: int | None = None
        self._signals = StopSignals(enabled=False)  # replaced by live handlers while run() runs
        self._agreed_signal = 0  # the stop signal all ranks agreed on at the last step (torchrun)
        self.amp = runtime.amp_dtype(c.run.amp, self.device)  # the autocast dtype (None: float32)
        self.auto_compile = AutoCompile.for_run(c, self.world, self.device.type)
        self._eval_sets: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
        self.last_eval: dict[str, Any] | None = None
        self.metrics = MetricsLog(self.folder.metrics_path)
        self._data_fingerprints: list[dict[str, Any]] | None = None
        self.monitor: StabilityMonitor | None = None  # rank 0 measures stability, when asked
        self.monitor_seconds = 0.0  # time spent in the monitor by this process
        self._grad_groups: dict[str, float] | None = None
        self.pending_grad_norms: list[torch.Tensor] = []  # each applied step's gradient norm since the last log
        if c.eval.stability_every and self.is_main:
            probe = probe_batch(self.task, c.eval.stability_size, c.run.seed)
            self.monitor = StabilityMonitor(self.model, probe, seed=c.run.seed)
        self._prepare_out()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def last_path(self) -> Path:
        return self.out / "last.pt"

    def _prepare_out(self) -> None:
        c = self.config
        if self._resume_from is not None:
            self.load(*self._resume_from)
            self._resume_from = None
        self.data_files()  # fingerprints of the data as the run starts
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            self.metrics.start(resume_step=self.step_count if c.run.resume else None)
            self.folder.clean(snapshots=not c.run.resume)  # fresh: only with overwrite, a run is refused above
            atomic_write(self.out / "config.json", json.dumps(c.to_dict(), indent=2) + "\n")
            if c.eval.logger != "jsonl":
                from deqloop.train.tracking import make_tracker

                self.metrics.tracker = make_tracker(c.eval.logger, self.out, config=c.to_dict(), run_name=self.out.name,
                                                    resume=c.run.resume)
        self._barrier()

    # -- state -----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint of this run holds (:func:`~deqloop.train.resume.checkpoint_state`)."""
        return checkpoint_state(self)

    def data_files(self) -> list[dict[str, Any]]:
        """Size and SHA-256 of each file the task reads (computed once per trainer)."""
        if self._data_fingerprints is None:
            self._data_fingerprints = [fingerprint(p) for p in self.task.data_files() if Path(p).is_file()]
        return self._data_fingerprints

    def load(self, path: str | Path, state: dict[str, Any] | None = None) -> None:
        """Restore a checkpoint of this same run (:func:`~deqloop.train.resume.restore`); ``state``
        is the checkpoint if already read."""
        restore(self, path, load_checkpoint(path, map_location="cpu") if state is None else state)

    def save(self, path: str | Path | None = None) -> Path:
        """Write a checkpoint atomically (main process only); refuses non-finite parameters."""
        path = self.last_path if path is None else Path(path)
        bad = [n for n, p in self.model.named_parameters() if not bool(torch.isfinite(p).all())]
        if bad:
            raise TrainingError(f"refusing to checkpoint non-finite parameters ({', '.join(bad[:5])})")
        if self.is_main:
            save_checkpoint(path, self.state_dict())
        if path == self.last_path:
            self.checkpoint_step = self.step_count
        return path

    # -- the loop --------------------------------------------------------------------------------

    def step(self, step: int) -> dict[str, Any]:
        """Run training step ``step`` (0-based) and return its metrics."""
        c = self.config
        started = time.perf_counter()
        self.model.train()
        with allocating(f"a training step (batch_size {c.optim.batch_size}, width {c.model.width})"):
            x, y = (self._prefetch or self.batches)(step)
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            depth = c.depth(x)
            lr = self.optimizer.param_groups[0]["lr"]
            self.optimizer.zero_grad(set_to_none=True)
            with runtime.autocast(self.amp, self.device):
                loss, logits, stats = self.objective(x, y, depth, step)
        # Under torchrun one all-reduce tells every rank whether any loss is non-finite and whether any
        # rank was signalled (so all stop after the same step); in one process there is no sync.
        finite, self._agreed_signal = runtime.agree(bool(torch.isfinite(loss)), self._signals.signal or 0,
                                                    self.world, self.device)
        if finite:
            loss.backward()
        self._grad_groups = grad_norms(self.model) if finite and self._stability_due(step + 1) else None
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.optim.grad_clip or math.inf)
        reason = None if finite else "non-finite loss"
        if reason is None and not bool(torch.isfinite(grad_norm)):
            reason = "non-finite gradient"
        if reason is None:
            self.optimizer.step()
            self.skipped_in_a_row = 0
            self.pending_grad_norms.append(grad_norm.detach())
        else:
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped += 1
            self.skipped_in_a_row += 1
        with warnings.catch_warnings():  # a skipped first step still advances the schedule
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
            self.scheduler.step()
        self.step_count = step + 1
        if self.auto_compile.observe(step, c.optim.steps, time.perf_counter() - started, tuple(x.shape)):
            self.model.config = self.model.config.replace(**self.auto_compile.model_changes())  # compiles on its next call
        metrics: dict[str, Any] = {"step": step + 1, "lr": lr}
        if reason is not None:
            metrics.update(skipped=True, reason=reason, skipped_total=self.skipped)
            log.warning("step %d skipped: %s (%d skipped so far)", step + 1, reason, self.skipped)
        elif (step + 1) % c.eval.log_every == 0 or step + 1 == c.optim.steps:
            acc = self.task.correct(logits.detach().float(), y, x).float().mean()
            # every applied step's gradient norm since the last record (one host sync per record)
            norms, self.pending_grad_norms = torch.stack(self.pending_grad_norms).float().tolist(), []
            metrics.update(loss=self._mean(loss.detach().float()), accuracy=self._mean(acc),
                           grad_norm=float(grad_norm), grad_norms=[float(f"{v:.4g}") for v in norms],
                           skipped_total=self.skipped)
            if self.task.propagation_depth() is not None:
                metrics["propagation_depth"] = self.task.propagation_depth(x)
            metrics.update(self.task.curriculum(step))
            objective = self.objective.module if self.world > 1 else self.objective
            metrics.update(objective.metrics(stats, self._mean))
        return metrics

    def run(self) -> TrainResult:
        """Train from the current step to ``config.optim.steps``; returns a :class:`TrainResult`.

        Raises :class:`TrainingInterrupted` after a SIGINT or SIGTERM (handled while this runs, in
        the main thread; the previous handlers are restored after) and :class:`TrainingError` when
        ``max_consecutive_skips`` steps in a row are skipped."""
        from tqdm.auto import tqdm

        c = self.config
        start = window_start = time.perf_counter()
        bar = tqdm(total=c.optim.steps, initial=self.step_count, disable=not (c.run.progress and self.is_main),
                   desc=f"train {c.task}", dynamic_ncols=True, leave=False)
        last: dict[str, Any] = {}
        window_examples = 0
        self._signals = StopSignals()
        self._prefetch = Prefetcher(self.batches, c.run.prefetch, pin=self.device.type == "cuda")
        try:
            with self._signals:
                for step in range(self.step_count, c.optim.steps):
                    metrics = self.step(step)
                    window_examples += c.optim.batch_size
                    done = step + 1
                    skipped = bool(metrics.get("skipped"))
                    if "loss" in metrics or skipped:
                        now = time.perf_counter()
                        metrics["examples_per_s"] = round(window_examples / max(now - window_start, 1e-9), 1)
                        metrics["time"] = round(now - start, 3)
                        window_start, window_examples = now, 0
                        self._write(metrics)
                        last = metrics
                        if "loss" in metrics:
                            bar.set_postfix(loss=f"{metrics['loss']:.4f}", acc=f"{metrics['accuracy']:.3f}",
                                            **({"depth": metrics["propagation_depth"]}
                                               if "propagation_depth" in metrics else {}), refresh=False)
                    if skipped:
                        self._check_skips(metrics["reason"])
                    if self._stability_due(done) and not skipped:
                        self._write(self.stability())
                    every = c.eval.eval_every
                    if c.eval.eval_size > 0 and (done == c.optim.steps or (every and done % every == 0)):
                        self._write(self.evaluate())
                    # A skipped step writes no checkpoint (but the last step): last.pt keeps a good step.
                    saving = (done % c.run.checkpoint_every == 0 and not skipped) or done == c.optim.steps
                    keeping = bool(c.run.keep_every) and done % c.run.keep_every == 0 and not skipped
                    if saving:
                        self.save()
                    if keeping:
                        self.save(self.out / f"step_{done}.pt")
                    if saving or keeping:
                        self._barrier()
                    bar.update(1)
                    signum = self._signals.signal if self.world == 1 else self._agreed_signal
                    if signum and done < c.optim.steps:
                        self._interrupted(signum, saved=saving)
        finally:
            self._prefetch.close()
            self._prefetch = None
            self._signals, self._agreed_signal = StopSignals(enabled=False), 0
            bar.close()
            if self.is_main:
                self.metrics.close()
            self.close()
        return TrainResult(out=self.out, step=self.step_count, skipped=self.skipped, checkpoint=self.last_path,
                           seconds=time.perf_counter() - start, last_metrics=last, eval_metrics=self.last_eval,
                           rank=self.rank)

    def evaluate(self) -> dict[str, Any]:
        """Exact-match accuracy on ``eval_size`` val and hard examples at ``eval_iters``."""
        c = self.config
        if not self.is_main:  # rank 0 evaluates; the others wait at the next barrier
            return {}
        if self._eval_sets is None:
            seed = seeds.derive_seed(c.run.seed, seeds.EVAL) % 2**31
            self._eval_sets = {band: self.task.make(band, c.eval.eval_size, seed=seed) for band in ("val", "hard")}
        iters = list(c.eval.eval_iters or (c.depth(),))
        record: dict[str, Any] = {"step": self.step_count, "kind": "eval", "iters": iters}
        for band, (x, y) in self._eval_sets.items():
            acc = accuracy_by_iterations(self.model, x, y, self.task.correct, iters, device=self.device)
            record[f"{band}_accuracy"] = [round(a, 6) for a in acc]
        self.last_eval = record
        return record

    def stability(self) -> dict[str, Any]:
        """The stability monitor's record after the completed step (rank 0; ``{}`` elsewhere): see
        :class:`~deqloop.train.monitor.StabilityMonitor`. Its own generators leave training's
        random streams untouched."""
        if self.monitor is None:
            return {}
        start = time.perf_counter()
        record = self.monitor.measure(self.step_count, self._grad_groups)
        self.monitor_seconds += time.perf_counter() - start
        return record

    # -- helpers ---------------------------------------------------------------------------------

    def _check_skips(self, reason: str) -> None:
        """Stop with a :class:`TrainingError` when ``max_consecutive_skips`` steps in a row were skipped."""
        cap, streak, done = self.config.run.max_consecutive_skips, self.skipped_in_a_row, self.step_count
        if not cap or streak < cap:
            return
        kept = (f"{self.last_path} keeps the last good checkpoint (step {self.checkpoint_step})"
                if self.checkpoint_step is not None else "no checkpoint of this run was written")
        raise TrainingError(f"stopped at step {done}: {streak} steps in a row skipped (steps {done - streak + 1}-"
                            f"{done}; the last for a {reason}; max_consecutive_skips={cap}); {kept}")

    def _interrupted(self, signum: int, *, saved: bool) -> None:
        """Checkpoint the completed step (unless just done) and raise :class:`TrainingInterrupted`."""
        if not saved:
            self.save()
            self._barrier()
        name = signal.Signals(signum).name
        log.warning("%s: stopped after step %d; %s holds it", name, self.step_count, self.last_path)
        raise TrainingInterrupted(f"interrupted by {name} at step {self.step_count} of {self.config.optim.steps}; "
                                  f"{self.last_path} holds it: resume with resume=True", signal=signum,
                                  step=self.step_count, checkpoint=self.last_path)

    def _stability_due(self, done: int) -> bool:
        return self.monitor is not None and done % self.config.eval.stability_every == 0

    def _write(self, record: dict[str, Any]) -> None:
        if self.is_main:
            self.metrics.write(record)

    def _mean(self, value: torch.Tensor) -> float:
        return runtime.mean_over_ranks(value, self.world)

    def _barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


def train(config: TrainConfig, *, task: Task | None = None) -> TrainResult:
    """Train per ``config`` and return a :class:`TrainResult`."""
    trainer = Trainer(config, task=task)
    try:
        return trainer.run()
    finally:
        if trainer.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
