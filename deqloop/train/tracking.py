"""Experiment trackers beside ``metrics.jsonl``: TensorBoard and offline Weights & Biases.

The trainer always writes ``OUT/metrics.jsonl``; a :class:`Tracker` is an additional sink that
receives the same records::

    with make_tracker("tensorboard", "runs/ps", config=config.to_dict()) as tracker:
        tracker.log({"step": 10, "loss": 0.69, "accuracy": 0.1}, step=10)

Both sinks log what :func:`flatten` makes of a record: training records as ``train/<key>``,
evaluation records (``"kind": "eval"``) as ``eval/<key>@<iters>``, one scalar per iteration count
(``eval/hard_accuracy@50``). The packages are optional extras (``deqloop[tensorboard]``,
``deqloop[wandb]``) and imported only when their tracker is made.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import numbers
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deqloop.errors import ConfigError, DeqloopError

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["LOGGERS", "TensorBoardTracker", "TrackerUnavailable", "Tracker", "WandbTracker", "flatten", "make_tracker", "run_id"]

LOGGERS = ("jsonl", "tensorboard", "wandb")


class TrackerUnavailable(DeqloopError, ImportError):
    """The package a ``--logger`` needs is not installed."""
_MISSING = "--logger {kind} needs the {kind} package: pip install 'deqloop[{kind}]'"
_NOT_SCALARS = ("step", "kind", "iters")


def flatten(record: dict[str, Any]) -> dict[str, float]:
    """The numeric scalars of a metrics record, named ``<kind>/<key>`` (kind ``train`` by default).

    Lists are paired with the record's ``iters`` (``eval/val_accuracy@14``); lists of another
    length, strings (``reason``) and ``None`` are left out; ``step``, ``kind`` and ``iters`` are
    not scalars. Booleans become 0.0/1.0, so ``train/skipped`` is 1 at each skipped step.
    """
    prefix = str(record.get("kind", "train"))
    iters = record.get("iters") or []
    out: dict[str, float] = {}
    for key, value in record.items():
        if key in _NOT_SCALARS:
            continue
        if isinstance(value, (list, tuple)):
            if len(value) == len(iters):
                out.update({f"{prefix}/{key}@{it}": float(v) for it, v in zip(iters, value) if _is_number(v)})
        elif _is_number(value):
            out[f"{prefix}/{key}"] = float(value)
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real)  # int, float, bool, numpy scalars


def run_id(out: str | Path) -> str:
    """A W&B run id that depends only on the resolved output directory (so a resumed run appends)."""
    return hashlib.sha1(str(Path(out).resolve()).encode()).hexdigest()[:16]


class Tracker:
    """A sink for metrics records besides ``metrics.jsonl``; this base class does nothing.

    Log on rank 0 only, and close in a ``finally`` (or use the tracker as a context manager) so
    buffered events reach the disk when training fails.
    """

    def log(self, record: dict[str, Any], step: int) -> None:
        """Log one metrics record (a line of ``metrics.jsonl``) at training step ``step``."""

    def close(self) -> None:
        """Flush and release the sink; closing twice is harmless."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TensorBoardTracker(Tracker):
    """Scalars in ``OUT/tensorboard`` plus the config as text (tag ``config``).

    The writer is opened at the first :meth:`log` with ``purge_step`` set, so TensorBoard hides
    events of an earlier run in the same directory from that step on: all of them for a fresh run
    (step 0, as ``metrics.jsonl`` is rewritten), those after the checkpoint for a resumed one.
    """

    def __init__(self, out: str | Path, config: dict[str, Any], resume: bool = False) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise TrackerUnavailable(_MISSING.format(kind="tensorboard")) from e
        self._writer_class, self.log_dir = SummaryWriter, Path(out) / "tensorboard"
        self._config, self._resume = config, resume
        self._writer: Any = None

    def log(self, record: dict[str, Any], step: int) -> None:
        if self._writer is None:
            first = step if self._resume else 0
            self._writer = self._writer_class(log_dir=str(self.log_dir), purge_step=first)
            text = json.dumps(self._config, indent=2, sort_keys=True, default=str)
            self._writer.add_text("config", "\n".join("    " + line for line in text.splitlines()), first)
        for name, value in flatten(record).items():
            self._writer.add_scalar(name, value, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()  # flushes
            self._writer = None


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    """Set environment variables for the duration of the block, then restore them."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class WandbTracker(Tracker):
    """An offline W&B run in ``OUT/wandb`` (upload later with ``wandb sync OUT/wandb/offline-run-*``)."""

    def __init__(self, out: str | Path, config: dict[str, Any], run_name: str | None = None,
                 resume: bool = False) -> None:
        # Quiet and without crash reports (they would use the network), for the import and init only:
        # wandb reads these when it is imported (<= 0.18) or starts its service process (>= 0.19).
        env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_ERROR_REPORTING": "false"}
        with _environment(**env):
            try:
                import wandb
            except ImportError as e:
                raise TrackerUnavailable(_MISSING.format(kind="wandb")) from e
            Path(out).mkdir(parents=True, exist_ok=True)  # older wandb falls back to a temp dir otherwise
            fields = getattr(wandb.Settings, "model_fields", {})  # pydantic settings (wandb >= 0.19)
            extra = {k: True for k in ("x_disable_stats", "x_disable_meta", "x_disable_machine_info") if k in fields}
            settings = wandb.Settings(silent=True, console="off", disable_git=True, save_code=False, **extra)
            self.run: Any = wandb.init(mode="offline", dir=str(out), project="deqloop", name=run_name, config=config,
                                  resume="allow" if resume else None, id=run_id(out), settings=settings)

    def log(self, record: dict[str, Any], step: int) -> None:
        if self.run is not None:
            self.run.log(flatten(record), step=step)

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


def make_tracker(kind: str, out: str | Path, *, config: dict[str, Any], run_name: str | None = None,
                 resume: bool = False) -> Tracker:
    """The tracker for ``--logger kind`` writing under ``out``; ``"jsonl"`` gives a no-op :class:`Tracker`.

    Raises :class:`ConfigError` for an unknown kind and :class:`TrackerUnavailable` (an
    ``ImportError``) naming the extra to install when the tracker's package is missing.
    """
    if kind == "jsonl":
        return Tracker()
    if kind == "tensorboard":
        return TensorBoardTracker(out, config, resume=resume)
    if kind == "wandb":
        return WandbTracker(out, config, run_name=run_name, resume=resume)
    raise ConfigError(f"unknown logger {kind!r}; allowed: {', '.join(LOGGERS)}")
