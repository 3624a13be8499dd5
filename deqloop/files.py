"""Files the library writes and reads: atomic replacement, the run folder's lock, output folders
checked before any work, fingerprints of data files.

    atomic_write(path, text)               # temp file in the same folder, fsync, os.replace
    atomic_write(path, writer=torch.save)  # or a function that writes to a binary file object
    with RunLock(out): ...                 # one writer per run folder (fcntl.flock on OUT/.lock)
    out = writable_folder(out, "--out")    # created if missing; OutputError if it cannot be written
    save_figure(fig, "runs/x/plot.png")    # a matplotlib figure, atomically
    fingerprint("puzzles.csv")             # size and SHA-256, to notice a changed data file

A process killed at any moment during :func:`atomic_write` leaves the old file or the new one,
never a torn or empty one.
"""

from __future__ import annotations

import errno
import gc
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from deqloop.errors import DeqloopError

__all__ = ["LOCK_NAME", "OutputError", "RunLock", "RunLocked", "atomic_write", "fingerprint", "save_figure",
           "writable_folder"]

LOCK_NAME = ".lock"


class OutputError(DeqloopError, OSError):
    """An output path cannot be written: a file where a folder is needed, no permission, a full
    disk. The message names the path and the reason."""


class RunLocked(OutputError):
    """Another process holds the run folder (it is training into it)."""


def atomic_write(path: str | Path, data: str | bytes | None = None, *,
                 writer: Callable[[IO[bytes]], Any] | None = None) -> Path:
    """Replace ``path`` with ``data`` (text is UTF-8), or with what ``writer(file)`` writes.

    The bytes go to a temporary file in the same folder, are flushed and fsynced, and the file
    is renamed over ``path`` with :func:`os.replace`; the folder is fsynced too. A temporary file
    left by a failed write is removed.
    """
    if (data is None) == (writer is None):
        raise TypeError("atomic_write needs exactly one of data and writer")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if writer is not None:
                writer(f)
            else:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
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


def writable_folder(path: str | Path, what: str = "output folder") -> Path:
    """``Path(path)``, created if missing, after checking that a file can be written in it.

    Raises :class:`OutputError` naming ``what`` and the path for an empty path, a file in the
    way, a folder without write permission or a full disk, before any work is done.
    """
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise OutputError(f"{what} must be a non-empty folder path, got {path!r}")
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputError(f"{what} {str(path)!r} is a file, not a folder") from None
    except OSError as e:
        raise OutputError(f"{what} {str(path)!r} cannot be created: {e.strerror or e}") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-check.", dir=path)
        try:
            os.write(fd, b"x")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        raise OutputError(f"{what} {str(path)!r} is not writable: {e.strerror or e}") from None
    return path


class RunLock:
    """An exclusive lock on a run folder, held until :meth:`release` (or the end of a ``with``).

    ``fcntl.flock`` on ``folder/.lock``: the kernel drops it when the holder exits, however it
    ends (``kill -9`` included), so a stale lock file never blocks a later run. A second holder,
    in this process or another, gets :class:`RunLocked` naming the folder and the holder's pid.
    On platforms without ``fcntl`` the lock is a no-op.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self._fd: int | None = None
        self.acquire()

    def acquire(self) -> None:
        try:
            import fcntl
        except ImportError:  # not POSIX
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        for attempt in range(2):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    os.close(fd)
                    raise
                if attempt == 0:  # a lock of this process whose owner is unreachable: collect it
                    gc.collect()
                    continue
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
                os.close(fd)
                raise RunLocked(f"{self.folder} is in use by another deqloop process (pid {holder}); wait for it "
                                "to finish or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Let go of the lock (closing the file drops it); releasing twice is harmless."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()


def save_figure(fig: Any, path: str | Path, **kwargs: Any) -> Path:
    """``fig.savefig`` through :func:`atomic_write`, in the format the suffix names (PNG when
    ``path`` has none: the file written is then ``path`` itself, not ``path.png``)."""
    path = Path(path)
    fmt = path.suffix[1:].lower() or "png"
    return atomic_write(path, writer=lambda f: fig.savefig(f, format=fmt, **kwargs))


def fingerprint(path: str | Path) -> dict[str, Any]:
    """``{"path", "size", "sha256"}`` of a file, read in blocks (what a run stores of its data
    files to notice, on resume, that one changed)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"path": os.fspath(path), "size": os.path.getsize(path), "sha256": digest.hexdigest()}
