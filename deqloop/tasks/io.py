"""Reading data files: malformed rows as :class:`DataError` naming the file, the line and the
problem (or counted in a :class:`LoadSummary` with ``on_error="skip"``), streamed line reading of
plain and ``.zst`` files, and where the project's shared puzzle data lies.
"""

from __future__ import annotations

import io
import logging
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from deqloop.errors import ConfigError, DeqloopError
from deqloop.validate import choice

__all__ = ["ON_ERROR", "DataError", "LoadSummary", "Rows", "check_file", "check_on_error", "iter_lines", "shared_data_dir"]

log = logging.getLogger("deqloop.tasks")

ON_ERROR: tuple[str, ...] = ("raise", "skip")


def check_on_error(on_error: str) -> str:
    return choice("on_error", on_error, ON_ERROR)


def check_file(path: object, name: str = "path") -> Path:
    """``Path(path)`` if ``path`` is a ``str`` or path-like naming an existing file."""
    if not isinstance(path, (str, os.PathLike)):
        raise ConfigError(f"{name} must be a file path (str or os.PathLike), got {type(path).__name__}")
    if not Path(path).is_file():
        what = "a folder, not a file" if Path(path).is_dir() else "no such file"
        raise ConfigError(f"{name} {str(path)!r}: {what}")
    return Path(path)


def _short(value: object, width: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


class DataError(DeqloopError, ValueError):
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
            from deqloop.extras import require

            zstandard = require("zstandard", f"reading the compressed file {path}")

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


def shared_data_dir() -> Path:
    """Where the project's shared puzzle data is looked for: ``$DEQLOOP_SHARED/data``, else
    ``../shared/data`` beside the checkout. The folder may not exist; callers check."""
    shared = os.environ.get("DEQLOOP_SHARED")
    return Path(shared) / "data" if shared else Path(__file__).resolve().parents[3] / "shared" / "data"
