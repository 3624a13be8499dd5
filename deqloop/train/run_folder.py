"""A training run's folder: one writer at a time, what an earlier run left in it, where a resume
starts, and whether the data it trained on is still the same.

    folder = RunFolder("runs/ps", lock=True)   # checked writable, then locked (RunLocked if taken)
    folder.held()                              # ["last.pt", "2 step_N.pt snapshot(s)", "metrics.jsonl"]
    path, state = folder.resume_source()       # the newest readable of last.pt and the snapshots
    check_data_files(path, state, fingerprints) # TrainingError if a data file changed
    folder.release()
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from deqloop.checkpoint import CheckpointError, load_checkpoint
from deqloop.errors import TrainingError
from deqloop.files import RunLock, writable_folder

__all__ = ["RunFolder", "check_data_files"]

log = logging.getLogger("deqloop.train")

# Temporary files of atomic writes (and the writability probe) left by a process killed mid-write.
_TORN = (".*.pt.*.tmp", ".config.json.*.tmp", ".metrics.jsonl.*.tmp", ".write-check.*")


class RunFolder:
    """The folder ``out`` of a run; with ``lock``, checked writable and held exclusively (see
    :class:`~deqloop.files.RunLock`) until :meth:`release`."""

    def __init__(self, out: str | Path, *, lock: bool):
        self.out = Path(out)
        self._lock = RunLock(writable_folder(self.out, "out")) if lock else None

    @property
    def last_path(self) -> Path:
        return self.out / "last.pt"

    @property
    def metrics_path(self) -> Path:
        return self.out / "metrics.jsonl"

    def release(self) -> None:
        """Let go of the lock; releasing twice is harmless."""
        if self._lock is not None:
            self._lock.release()

    def snapshots(self) -> list[tuple[int, Path]]:
        """The ``step_N.pt`` snapshots, as ``(N, path)``, newest first."""
        found = [(int(m.group(1)), p) for p in self.out.glob("step_*.pt")
                 if (m := re.fullmatch(r"step_(\d+)\.pt", p.name))]
        return sorted(found, reverse=True)

    def held(self) -> list[str]:
        """What of an earlier run the folder holds: a checkpoint, snapshots, logged metrics."""
        held = ["last.pt"] if self.last_path.exists() else []
        if snapshots := self.snapshots():
            held.append(f"{len(snapshots)} step_N.pt snapshot(s)")
        log_path = self.metrics_path
        if log_path.is_dir() or (log_path.is_file() and log_path.stat().st_size > 0):
            held.append("metrics.jsonl")
        return held

    def resume_source(self) -> tuple[Path, dict[str, Any]]:
        """The newest checkpoint of the run with its state: ``last.pt``, or a ``step_N.pt`` snapshot
        newer than it (the newest readable one when ``last.pt`` is missing). An unreadable
        ``last.pt`` is an error; an unreadable snapshot is skipped with a warning."""
        newest: tuple[Path, dict[str, Any]] | None = None
        done = -1
        if self.last_path.is_file():
            newest = (self.last_path, load_checkpoint(self.last_path, map_location="cpu"))
            done = int(newest[1].get("step", 0))
        for n, path in self.snapshots():
            if n <= done:
                break
            try:
                return path, load_checkpoint(path, map_location="cpu")  # RNG states must stay on the CPU
            except CheckpointError as e:
                log.warning("not resuming from %s: %s", path, e)
        if newest is None:
            raise TrainingError(f"nothing to resume: no checkpoint in {self.out} (neither last.pt nor a readable "
                                "step_N.pt snapshot)")
        return newest

    def clean(self, *, snapshots: bool) -> None:
        """Delete the temporary files of writes a kill interrupted, and with ``snapshots`` the
        ``step_N.pt`` snapshots (a fresh start with ``overwrite``)."""
        for _, old in self.snapshots() if snapshots else ():
            old.unlink()
        for pattern in _TORN:
            for torn in self.out.glob(pattern):
                torn.unlink()


def check_data_files(path: str | Path, state: dict[str, Any], now: list[dict[str, Any]]) -> None:
    """Raise :class:`TrainingError` unless the data fingerprints ``now`` (see
    :func:`deqloop.files.fingerprint`) are those the checkpoint ``state`` of ``path`` stored (a
    checkpoint that stored none, written before they were, is not checked)."""
    if "data_files" not in state:
        return
    stored = {d["path"]: d for d in state["data_files"] or ()}
    current = {d["path"]: d for d in now}
    for name in sorted(set(stored) | set(current)):
        if stored.get(name) != current.get(name):
            before, after = stored.get(name, {}).get("size"), current.get(name, {}).get("size")
            raise TrainingError(f"cannot resume {path}: the data file {name} changed since the run started (size "
                                f"{before} → {after}, or its SHA-256 differs); train afresh, or restore the file")
