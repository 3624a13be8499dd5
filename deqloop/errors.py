"""The library's own error types.

Every error deqloop raises on purpose for bad input derives from :class:`DeqloopError`, so a
command line can print it as one line while any other exception (a bug) keeps its traceback.
The config errors also derive from the built-in type a Python user would expect
(``ValueError`` for a bad value, ``TypeError`` for an unknown keyword).
"""

from __future__ import annotations

__all__ = ["ConfigError", "ConfigKeyError", "DeqloopError", "TrainingError"]


class DeqloopError(Exception):
    """Base of the errors deqloop raises for bad input or an unusable run."""


class ConfigError(DeqloopError, ValueError):
    """A setting has an impossible value, or settings contradict each other."""


class ConfigKeyError(ConfigError, TypeError):
    """A config, option dict or call got a key it does not know; the message lists the allowed ones."""


class TrainingError(DeqloopError, RuntimeError):
    """A run cannot start or continue (bad resume, poisoned parameters, ...)."""
