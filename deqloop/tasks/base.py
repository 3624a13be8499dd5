"""What a task is: its settings, its batches and its metrics; and the registry of tasks.

A task is a (frozen) dataclass of its own settings that subclasses :class:`Task`. The trainer,
the evaluator, the analyzer, the command line and the sweep only ever talk to this interface:

    task = get_task("sudoku", augment=True)    # settings are the dataclass's fields
    x, y = task.make("train", 1000, seed=0)    # splits: "train", "val" (easy), "hard"
    ok = task.correct(logits, y, x)            # (n,) bool, the paper's metric
    rows = task.show(x[:4], y[:4], logits[:4]) # a few examples, readable: [{"input": ..., ...}]

``correct`` and ``cell_accuracy`` accept logits ``(n, *grid, C)`` (scored by argmax over the
last axis) or predicted class ids ``(n, *grid)``.

A user's task is a subclass, registered under a name::

    @dataclass(frozen=True)
    class CopyShifted(Task):
        length: int = 8
        vocab_size: ClassVar[int] = 5
        num_classes: ClassVar[int] = 5
        @property
        def grid(self): return (self.length,)
        def make(self, split, n, seed=0): ...

    register_task("copy_shifted", CopyShifted)     # or: deqloop train --task mymodule:CopyShifted
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from deqloop import seeds
from deqloop.extras import MissingExtraError
from deqloop.errors import ConfigError
from deqloop.validate import choice, integer, known_keys

__all__ = ["BANDS", "DEFAULT_TASK", "Band", "Task", "as_predictions", "check_band", "check_count", "check_seed", "get_task", "register_task",
           "task_class", "task_names", "task_spec", "token_view"]

Band = Literal["train", "val", "hard"]
BANDS: tuple[str, ...] = ("train", "val", "hard")
"""``train`` and ``val`` are disjoint draws from the easy distribution; ``hard`` is the
extrapolation test set."""


def check_band(band: str) -> str:
    return choice("split", band, BANDS)


def check_count(n: int, what: str = "n") -> int:
    return integer(what, n, minimum=0)


def check_seed(seed: int, what: str = "seed") -> int:
    """A seed: an integer ≥ 0 (any size; seeds are hashed by :mod:`deqloop.seeds`)."""
    return integer(what, seed, minimum=0)


def as_predictions(out: Tensor, y: Tensor) -> Tensor:
    """Class ids ``(n, *grid)`` from logits ``(n, *grid, C)`` or from class ids themselves."""
    if not isinstance(out, Tensor) or not isinstance(y, Tensor):
        raise TypeError("predictions and targets must be torch tensors")
    if out.dim() == y.dim() + 1 and out.shape[:-1] == y.shape:
        return out.argmax(dim=-1)
    if out.shape == y.shape:
        if out.is_floating_point():
            raise ConfigError(
                f"got floating-point predictions of the target's shape {tuple(y.shape)}; pass logits "
                f"of shape {(*y.shape, 'C')} or integer class ids"
            )
        return out.long()
    raise ConfigError(
        f"predictions have shape {tuple(out.shape)}; expected logits {(*y.shape, 'C')} "
        f"or class ids {tuple(y.shape)} to match the targets"
    )


def token_view(cells: Tensor) -> str:
    """One example's cells as compact text: a character a cell where every id is a digit 0–9, else
    ids separated by spaces; the rows of a 2-D grid joined by ``/`` (``[[1, 0], [0, 2]]`` → ``"10/02"``)."""
    ids = cells.long().reshape(-1, cells.shape[-1]).tolist() if cells.dim() > 0 else [[int(cells)]]
    joint = "" if all(0 <= v <= 9 for row in ids for v in row) else " "
    return "/".join(joint.join(str(v) for v in row) for row in ids)


class Task:
    """Base of every task: subclass it as a frozen dataclass of the task's settings.

    Required: ``name``, ``vocab_size``, ``num_classes`` (class attributes), ``grid`` (attribute
    or property: the training grid, ``(L,)`` or ``(H, W)``), :meth:`make` and :meth:`correct`.
    The other methods have defaults a task overrides when it has something to say.
    """

    name: ClassVar[str] = ""
    vocab_size: ClassVar[int]
    num_classes: ClassVar[int]
    grid: tuple[int, ...]
    stored_defaults: ClassVar[dict[str, Any]] = {}
    """Settings added after runs were stored, with the value those runs used: a checkpoint whose
    settings lack one is read with it (``deqloop.train.config.upgrade_stored``), so an old run is
    evaluated and resumed as it trained while new runs get the setting's default."""

    def make(self, split: str, n: int, seed: int = 0) -> tuple[Tensor, Tensor]:
        """``(x, y)`` LongTensors of shape ``(n, *grid)`` for a split in :data:`BANDS`.

        A task checks its arguments with :func:`check_band`, :func:`check_count` and
        :func:`check_seed` (each a :class:`~deqloop.errors.ConfigError` naming the argument)."""
        raise NotImplementedError

    def correct(self, out: Tensor, y: Tensor, x: Tensor | None = None) -> Tensor:
        """``(n,)`` bool: the per-example metric (default: every cell right)."""
        return (as_predictions(out, y) == y).flatten(1).all(dim=1)

    def cell_accuracy(self, out: Tensor, y: Tensor, x: Tensor | None = None) -> Tensor:
        """``(n,)`` float: the fraction of cells predicted right."""
        return (as_predictions(out, y) == y).flatten(1).float().mean(dim=1)

    def train_examples(self, seed: int, step: int, start: int, stop: int) -> tuple[Tensor, Tensor]:
        """Examples ``start, ..., stop - 1`` of the training batch of ``step`` of a run seeded ``seed``.

        Example ``i`` must be a pure function of ``(seed, step, i)``, whatever the range it is asked
        in: the trainer asks one process for ``[0, B)`` and each of ``W`` DDP ranks for its own
        ``[r·B/W, (r+1)·B/W)``, and both must see the same global batch. Default: example ``i`` is
        ``make("train", 1)`` seeded by ``seeds.example_seeds`` of ``(seed, BATCH, step)`` at ``i``
        (modulo ``2**31``, as the trainer seeds ``make`` elsewhere).
        A task with a curriculum (lengths, blanks, ... that depend on the step), or one that makes
        examples faster together, overrides this.
        """
        parts = [self.make("train", 1, seed=s % 2**31) for s in seeds.example_seeds(start, stop, seed, seeds.BATCH, step)]
        if not parts:
            empty = torch.zeros((0, *self.grid), dtype=torch.long)
            return empty, empty.clone()
        return torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])

    def train_batch(self, n: int, seed: int, step: int) -> tuple[Tensor, Tensor]:
        """The whole training batch of ``step``: ``train_examples(seed, step, 0, n)`` (override
        :meth:`train_examples`, not this)."""
        return self.train_examples(seed, step, 0, check_count(n))

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "train_batch" in cls.__dict__:
            raise TypeError(f"{cls.__qualname__} overrides train_batch; override train_examples(seed, step, start, "
                            "stop) instead (example i a function of (seed, step, i), so DDP ranks build their shards)")

    def curriculum(self, step: int) -> dict[str, Any]:
        """What the training curriculum draws from at ``step``, for the metrics log (e.g.
        ``{"train_lengths": [4, 8]}``); ``{}`` for a task without one."""
        return {}

    def augment_batch(self, x: Tensor, y: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """A training batch with the task's random symmetries applied (default: unchanged). The
        trainer augments one example at a time, each with a generator of ``(seed, AUGMENT, step,
        i)``, so an example is augmented alike whichever rank makes it."""
        return x, y

    def loss_mask(self, x: Tensor, y: Tensor) -> Tensor | None:
        """``(n, *grid)`` bool: the cells the training loss grades (default ``None``: every cell).
        The cross-entropy is then the mean over the graded cells of the batch."""
        return None

    def propagation_depth(self, x: Tensor | None = None) -> int | None:
        """Iterations information needs to cross the examples ``x`` (``None``: the largest
        training examples), if the task knows; training with ``depth_offset`` then runs
        ``propagation_depth(x) + depth_offset`` iterations on each batch."""
        return None

    def baselines(self, x: Tensor, y: Tensor) -> dict[str, float]:
        """Accuracies of model-free reference solutions on the examples ``(x, y)``, scored by this
        task's metrics, as ``{"<baseline>/<metric>": accuracy}``; the evaluation reports them beside
        the model's. Default: none (``{}``)."""
        return {}

    def show(self, x: Tensor, y: Tensor, out: Tensor) -> list[dict[str, str]]:
        """A few examples with the model's answer, for people: one row per example, field → text.

        ``x``, ``y`` are ``(k, *grid)`` and ``out`` the model's logits ``(k, *grid, C)`` (or class
        ids ``(k, *grid)``) on them; the evaluation report shows the rows of a few hard examples.
        Default: the tokens of the input, the target and the prediction (one character a cell where
        every id is a single digit, else separated by spaces; the rows of a 2-D grid joined by
        ``/``) and whether :meth:`correct` counts it right (``"yes"``/``"no"``). A task overrides it
        to show its examples in its own terms (chess: the position and the moves).
        """
        predicted, right = as_predictions(out, y), self.correct(out, y, x)
        return [{"input": token_view(x[i]), "target": token_view(y[i]), "predicted": token_view(predicted[i]),
                 "correct": "yes" if bool(right[i]) else "no"} for i in range(len(x))]

    def extra_split(self, spec: str, n: int, seed: int) -> tuple[str, tuple[Tensor, Tensor]]:
        """``(name, (x, y))``: a further test set described by ``spec`` (``deqloop eval --extra``:
        e.g. a data file, or a length), ``n`` examples at most."""
        raise ConfigError(f"task {self.name!r} takes no extra test sets (got {spec!r})")

    def data_files(self) -> list[str]:
        """The files the task reads its examples from; a run stores their sizes and hashes and
        refuses to resume when one changed. Default: the files its ``data`` setting names (a
        path or a list of paths), if it has one."""
        value = getattr(self, "data", None)
        if isinstance(value, (str, os.PathLike)):
            value = [value]
        if not isinstance(value, (list, tuple)):
            return []
        return [os.fspath(p) for p in value if isinstance(p, (str, os.PathLike))]

    def settings(self) -> dict[str, Any]:
        """The task's settings as plain values (what a checkpoint stores to rebuild it)."""
        if not dataclasses.is_dataclass(self):
            return {}
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "__fspath__"):
        return str(value)
    return value


# ----------------------------------------------------------------------------------------------
# The registry

_BUILTIN: dict[str, str] = {
    "prefix_sums": "deqloop.tasks.prefix_sums:PrefixSums",
    "sudoku": "deqloop.tasks.sudoku:Sudoku",
    "chess": "deqloop.tasks.chess:Chess",
}
_REGISTRY: dict[str, type[Task] | str] = dict(_BUILTIN)  # built-ins stay import paths until used
DEFAULT_TASK = "prefix_sums"  # what a training config trains on when it names no task


def register_task(name: str, cls: type[Task], *, overwrite: bool = False) -> type[Task]:
    """Make ``cls`` (a :class:`Task` subclass) available as ``name`` to ``get_task``, the trainer,
    the command line and the sweep. Returns ``cls`` (usable as a decorator's body)."""
    if not isinstance(name, str) or not name or ":" in name:
        raise ConfigError(f"a task name must be a non-empty string without ':', got {name!r}")
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise ConfigError(f"register_task needs a Task subclass, got {cls!r}")
    if name in _REGISTRY and not overwrite and _REGISTRY[name] is not cls:
        raise ConfigError(f"task {name!r} is already registered (pass overwrite=True to replace it)")
    _REGISTRY[name] = cls
    return cls


def task_names() -> tuple[str, ...]:
    """The registered task names."""
    return tuple(_REGISTRY)


def _import(path: str) -> type[Task]:
    module, _, qualname = path.partition(":")
    if not module or not qualname:
        raise ConfigError(f"a task path must look like 'package.module:ClassName', got {path!r}")
    try:
        obj: Any = importlib.import_module(module)
    except MissingExtraError:
        raise  # it names the extra to install
    except ImportError as e:
        raise ConfigError(f"cannot import task module {module!r} ({e}); is it on PYTHONPATH?") from e
    for part in qualname.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"module {module!r} has no {qualname!r}")
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, Task)):
        raise ConfigError(f"{path!r} is not a Task subclass")
    return obj


def task_class(name: str) -> type[Task]:
    """The class of a registered task, or of ``"package.module:ClassName"``."""
    if not isinstance(name, str):
        raise ConfigError(f"a task is named by a string, got {name!r}")
    if name in _REGISTRY:
        entry = _REGISTRY[name]
        if isinstance(entry, str):
            entry = _REGISTRY[name] = _import(entry)
        return entry
    if ":" in name:
        return _import(name)
    raise ConfigError(f"unknown task {name!r}; allowed: {', '.join(map(repr, _REGISTRY))} or 'package.module:ClassName'")


def task_spec(cls: type[Task]) -> str:
    """``"package.module:ClassName"``: where ``cls`` can be imported from again."""
    return f"{cls.__module__}:{cls.__qualname__}"


def get_task(name: str, **settings: Any) -> Task:
    """The task ``name`` (registered, or ``"package.module:ClassName"``) with ``settings`` (the
    fields of its dataclass; unknown ones are an error that lists the allowed ones)."""
    cls = task_class(name)
    if dataclasses.is_dataclass(cls):
        known_keys(settings, [f.name for f in dataclasses.fields(cls)], f"task {name!r}")
    return cls(**settings)
