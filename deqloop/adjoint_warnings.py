"""The warning of a failed implicit backward solve, aggregated so that it stays readable.

A training run whose backward solves fail on most steps would otherwise print one warning per
step. Instead the first failure is reported at once, in full, and after it one summary line
every :attr:`BackwardWarnings.every` backward passes (100 by default) that had failures in
them, with counts::

    BackwardWarning: implicit backward solve (anderson, rtol=1e-06, max_iter=50) did not converge for
        3 of 64 samples; largest relative residual 0.0123. Gradients for those samples are
        approximate. Further failures are summarised every 100 backward passes.
    BackwardWarning: implicit backward solve (anderson, rtol=1e-06, max_iter=50): 57 of the last 100
        backward passes failed for some samples (812 of 6400 samples; largest relative residual 0.31).

``deqloop.adjoint_warnings.backward_warnings.every = N`` changes the interval (1: every failure);
the per-step numbers are always in ``sol.backward`` and in ``Implicit(callback=...)``.
"""

from __future__ import annotations

import warnings

__all__ = ["BackwardWarning", "BackwardWarnings", "backward_warnings"]


class BackwardWarning(RuntimeWarning):
    """The implicit backward solve did not converge for some samples."""


class BackwardWarnings:
    """Counts backward passes and their failures; says when to warn and what."""

    def __init__(self, every: int = 100):
        self.every = every
        self.reset()

    def reset(self) -> None:
        """Forget everything (the next failure is reported in full again)."""
        self.first_reported = False
        self._window()

    def _window(self) -> None:
        self.passes = self.failed_passes = self.failed_samples = self.samples = 0
        self.worst = 0.0

    def record(self, what: str, failed: int, batch: int, worst: float) -> str | None:
        """Take in one backward pass (``failed`` of ``batch`` samples did not converge, largest
        relative residual ``worst``); returns the message to warn with, if any."""
        self.passes += 1
        self.samples += batch
        if failed:
            self.failed_passes += 1
            self.failed_samples += failed
            self.worst = max(self.worst, worst)
        message = None
        if failed and not self.first_reported:
            self.first_reported = True
            message = (f"{what} did not converge for {failed} of {batch} samples; largest relative residual "
                       f"{worst:.3g}. Gradients for those samples are approximate.")
            if self.every > 1:
                message += f" Further failures are summarised every {self.every} backward passes."
            self._window()
        elif self.passes >= self.every:
            if self.failed_passes:
                message = (f"{what}: {self.failed_passes} of the last {self.passes} backward passes failed for some "
                           f"samples ({self.failed_samples} of {self.samples} samples; largest relative residual "
                           f"{self.worst:.3g}).")
            self._window()
        return message

    def warn(self, what: str, failed: int, batch: int, worst: float, stacklevel: int = 2) -> None:
        """:meth:`record`, and warn with :class:`BackwardWarning` when it says so."""
        message = self.record(what, failed, batch, worst)
        if message is not None:
            warnings.warn(message, BackwardWarning, stacklevel=stacklevel + 1)


backward_warnings = BackwardWarnings()
