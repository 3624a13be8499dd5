"""Is a ``.zst`` file whole? A walk over its frame and block headers, without decompressing.

A zstd stream cut short (an interrupted download, a full disk) decompresses without complaint up
to the cut: a loader would read a quarter of a file as if it were all of it. :func:`check_complete`
reads only the headers (a few bytes per block of up to 128 KiB, RFC 8878 §3.1), so it costs
nothing next to the decompression, and says where the data ends early.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

__all__ = ["check_complete"]

_MAGIC = 0xFD2FB528
_SKIPPABLE = 0x184D2A50  # 0x184D2A50 to 0x184D2A5F


def check_complete(path: str | Path) -> str | None:
    """``None`` when ``path`` is a sequence of complete zstd frames, else what is wrong (e.g.
    ``"the data ends inside frame 1, at byte 8192 of 8192"``)."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        return "the file is empty (no zstd frame)"
    with path.open("rb") as f:
        frame = 0
        while f.tell() < size:
            frame += 1
            problem = _skip_frame(f, size)
            if problem:
                return f"{problem} in frame {frame}, at byte {f.tell()} of {size} (the file is incomplete or damaged)"
    return None


def _read(f: BinaryIO, n: int) -> bytes | None:
    data = f.read(n)
    return data if len(data) == n else None


def _skip_frame(f: BinaryIO, size: int) -> str | None:
    """Move past one frame; what is wrong with it, or ``None``."""
    head = _read(f, 4)
    if head is None:
        return "the data ends"
    magic = struct.unpack("<I", head)[0]
    if magic & 0xFFFFFFF0 == _SKIPPABLE:
        length = _read(f, 4)
        if length is None:
            return "the data ends"
        return _seek(f, struct.unpack("<I", length)[0], size)
    if magic != _MAGIC:
        return "not a zstd frame (bad magic number)"
    descriptor = _read(f, 1)
    if descriptor is None:
        return "the data ends"
    d = descriptor[0]
    single_segment = bool(d & 0x20)
    checksum = 4 if d & 0x04 else 0
    dictionary = (0, 1, 2, 4)[d & 0x03]
    content_size = (1 if single_segment else 0, 2, 4, 8)[d >> 6]
    problem = _seek(f, (0 if single_segment else 1) + dictionary + content_size, size)
    if problem:
        return problem
    while True:
        header = _read(f, 3)
        if header is None:
            return "the data ends"
        value = int.from_bytes(header, "little")
        last, kind, length = value & 1, (value >> 1) & 3, value >> 3
        if kind == 3:
            return "a reserved block type (damaged data)"
        problem = _seek(f, 1 if kind == 1 else length, size)
        if problem:
            return problem
        if last:
            return _seek(f, checksum, size)


def _seek(f: BinaryIO, n: int, size: int) -> str | None:
    if f.tell() + n > size:
        f.seek(size)
        return "the data ends"
    f.seek(n, 1)
    return None
