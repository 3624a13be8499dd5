"""Scratch memory that the solver loop reuses from one solve to the next, on the CPU.

A solve allocates the same large buffers every time it runs: Anderson's window, Broyden's rings,
the loop's residual and best iterate, tens of MB for a batch of transformer states. On the CPU a
fresh large allocation comes from the operating system as untouched pages, and every page
faults on its first write. On a (64, 81·128) float32 state that made writing a new buffer
about three times as slow as writing one already touched, and a training run solves with the
same shapes every step. The CUDA caching allocator already keeps freed memory for reuse, so
on other devices this module just allocates.

Inside a :func:`scope` (one per solve), :func:`empty` takes an idle buffer of the same shape,
dtype and device from the pool, or allocates one. When the scope ends, every buffer it handed
out goes back to the pool (uninitialised: whoever takes it writes before reading). Idle buffers
are capped at :func:`set_limit` bytes in all (default 1 GiB; the oldest are dropped first);
:func:`clear` frees them now. Nested and concurrent solves each hold their own buffers.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections import OrderedDict
from typing import Iterator

import torch

Key = tuple[tuple[int, ...], torch.dtype, torch.device]

_lock = threading.Lock()
_idle: OrderedDict[int, tuple[Key, torch.Tensor]] = OrderedDict()  # id → buffer, oldest first
_limit = 1 << 30
_current: contextvars.ContextVar[list[torch.Tensor] | None] = contextvars.ContextVar("deqloop_workspace", default=None)


def _bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _key(t: torch.Tensor) -> Key:
    return tuple(t.shape), t.dtype, t.device


def idle_bytes() -> int:
    """Bytes held by idle buffers."""
    with _lock:
        return sum(_bytes(t) for _, t in _idle.values())


def set_limit(nbytes: int) -> None:
    """Keep at most ``nbytes`` of idle buffers (0: keep none, every solve allocates afresh)."""
    global _limit
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
        raise ValueError(f"the workspace limit must be a number of bytes ≥ 0, got {nbytes!r}")
    with _lock:
        _limit = nbytes
        _trim()


def clear() -> None:
    """Free every idle buffer."""
    with _lock:
        _idle.clear()


def _trim() -> None:
    total = sum(_bytes(t) for _, t in _idle.values())
    while _idle and total > _limit:
        _, (_, t) = _idle.popitem(last=False)
        total -= _bytes(t)


def empty(*shape: int, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """An uninitialised buffer: from the pool inside a :func:`scope` on the CPU, else ``torch.empty``."""
    held = _current.get()
    device = torch.device(device)
    if held is None or device.type != "cpu":
        return torch.empty(*shape, dtype=dtype, device=device)
    key = (tuple(shape), dtype, device)
    with _lock:
        found = next((i for i, (k, _) in _idle.items() if k == key), None)
        buffer = _idle.pop(found)[1] if found is not None else None
    if buffer is None:
        buffer = torch.empty(*shape, dtype=dtype, device=device)
    held.append(buffer)
    return buffer


@contextlib.contextmanager
def scope(enabled: bool = True) -> Iterator[None]:
    """Buffers taken by :func:`empty` within return to the pool at the end. Nothing handed out
    inside may be used after it (return copies). ``enabled=False``: plain allocations."""
    if not enabled:
        token = _current.set(None)
        try:
            yield
        finally:
            _current.reset(token)
        return
    held: list[torch.Tensor] = []
    token = _current.set(held)
    try:
        yield
    finally:
        _current.reset(token)
        with _lock:
            for buffer in held:
                _idle[id(buffer)] = (_key(buffer), buffer)
            _trim()
