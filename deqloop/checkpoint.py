"""Checkpoints written atomically: a crash mid-write never corrupts the previous one.

    save_checkpoint("runs/x/last.pt", state)     # temp file in the same folder, fsync, os.replace
    state = load_checkpoint("runs/x/last.pt")    # CheckpointError with a one-line reason if unusable
    model = load_model("runs/x/last.pt")         # LoopedDEQ rebuilt from "model_config" + "model"

A checkpoint is a dict. Every checkpoint written by :mod:`deqloop.train` holds at least
``"model_config"`` (a dict for :meth:`LoopedDEQConfig.from_dict`) and ``"model"`` (the state
dict), plus ``"format"`` (:data:`FORMAT`), the full training config, the task's class and
settings, optimizer, scheduler, step and RNG states. :class:`deqloop.run.Run` reads one into a
model, its training config and its task.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from deqloop.errors import DeqloopError

__all__ = ["FORMAT", "CheckpointError", "load_checkpoint", "load_model", "save_checkpoint"]

REQUIRED_KEYS = ("model_config", "model")
FORMAT = 2  # 2: nested model config (arch/solve), task settings in train_config.task_options


class CheckpointError(DeqloopError, RuntimeError):
    """A checkpoint is missing, unreadable, or lacks the keys a model needs."""


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically and return the path.

    The bytes go to a temporary file in the same folder, are flushed and fsynced, and the file
    is renamed over ``path`` with :func:`os.replace`; the folder is fsynced too. A process killed
    at any moment leaves either the old file or the new one, never a torn one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. platforms without directory file descriptors
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises :class:`CheckpointError` (one line, naming the file) when the file does not exist, is
    not a checkpoint, or lacks ``"model_config"`` / ``"model"``.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise CheckpointError(f"path must be a checkpoint file path (str or os.PathLike), got {type(path).__name__}")
    path = Path(path)
    if path.is_dir():
        hint = " (it holds last.pt: pass that)" if (path / "last.pt").is_file() else ""
        raise CheckpointError(f"path {str(path)!r} is a folder, not a checkpoint file{hint}")
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {str(path)!r}")
    try:
        # Checkpoints hold only tensors and plain values: the safe unpickler suffices.
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for a torn or foreign file
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, got {type(state).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(map(repr, missing))}")
    version = state.get("format", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{path}: checkpoint format {version!r} is not one deqloop wrote; allowed: 1 to {FORMAT}")
    if version > FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {version!r} is newer than this deqloop reads ({FORMAT}); "
                              "upgrade deqloop")
    for key in REQUIRED_KEYS:
        if not isinstance(state[key], dict):
            raise CheckpointError(f"{path}: checkpoint {key!r} must be a dict, got {type(state[key]).__name__}")
    return state


def load_model(path: str | Path, map_location: str | torch.device = "cpu", *, state: dict[str, Any] | None = None):
    """The :class:`~deqloop.model.LoopedDEQ` stored in a checkpoint (or in its already read
    ``state``), in eval mode, with ``compile`` off (compiling is a property of a run, not of
    the weights). A state dict that does not fit the stored config is a :class:`CheckpointError`."""
    from deqloop.model import LoopedDEQ, LoopedDEQConfig

    state = load_checkpoint(path, map_location) if state is None else state
    try:
        config = LoopedDEQConfig.from_dict(state["model_config"]).replace(compile=False)
        model = LoopedDEQ(config)
        mismatch = _mismatch(model.state_dict(), state["model"])
        if mismatch:
            raise CheckpointError(f"{path}: its weights are not those of its stored model config (another model's?): "
                                  f"{mismatch}")
        model.load_state_dict(state["model"])
    except CheckpointError:
        raise
    except (DeqloopError, RuntimeError, TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: the stored model does not load ({type(e).__name__}: {str(e).splitlines()[0]})") from e
    return model.eval()


def _mismatch(expected: dict[str, Any], given: dict[str, Any]) -> str:
    """What differs between a model's state dict and a stored one ('' when they fit)."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    shapes = [f"{k} {tuple(given[k].shape)} != {tuple(expected[k].shape)}" for k in expected
              if k in given and isinstance(given[k], torch.Tensor) and given[k].shape != expected[k].shape]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
        if items:
            more = f" and {len(items) - 3} more" if len(items) > 3 else ""
            parts.append(f"{label}: {', '.join(items[:3])}{more}")
    return "; ".join(parts)
