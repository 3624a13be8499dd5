"""Reading data files: malformed rows as :class:`DataError` naming the file, the line and the
problem (or counted in a :class:`LoadSummary` with ``on_error="skip"``), streamed line reading of
plain and ``.zst`` files, and where the project's shared puzzle data lies.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from deqloop.errors import ConfigError, DeqloopError
from deqloop.tasks.zstd_frames import check_complete
from deqloop.validate import choice

__all__ = ["MAX_LINE_BYTES", "ON_ERROR", "DataError", "LoadSummary", "Rows", "check_file", "check_on_error", "iter_lines",
           "shared_data_dir"]

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
    """A malformed row: ``path:line: problem (value ...; expected ...)`` (``path: problem`` for a
    problem of the whole file)."""

    def __init__(
        self,
        path: str | Path,
        line: int | None,
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
        where = self.path if line is None else f"{self.path}:{line}"  # None: the file as a whole
        super().__init__(f"{where}: {problem}{suffix}")


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

    def fatal(self, line: int | None, problem: str, value: object = None, expected: str | None = None) -> DataError:
        """An error that ends loading whatever ``on_error`` says (a file-level problem)."""
        return DataError(self.summary.path, line, problem, value, expected)

    def finish(self) -> LoadSummary:
        if self.summary.skipped:
            log.warning("%s", self.summary)
        return self.summary


MAX_LINE_BYTES = 1 << 20  # a puzzle row is under 1 kB; a longer line means a file of another kind
_BOM = b"\xef\xbb\xbf"
_NEWLINE = re.compile(rb"\r\n|\r|\n")
_CHUNK = 1 << 16


def _chunks(path: Path) -> Iterator[bytes]:
    """The bytes of a plain or ``.zst`` file in chunks of at most 64 KiB (decompressed, across frames)."""
    with path.open("rb") as raw:
        stream: Any = raw
        if path.suffix == ".zst":
            from deqloop.extras import require

            zstandard = require("zstandard", f"reading the compressed file {path}")

            problem = check_complete(path)
            if problem:
                raise DataError(path, None, f"truncated or damaged zstd file: {problem}")
            stream = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        while chunk := stream.read(_CHUNK):
            yield chunk


def iter_lines(path: str | Path, rows: Rows, *, max_line: int = MAX_LINE_BYTES) -> Iterator[tuple[int, str]]:
    """``(line number, text without line ending)`` of a plain or ``.zst`` text file, streamed.

    Lines end at ``\\n``, ``\\r\\n`` or a lone ``\\r``; a UTF-8 byte order mark at the start is
    dropped. Lines that are not UTF-8 go to ``rows.bad``. A line longer than ``max_line`` bytes,
    a ``.zst`` file cut short (checked before reading: it would otherwise read as a shorter file)
    and a corrupt zstd stream raise :class:`DataError` naming the file.
    """
    path = Path(path)
    number, buffer = 0, b""
    corrupt: tuple[type[Exception], ...] = ()
    if path.suffix == ".zst":
        from deqloop.extras import require

        zstandard = require("zstandard", f"reading the compressed file {path}")

        corrupt = (zstandard.ZstdError,)

    def too_long(at: int) -> DataError:
        return DataError(path, at, f"line longer than {max_line} bytes (not a file of puzzle rows?)")

    def line(data: bytes) -> tuple[int, str] | None:
        if number == 1 and data.startswith(_BOM):
            data = data[len(_BOM):]
        try:
            return number, data.decode("utf-8")
        except UnicodeDecodeError as e:
            rows.bad(number, "line is not UTF-8", data[max(0, e.start - 10) : e.end + 10])
            return None

    try:
        for chunk in _chunks(path):
            buffer += chunk
            start = 0
            while (match := _NEWLINE.search(buffer, start)) is not None:
                if match.group() == b"\r" and match.end() == len(buffer):
                    break  # a \r\n may be split across chunks
                number += 1
                if match.start() - start > max_line:
                    raise too_long(number)
                if (item := line(buffer[start : match.start()])) is not None:
                    yield item
                start = match.end()
            buffer = buffer[start:]
            if len(buffer) > max_line:
                raise too_long(number + 1)
    except corrupt as e:
        raise DataError(path, number + 1, f"corrupt zstd stream: {e}") from e
    if buffer.endswith(b"\r"):
        buffer = buffer[:-1]
    if buffer:
        number += 1
        if (item := line(buffer)) is not None:
            yield item


def shared_data_dir() -> Path:
    """Where the project's shared puzzle data is looked for: ``$DEQLOOP_SHARED/data``, else
    ``../shared/data`` beside the checkout. The folder may not exist; callers check."""
    shared = os.environ.get("DEQLOOP_SHARED")
    return Path(shared) / "data" if shared else Path(__file__).resolve().parents[3] / "shared" / "data"
