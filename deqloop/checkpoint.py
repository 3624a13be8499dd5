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
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from deqloop.errors import DeqloopError
from deqloop.files import atomic_write

__all__ = ["FORMAT", "CheckpointError", "load_checkpoint", "load_model", "save_checkpoint"]

REQUIRED_KEYS = ("model_config", "model")
# 2: nested model config (arch/solve), task settings in train_config.task_options
# 3: the paper's block forms (recall_maps, norm_weights, bias, qk_norm_order, residual, blocks); an
#    earlier checkpoint lacks those fields and is read with deqloop's earlier forms (EARLIER_FORMS)
# 4: the training config nested by groups (TrainConfig.to_dict); an earlier one is flat, read through
#    deqloop.train.config.upgrade_stored
FORMAT = 4


class CheckpointError(DeqloopError, RuntimeError):
    """A checkpoint is missing, unreadable, or lacks the keys a model needs."""


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically and return the path.

    The bytes go to a temporary file in the same folder, are flushed and fsynced, and the file
    is renamed over ``path`` with :func:`os.replace`; the folder is fsynced too
    (:func:`deqloop.files.atomic_write`). A process killed at any moment leaves either the old
    file or the new one, never a torn one.
    """
    return atomic_write(path, writer=lambda f: torch.save(state, f))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises :class:`CheckpointError` (one line, naming the file) when the file does not exist, is
    not a checkpoint, is damaged (a zip member fails its CRC check, a weight is NaN or infinite),
    holds objects other than tensors and plain values, or lacks ``"model_config"`` / ``"model"``.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise CheckpointError(f"path must be a checkpoint file path (str or os.PathLike), got {type(path).__name__}")
    path = Path(path)
    if path.is_dir():
        hint = " (it holds last.pt: pass that)" if (path / "last.pt").is_file() else ""
        raise CheckpointError(f"path {str(path)!r} is a folder, not a checkpoint file{hint}")
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {str(path)!r}")
    _check_archive(path)
    try:
        # Checkpoints hold only tensors and plain values: the safe unpickler suffices.
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:  # torch's advice to load it unsafely is not repeated
        if "Unsupported global" not in str(e):
            raise CheckpointError(f"{path}: not a readable checkpoint ({_last_line(e)})") from e
        raise CheckpointError(f"{path}: refused: it holds objects other than tensors and plain values "
                              f"({_last_line(e)}); deqloop never loads those, as unpickling them can run code") from e
    except Exception as e:  # torch raises many types for a torn or foreign file
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {_last_line(e)})") from e
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
    for name, value in state["model"].items():  # deqloop never saves non-finite weights: a corrupt file
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{path}: tensor model.{name} holds non-finite values (NaN or inf): the file is "
                                  "corrupt or was not written by deqloop's trainer")
    if version < 3:
        _with_earlier_forms(state)
    return state


def _last_line(error: BaseException) -> str:
    """The most specific line of an error message (torch's end with the actual cause), without
    torch's advice to load with ``weights_only=False`` or to allow-list the unsafe global."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip() and "weights_only" not in line]
    cause = [line for line in lines if "Unsupported global" in line or "error:" in line.lower()]
    return (cause or lines or [type(error).__name__])[-1].split(" Please use ")[0][:300]


def _check_archive(path: Path) -> None:
    """A zip checkpoint (torch's format since 1.6) whose members fail their CRC-32 is corrupt: torch
    does not check, so a flipped bit would load as a silently wrong weight."""
    try:
        if not zipfile.is_zipfile(path):
            return  # torch's legacy format, or not a checkpoint: torch.load says which
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable checkpoint (damaged archive: {e})") from e
    if bad is not None:
        raise CheckpointError(f"{path}: corrupt: the CRC check of {bad!r} fails (the file was damaged after it was "
                              "written)")


def _with_earlier_forms(state: dict[str, Any]) -> None:
    """A checkpoint from before format 3 holds a model of deqloop's earlier block (per-sublayer
    recall maps and norms, no biases, QK-norm before RoPE): write those forms into its stored
    model and training configs where the fields are absent, so they rebuild that model."""
    from deqloop.model.config import EARLIER_FORMS

    earlier = {**EARLIER_FORMS, "residual": "add", "blocks": 1}  # the two other new fields: the only form there was
    config = state["model_config"]
    arch = config["arch"] if isinstance(config.get("arch"), dict) else config  # nested, or flat (format 1)
    train = state.get("train_config")
    for values in (arch, train if isinstance(train, dict) else {}):
        for key, value in earlier.items():
            values.setdefault(key, value)


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
