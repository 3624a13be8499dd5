"""Stopping a run cleanly on SIGINT or SIGTERM, and the message that says how to resume it.

    with StopSignals() as stop:            # handlers installed (main thread only), restored after
        for step in ...:
            ...                            # the step runs to its end whatever arrives meanwhile
            if stop.signal is not None:    # then the trainer checkpoints and raises
                raise TrainingInterrupted(...)

The first SIGINT or SIGTERM only records a request to stop; the trainer finishes the step in
progress (with its metrics, evaluation and checkpoint when due), writes ``last.pt`` and raises
:class:`~deqloop.errors.TrainingInterrupted`. A second signal gets the behaviour it would have had
without deqloop (SIGINT: ``KeyboardInterrupt``; SIGTERM: usually the end of the process) at once;
``last.pt`` then holds the previous checkpoint, which is still a valid place to resume from.
Python delivers signals to the main thread only, so from any other thread nothing is installed
and a signal keeps its usual effect.
"""

from __future__ import annotations

import logging
import shlex
import signal
import threading
from types import FrameType
from typing import Any

__all__ = ["STOP_SIGNALS", "StopSignals", "resume_command"]

log = logging.getLogger("deqloop.train")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

# Flags a resumed command must not repeat: --resume is added, and overwrite excludes resume.
_DROPPED_FLAGS = ("--resume", "--no-resume", "--overwrite", "--no-overwrite")


class StopSignals:
    """A context manager that turns the first SIGINT or SIGTERM into a request to stop.

    ``signal`` is ``None`` until one arrives, then its number. The previous handlers are restored
    on exit (and before a second signal is handed on to them). Outside the main thread, or with
    ``enabled=False``, it installs nothing and ``signal`` stays ``None``.
    """

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if self.enabled and threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signal is None:
            self.signal = signum
            log.warning("%s received: stopping after the current step (send it again to stop at once)",
                        signal.Signals(signum).name)
            return
        self._restore()
        signal.raise_signal(signum)


def resume_command(argv: list[str], prog: str = "deqloop") -> str:
    """The command line that resumes a ``deqloop train`` run started with arguments ``argv``
    (those after ``deqloop``): the same arguments without ``--resume``/``--overwrite`` (or an
    abbreviation argparse accepted for them), plus ``--resume``, quoted for a POSIX shell."""
    kept = [a for a in argv if not _is_dropped(a)]
    return shlex.join([prog, *kept, "--resume"])


def _is_dropped(arg: str) -> bool:
    name = arg.split("=", 1)[0]
    return len(name) > 3 and name.startswith("--") and any(flag.startswith(name) for flag in _DROPPED_FLAGS)
