"""The run's metrics: JSON lines in ``OUT/metrics.jsonl`` (always), plus an optional tracker."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from deqloop.errors import DeqloopError
from deqloop.files import atomic_write

__all__ = ["MetricsError", "MetricsLog", "read_metrics"]

# Metrics fields that depend on the machine's speed, not on the computation.
TIMING_FIELDS = frozenset({"time", "examples_per_s"})


class MetricsError(DeqloopError, ValueError):
    """A ``metrics.jsonl`` that is not one: a folder, bytes that are not UTF-8, or a line that is
    not a JSON object with a non-negative integer ``"step"``. The message names the file and line."""


def _lines(path: Path) -> list[str]:
    if path.is_dir():
        raise MetricsError(f"{path} is a folder, not a metrics file")
    try:
        return path.read_bytes().decode("utf-8").split("\n")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise MetricsError(f"{path}:{line}: not UTF-8 text (not a metrics file deqloop wrote)") from None


def _records(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(line, record)`` for each line of ``path``; a last line cut short by a kill is left out,
    any other bad line is a :class:`MetricsError`."""
    lines = _lines(path)
    last = max((i for i, text in enumerate(lines) if text.strip()), default=-1)
    for i, text in enumerate(lines):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError:
            if i == last:  # torn by a kill during the append
                continue
            raise MetricsError(f"{path}:{i + 1}: not JSON: {text[:60]!r}") from None
        step = record.get("step") if isinstance(record, dict) else None
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise MetricsError(f"{path}:{i + 1}: not a metrics record (expected a JSON object with a non-negative "
                               f"integer \"step\"): {text[:60]!r}")
        yield text, record


def read_metrics(path: str | Path) -> Iterator[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file (a last line torn by a kill is skipped; any other
    malformed line is a :class:`MetricsError` naming the file and line)."""
    for _, record in _records(Path(path)):
        yield record


class MetricsLog:
    """Appends one JSON line per record to ``path`` and hands each record to ``tracker``."""

    def __init__(self, path: Path, tracker: Any = None):
        self.path = path
        self.tracker = tracker

    def start(self, *, resume_step: int | None) -> None:
        """A fresh, empty log; or, resuming from the checkpoint of ``resume_step``, the log without
        the lines written after that step (they will be written again) or torn by a kill. The file
        is replaced atomically: a kill at any moment leaves the old log or the new one."""
        if resume_step is None or not self.path.exists():
            atomic_write(self.path, "")
            return
        keep = [text for text, record in _records(self.path) if record["step"] <= resume_step]
        atomic_write(self.path, "".join(k + "\n" for k in keep))

    def check(self) -> None:
        """Raise :class:`MetricsError` if the log exists and is not a readable metrics file."""
        if self.path.exists():
            for _ in _records(self.path):
                pass

    def write(self, record: dict[str, Any]) -> None:
        if not record:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tracker is not None:
            self.tracker.log(record, int(record.get("step", 0)))

    def close(self) -> None:
        if self.tracker is not None:
            self.tracker.close()
