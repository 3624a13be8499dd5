"""The library's own error types.

Every error deqloop raises on purpose for bad input derives from :class:`DeqloopError`, so a
command line can print it as one line while any other exception (a bug) keeps its traceback.
The config errors also derive from the built-in type a Python user would expect
(``ValueError`` for a bad value, ``TypeError`` for an unknown keyword).

* :class:`ConfigError` — a setting (a config field, an option, a keyword) is impossible.
* :class:`InputError` — an argument handed to a function (token ids, a state ``z0``, the map
  ``f``, a tensor) has the wrong rank, shape, dtype, range, device or non-finite values; the
  message names the argument, the bad value and what is allowed. :class:`InputTypeError` is the
  one for a wrong type or dtype (also a ``TypeError``).
* :class:`TrainingError` — a run cannot start or continue; :class:`TrainingInterrupted` — it
  stopped cleanly on SIGINT/SIGTERM with a checkpoint to resume from.
* :class:`ResourceError` — what was asked for does not fit in memory (a width, a batch, a
  solver's memory); :func:`allocating` turns the allocator's error into one naming the setting.

Other modules define the errors of their own kind on this base: ``CheckpointError``
(:mod:`deqloop.checkpoint`), ``DataError`` (:mod:`deqloop.tasks.io`), ``MetricsError``
(:mod:`deqloop.train.metrics`), ``OutputError`` and ``RunLocked`` (:mod:`deqloop.files`).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

__all__ = ["ConfigError", "ConfigKeyError", "DeqloopError", "InputError", "InputTypeError", "ResourceError",
           "TrainingError", "TrainingInterrupted", "allocating"]


class DeqloopError(Exception):
    """Base of the errors deqloop raises for bad input or an unusable run."""


class ConfigError(DeqloopError, ValueError):
    """A setting has an impossible value, or settings contradict each other."""


class ConfigKeyError(ConfigError, TypeError):
    """A config, option dict or call got a key it does not know; the message lists the allowed ones."""


class InputError(DeqloopError, ValueError):
    """An argument (a tensor, a callable) is unusable: wrong rank, shape, dtype, range, device,
    an empty batch or non-finite values. The message names the argument and what is allowed."""


class InputTypeError(InputError, TypeError):
    """An argument has the wrong type or dtype (e.g. float token ids, an integer state)."""


class TrainingError(DeqloopError, RuntimeError):
    """A run cannot start or continue (bad resume, poisoned parameters, ...)."""


class TrainingInterrupted(TrainingError):
    """Training stopped cleanly on SIGINT or SIGTERM: the step in progress finished, its metrics
    are in ``metrics.jsonl`` and ``last.pt`` holds it, so resuming continues exactly.

    Attributes: ``signal`` (the signal's number), ``step`` (completed steps), ``checkpoint``
    (the path of ``last.pt``) and :attr:`exit_status`, the status a command line exits with:
    128 + the signal's number (130 for SIGINT, 143 for SIGTERM), as a shell reports a process
    the signal ended.
    """

    def __init__(self, message: str, *, signal: int, step: int, checkpoint: object):
        super().__init__(message)
        self.signal = signal
        self.step = step
        self.checkpoint = checkpoint

    @property
    def exit_status(self) -> int:
        return 128 + self.signal


class ResourceError(DeqloopError, MemoryError):
    """What was asked for does not fit in memory; the message names the setting to lower."""


_ALLOCATION_FAILED = ("can't allocate memory", "out of memory", "not enough memory")


@contextlib.contextmanager
def allocating(what: str) -> Iterator[None]:
    """Turn an allocation failure inside the block (``MemoryError``, ``torch.OutOfMemoryError``,
    the CPU allocator's ``RuntimeError``) into a :class:`ResourceError` naming ``what`` (e.g.
    ``"the model's weights (width 10000000)"``); other errors pass through."""
    try:
        yield
    except ResourceError:
        raise
    except (MemoryError, RuntimeError) as e:
        if not isinstance(e, MemoryError) and not any(s in str(e) for s in _ALLOCATION_FAILED):
            raise
        asked = re.search(r"tried to allocate [^.(;]*", str(e))
        reason = asked.group(0).strip() if asked else (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise ResourceError(f"not enough memory for {what} ({reason})") from e
