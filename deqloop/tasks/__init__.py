"""Tasks: what to learn, from easy to hard. Built in: prefix sums, sudoku, chess puzzles.

    from deqloop.tasks import get_task, register_task, Task

    task = get_task("sudoku")                  # or get_task("chess", data=paths), ...
    x, y = task.make("train", 1000, seed=0)    # splits: "train", "val" (easy), "hard"
    ok = task.correct(logits, y, x)            # (n,) bool

A task is one file: a dataclass of its settings subclassing :class:`Task` (see
:mod:`deqloop.tasks.base`); :func:`register_task` adds a user's own. Each built-in module also
has its generators and loaders (``prefix_sums.generate``, ``sudoku.generate``/``sudoku.load``,
``chess.load_lichess``/``chess.generate_mate_in_one``). Submodules import lazily, so
``import deqloop.tasks`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

from deqloop.tasks.base import BANDS, DEFAULT_TASK, Task, get_task, register_task, task_class, task_names, task_spec
from deqloop.tasks.io import DataError, LoadSummary

__all__ = ["BANDS", "DEFAULT_TASK", "DataError", "LoadSummary", "Task", "get_task", "register_task", "task_class", "task_names",
           "task_spec"]

_MODULES = ("prefix_sums", "sudoku", "chess")


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        return importlib.import_module(f"deqloop.tasks.{name}")
    raise AttributeError(f"module 'deqloop.tasks' has no attribute {name!r}")
