"""What a checkpoint of a training run holds, and how a run resumes from one.

    state = checkpoint_state(trainer)      # model, configs, optimizer, scheduler, step, RNG, ...
    restore(trainer, path, state)          # TrainingError unless it is a checkpoint of this same run

A checkpoint belongs to the run its trainer's config describes when the stored training config,
upgraded to today's form (:func:`~deqloop.train.config.upgrade_stored`) and built, has the same
settings up to :data:`~deqloop.train.config.RUNTIME_FIELDS`, and the task's data files are the ones
it trained on (:func:`~deqloop.train.run_folder.check_data_files`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from deqloop.checkpoint import FORMAT
from deqloop.errors import DeqloopError, TrainingError
from deqloop.tasks import task_spec
from deqloop.train import runtime
from deqloop.train.config import RUNTIME_FIELDS, TrainConfig, upgrade_stored
from deqloop.train.run_folder import check_data_files

if TYPE_CHECKING:
    from deqloop.train.trainer import Trainer

__all__ = ["check_same_run", "checkpoint_state", "restore"]


def checkpoint_state(t: Trainer) -> dict[str, Any]:
    """Everything a checkpoint of trainer ``t`` holds: the model with its config, the training
    config (nested, :meth:`TrainConfig.to_dict`), the task's class, optimizer, scheduler, step
    counters, the gradient norms not yet logged, RNG states, the last evaluation, the monitor's
    state and the data's fingerprints."""
    return {
        "format": FORMAT,
        "model_config": t.model.config.to_dict(),
        "model": t.model.state_dict(),
        "train_config": t.config.to_dict(),
        "task_class": task_spec(type(t.task)),
        "optimizer": t.optimizer.state_dict(),
        "scheduler": t.scheduler.state_dict(),
        "step": t.step_count,
        "skipped": t.skipped,
        "skipped_in_a_row": t.skipped_in_a_row,
        "step_norms": [float(v) for v in t.pending_grad_norms],  # the next metrics record's, so a resumed log matches
        "rng": runtime.rng_state(),
        "world_size": t.world,
        "eval": t.last_eval,
        "monitor": None if t.monitor is None else t.monitor.state_dict(),
        "data_files": t.data_files(),
    }


def check_same_run(path: str | Path, saved: dict[str, Any], config: TrainConfig) -> None:
    """Raise :class:`TrainingError` unless the stored training config ``saved`` (either form) has
    ``config``'s settings, runtime fields aside; the message names each that differs."""
    try:
        theirs = TrainConfig.from_dict(upgrade_stored(saved)).to_flat()  # fields the run predates: as it ran them
    except DeqloopError as e:
        raise TrainingError(f"cannot resume {path}: its stored training config no longer builds: {e}") from e
    ours = config.to_flat()
    differ = sorted(k for k in ours if k not in RUNTIME_FIELDS and theirs.get(k) != ours[k])
    if differ:
        detail = ", ".join(f"{k}: {theirs.get(k)!r} → {ours[k]!r}" for k in differ)
        raise TrainingError(f"cannot resume {path}: the config differs ({detail})")


def restore(t: Trainer, path: str | Path, state: dict[str, Any]) -> None:
    """Load checkpoint ``state`` (read from ``path``) into trainer ``t``: refused unless it is a
    resumable checkpoint of the same run (:func:`check_same_run`) on the same data."""
    saved = state.get("train_config")
    if saved is None or "optimizer" not in state:
        raise TrainingError(f"{path} holds model weights only, not a resumable run")
    check_same_run(path, saved, t.config)
    check_data_files(path, state, t.data_files())
    t.model.load_state_dict(state["model"])
    t.optimizer.load_state_dict(state["optimizer"])
    t.scheduler.load_state_dict(state["scheduler"])
    t.step_count = int(state["step"])
    t.skipped = int(state["skipped"])
    t.skipped_in_a_row = int(state.get("skipped_in_a_row", 0))
    t.pending_grad_norms = [torch.tensor(v, device=t.device) for v in state.get("step_norms", [])]
    t.checkpoint_step = t.step_count
    t.last_eval = state.get("eval")
    runtime.set_rng_state(state["rng"])
    if t.monitor is not None:
        t.monitor.load_state_dict(state.get("monitor"))
