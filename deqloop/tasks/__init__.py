"""The paper's three tasks: prefix sums, sudoku and chess puzzles.

    from deqloop.tasks import get_task, prefix_sums, sudoku, chess

    task = get_task("sudoku")                  # or get_task("chess", data=paths), ...
    x, y = task.make("train", 1000, seed=0)    # bands: "train", "val" (easy), "hard"
    ok = task.correct(logits, y, x)            # (n,) bool

Each task module also has its generators and loaders (``prefix_sums.generate``,
``sudoku.generate``/``sudoku.load``, ``chess.load_lichess``/``chess.generate_mate_in_one``).
Submodules import lazily, so ``import deqloop.tasks`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

from deqloop.tasks.base import BANDS, DataError, LoadSummary, Task

__all__ = ["BANDS", "TASKS", "DataError", "LoadSummary", "Task", "get_task"]

TASKS: dict[str, tuple[str, str]] = {
    "prefix_sums": ("deqloop.tasks.prefix_sums", "PrefixSums"),
    "sudoku": ("deqloop.tasks.sudoku", "Sudoku"),
    "chess": ("deqloop.tasks.chess", "Chess"),
}


def get_task(name: str, **config: Any) -> Task:
    """The task called ``name``, configured by ``config`` (the fields of its dataclass:
    :class:`~deqloop.tasks.prefix_sums.PrefixSums`, :class:`~deqloop.tasks.sudoku.Sudoku`,
    :class:`~deqloop.tasks.chess.Chess`)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    module, cls = TASKS[name]
    return getattr(importlib.import_module(module), cls)(**config)


def __getattr__(name: str) -> Any:
    if name in TASKS:
        return importlib.import_module(f"deqloop.tasks.{name}")
    raise AttributeError(f"module 'deqloop.tasks' has no attribute {name!r}")
