"""A finished or running training run, read once: its model, its training config and its task.

    run = Run.load("runs/ps/last.pt")
    run.model            # LoopedDEQ in eval mode (on ``device``)
    run.config           # TrainConfig (None for a weights-only checkpoint)
    run.task             # the task it trained on, with the settings it trained with
    run.train_depth      # iterations per forward in training

Every command that reads a checkpoint (``deqloop eval``, ``deqloop analyze``, the sweep, the demo)
uses this, so they agree on the task and its data.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from deqloop.checkpoint import CheckpointError, load_checkpoint, load_model
from deqloop.errors import ConfigError, DeqloopError
from deqloop.model import LoopedDEQ
from deqloop.tasks import Task, task_names
from deqloop.train.config import TrainConfig, upgrade_stored

__all__ = ["Run"]

@dataclass
class Run:
    """A checkpoint read once (see the module docstring)."""

    path: Path
    model: LoopedDEQ
    config: TrainConfig | None
    task: Task | None
    state: dict[str, Any]

    @classmethod
    def load(cls, path: str | Path, *, device: str | torch.device = "cpu", task: Task | None = None,
             imports: Sequence[str] = ()) -> Run:
        """Read ``path``; ``task`` replaces the stored task (e.g. the same task on other data).

        A checkpoint never makes deqloop import a module: its task must be registered (the
        built-in ones, or one registered by a module you imported), or live in a module already
        imported, or in one of ``imports`` (modules you name, imported first; ``--import`` on the
        command line). Raises :class:`~deqloop.checkpoint.CheckpointError` naming the file when
        the checkpoint is missing, foreign or its task cannot be rebuilt, and naming the module to
        import when its task lives in one not imported.
        """
        path = Path(path)
        for module in imports:
            try:
                importlib.import_module(module)
            except ImportError as e:
                raise ConfigError(f"cannot import {module!r} ({e}); is it on PYTHONPATH?") from e
        state = load_checkpoint(path)
        model = load_model(path, state=state).to(device)
        config = None
        if "train_config" in state:
            if state.get("format", 1) < 2:
                raise CheckpointError(f"{path}: a format-1 checkpoint (before tasks owned their settings): its "
                                      "training config cannot be read again; its weights can, with "
                                      "deqloop.checkpoint.load_model")
            _check_task_module(path, state["train_config"].get("task"), state.get("task_class"))  # before any import
            values = upgrade_stored(state["train_config"])  # fields it predates: as it ran them
            values["run"] = {**values.get("run", {}), "resume": False, "overwrite": False}
            try:
                config = TrainConfig.from_dict(values)
            except DeqloopError as e:
                raise CheckpointError(f"{path}: its training config no longer builds: {e}") from e
        if task is None and config is not None:
            task = config.build_task()
        elif task is not None:
            _check_task(path, task, model)
        return cls(path=path, model=model, config=config, task=task, state=state)

    @property
    def train_depth(self) -> int:
        """Iterations per forward in training (the longest, with a per-batch depth)."""
        return self.config.depth() if self.config is not None else self.model.config.solve.max_iter

    def require_task(self) -> Task:
        if self.task is None:
            raise CheckpointError(f"{self.path} holds weights only (no training config, so no task): name a task "
                                  "(--task NAME on the command line, Run.load(..., task=...) in Python)")
        return self.task


def _check_task(path: Path, task: Any, model: LoopedDEQ) -> None:
    """A task given to :meth:`Run.load` must fit the stored model: a :class:`Task` whose token ids
    and classes the model has (its vocabulary and classes may be larger) and with the model's
    number of grid axes (grid sizes may differ)."""
    if not isinstance(task, Task):
        raise ConfigError(f"task must be a deqloop.tasks.Task, got {type(task).__name__}")
    arch = model.arch
    for name, have, need in (("vocab_size", arch.vocab_size, task.vocab_size),
                             ("num_classes", arch.num_classes, task.num_classes)):
        if need > have:
            raise ConfigError(f"task {task.name or type(task).__name__!r} has {name} {need}; the model of {path} "
                              f"has {have}: it was trained on another task")
    if len(tuple(task.grid)) != len(arch.grid):
        raise ConfigError(f"task {task.name or type(task).__name__!r} has {len(tuple(task.grid))} grid axis(es); "
                          f"the model of {path} has {len(arch.grid)}: it was trained on another task")


def _check_task_module(path: Path, name: Any, spec: Any) -> None:
    """Refuse a stored task whose code the user did not load: a name not registered, or a
    ``"module:Class"`` whose module is not imported (importing it would run its code)."""
    if not isinstance(name, str) or name in task_names():
        return  # a registered task (or a malformed name, which TrainConfig names)
    module = (name if ":" in name else spec if isinstance(spec, str) else "").partition(":")[0]
    if module and module in sys.modules:  # already imported: nothing runs; TrainConfig names what is missing
        return
    where = f" (defined in module {module!r})" if module else ""
    hint = f"--import {module} / Run.load(..., imports=[{module!r}])" if module else "--import MODULE"
    raise CheckpointError(f"{path}: its task {name!r}{where} is not registered, and a checkpoint never makes "
                          f"deqloop import code: if you trust that module, import it first ({hint})")
