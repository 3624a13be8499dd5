"""What every task shares: the ``Task`` protocol, bands, data errors and line reading.

A task turns a difficulty band into tensors and scores predictions:

    task = get_task("sudoku")
    x, y = task.make("train", 1000, seed=0)    # x: (n, *task.grid) tokens in [0, vocab_size)
                                               # y: (n, *task.grid) classes in [0, num_classes)
    ok = task.correct(logits, y, x)            # (n,) bool, the paper's metric

``correct`` and ``cell_accuracy`` accept logits ``(n, *grid, C)`` (scored by argmax over the
last axis) or predicted class ids ``(n, *grid)``.

Loaders report malformed input as :class:`DataError` naming the file, the line and the
problem. With ``on_error="skip"`` bad rows are counted in a :class:`LoadSummary` instead.
"""

from __future__ import annotations

import io
import logging
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "BANDS",
    "ON_ERROR",
    "Band",
    "DataError",
    "LoadSummary",
    "Task",
    "as_predictions",
    "check_band",
    "check_on_error",
    "shared_data_dir",
]

log = logging.getLogger("deqloop.tasks")

Band = Literal["train", "val", "hard"]
BANDS: tuple[str, ...] = ("train", "val", "hard")
"""``train`` and ``val`` are disjoint draws from the easy distribution; ``hard`` is the
extrapolation test set."""

ON_ERROR: tuple[str, ...] = ("raise", "skip")


@runtime_checkable
class Task(Protocol):
    """The interface the training code relies on."""

    name: ClassVar[str]
    vocab_size: ClassVar[int]
    num_classes: ClassVar[int]
    grid: tuple[int, ...]

    def make(self, band: str, n: int, seed: int = 0) -> tuple[Tensor, Tensor]:
        """``(x, y)`` LongTensors of shape ``(n, *grid)`` for a band in :data:`BANDS`."""
        ...

    def correct(self, out: Tensor, y: Tensor, x: Tensor | None = None) -> Tensor:
        """``(n,)`` bool: the paper's per-example metric."""
        ...

    def cell_accuracy(self, out: Tensor, y: Tensor, x: Tensor | None = None) -> Tensor:
        """``(n,)`` float: the fraction of scored cells predicted right."""
        ...


def check_band(band: str) -> str:
    if band not in BANDS:
        raise ValueError(f"unknown band {band!r}; expected one of {', '.join(BANDS)}")
    return band


def check_on_error(on_error: str) -> str:
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {', '.join(map(repr, ON_ERROR))}, got {on_error!r}")
    return on_error


def check_count(n: int, what: str = "n") -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"{what} must be a non-negative int, got {n!r}")
    return n


def as_predictions(out: Tensor, y: Tensor) -> Tensor:
    """Class ids ``(n, *grid)`` from logits ``(n, *grid, C)`` or from class ids themselves."""
    if not isinstance(out, Tensor) or not isinstance(y, Tensor):
        raise TypeError("predictions and targets must be torch tensors")
    if out.dim() == y.dim() + 1 and out.shape[:-1] == y.shape:
        return out.argmax(dim=-1)
    if out.shape == y.shape:
        if out.is_floating_point():
            raise ValueError(
                f"got floating-point predictions of the target's shape {tuple(y.shape)}; pass logits "
                f"of shape {(*y.shape, 'C')} or integer class ids"
            )
        return out.long()
    raise ValueError(
        f"predictions have shape {tuple(out.shape)}; expected logits {(*y.shape, 'C')} "
        f"or class ids {tuple(y.shape)} to match the targets"
    )


def _short(value: object, width: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


class DataError(ValueError):
    """A malformed row: ``path:line: problem (value ...; expected ...)``."""

    def __init__(
        self,
        path: str | Path,
        line: int,
        problem: str,
        value: object = None,
        expected: str | None = None,
    ) -> None:
        self.path = str(path)
        self.line = line
        self.problem = problem
        self.value = value
        self.expected = expected
        detail = []
        if value is not None:
            detail.append(f"value {_short(value)}")
        if expected:
            detail.append(f"expected {expected}")
        suffix = f" ({'; '.join(detail)})" if detail else ""
        super().__init__(f"{self.path}:{line}: {problem}{suffix}")


@dataclass
class LoadSummary:
    """What a loader read: rows seen, rows kept, and bad rows skipped by problem."""

    path: str
    rows: int = 0
    loaded: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    first_errors: list[DataError] = field(default_factory=list)

    MAX_KEPT_ERRORS: ClassVar[int] = 10

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def __str__(self) -> str:
        text = f"{self.path}: {self.loaded} loaded of {self.rows} rows"
        if self.skipped:
            kinds = ", ".join(f"{count} {problem}" for problem, count in self.skipped.most_common())
            text += f"; {self.n_skipped} skipped ({kinds})"
        return text


class Rows:
    """Reports bad rows: raises :class:`DataError`, or counts it when skipping."""

    def __init__(self, path: str | Path, on_error: str) -> None:
        self.on_error = check_on_error(on_error)
        self.summary = LoadSummary(str(path))

    def bad(self, line: int, problem: str, value: object = None, expected: str | None = None) -> None:
        error = DataError(self.summary.path, line, problem, value, expected)
        if self.on_error == "raise":
            raise error
        self.summary.skipped[problem] += 1
        if len(self.summary.first_errors) < LoadSummary.MAX_KEPT_ERRORS:
            self.summary.first_errors.append(error)

    def fatal(self, line: int, problem: str, value: object = None, expected: str | None = None) -> DataError:
        """An error that ends loading whatever ``on_error`` says (a file-level problem)."""
        return DataError(self.summary.path, line, problem, value, expected)

    def finish(self) -> LoadSummary:
        if self.summary.skipped:
            log.warning("%s", self.summary)
        return self.summary


def iter_lines(path: str | Path, rows: Rows) -> Iterator[tuple[int, str]]:
    """``(line number, text without line ending)`` of a plain or ``.zst`` text file, streamed.

    Lines that are not UTF-8 go to ``rows.bad``; a corrupt zstd stream raises
    :class:`DataError` at the line where it broke.
    """
    path = Path(path)
    with path.open("rb") as raw:
        stream: io.BufferedIOBase = raw
        corrupt: tuple[type[Exception], ...] = ()
        if path.suffix == ".zst":
            import zstandard

            stream = io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw))  # type: ignore[arg-type]
            corrupt = (zstandard.ZstdError,)
        number = 0
        try:
            for number, data in enumerate(stream, start=1):
                try:
                    text = data.decode("utf-8")
                except UnicodeDecodeError as e:
                    rows.bad(number, "line is not UTF-8", data[max(0, e.start - 10) : e.end + 10])
                    continue
                yield number, text.rstrip("\r\n")
        except corrupt as e:
            raise DataError(path, number + 1, f"corrupt zstd stream: {e}") from e


def make_generator(seed: int, *stream: int) -> torch.Generator:
    """A CPU generator for ``seed`` and a stream id (bands draw from different streams)."""
    entropy = np.random.SeedSequence([seed, *stream]).generate_state(2, dtype=np.uint32)
    gen = torch.Generator()
    gen.manual_seed(int(entropy[0]) << 32 | int(entropy[1]))
    return gen


def shared_data_dir() -> Path:
    """Where the project's shared puzzle data is looked for: ``$DEQLOOP_SHARED/data``, else
    ``../shared/data`` beside the checkout. The folder may not exist; callers check."""
    shared = os.environ.get("DEQLOOP_SHARED")
    return Path(shared) / "data" if shared else Path(__file__).resolve().parents[3] / "shared" / "data"
