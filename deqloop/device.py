"""The one device helper every entry point uses: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``."""

from __future__ import annotations

import torch

from deqloop.errors import ConfigError

__all__ = ["DEVICES", "check_device", "resolve_device"]

DEVICES = "auto, cpu, cuda, cuda:N"


def check_device(spec: str) -> str:
    """``spec`` if it names a device kind deqloop knows (whether or not this machine has it)."""
    ok = isinstance(spec, str) and (spec in ("auto", "cpu", "cuda") or (spec.startswith("cuda:") and spec[5:].isdigit()))
    if not ok:
        raise ConfigError(f"unknown device {spec!r}; allowed: {DEVICES}")
    return spec


def resolve_device(spec: str = "auto", *, local_rank: int | None = None) -> torch.device:
    """The ``torch.device`` for ``spec``: ``"auto"`` is CUDA when available, else the CPU. Under
    ``torchrun`` (``local_rank`` given) ``"cuda"`` and ``"auto"`` mean this process's GPU, and
    ``"cuda:N"`` is an error unless N is the local rank (every rank would share GPU N). Selects the
    CUDA device; a CUDA request on a machine without one is an error."""
    check_device(spec)
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"device {spec!r} requested but CUDA is not available")
    index = int(spec[5:]) if ":" in spec else (local_rank or 0)
    if local_rank is not None and index != local_rank:
        raise ConfigError(f"device {spec!r} under torchrun: each process trains on its own GPU, cuda:LOCAL_RANK "
                          f"(cuda:{local_rank} here); pass device 'cuda' or 'auto'")
    torch.cuda.set_device(index)
    return torch.device("cuda", index)
