"""The run's metrics: JSON lines in ``OUT/metrics.jsonl`` (always), plus an optional tracker."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["MetricsLog", "read_metrics"]

# Metrics fields that depend on the machine's speed, not on the computation.
TIMING_FIELDS = frozenset({"time", "examples_per_s"})


def read_metrics(path: str | Path) -> Iterator[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file."""
    with open(path) as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


class MetricsLog:
    """Appends one JSON line per record to ``path`` and hands each record to ``tracker``."""

    def __init__(self, path: Path, tracker: Any = None):
        self.path = path
        self.tracker = tracker

    def start(self, *, resume_step: int | None) -> None:
        """A fresh, empty log; or, resuming from the checkpoint of ``resume_step``, the log without
        the lines written after that step (they will be written again) or torn by a kill."""
        if resume_step is None or not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("")
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if int(record.get("step", 0)) <= resume_step:
                keep.append(line)
        self.path.write_text("".join(k + "\n" for k in keep))

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
