"""One place for the checks every config and entry point makes; each raises :class:`ConfigError`
(or :class:`ConfigKeyError` for unknown keys) with a message naming the setting, the bad value
and what is allowed.

    integer("max_iter", 0)                     # ConfigError: max_iter must be an integer ≥ 1, got 0
    choice("norm", "layer", NORMS)             # ConfigError: unknown norm 'layer'; allowed: 'pre', ...
    known_keys({"depth": 4}, FIELDS, "LoopedDEQ")
"""

from __future__ import annotations

import math
import numbers
import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from deqloop.errors import ConfigError, ConfigKeyError

__all__ = ["changed_copy", "choice", "integer", "known_keys", "number", "quoted", "setting"]


def quoted(values: Iterable[Any]) -> str:
    """``'a', 'b', 'c'``: how allowed values are listed in messages."""
    return ", ".join(map(repr, values))


def integer(name: str, value: Any, minimum: int = 1) -> int:
    """``int(value)`` if it is an integer (``int`` or another ``numbers.Integral``, not a bool)
    ≥ ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ConfigError(f"{name} must be an integer ≥ {minimum}, got {value!r}")
    return int(value)


def number(name: str, value: Any, *, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False) -> float:
    """``float(value)`` if it is a finite real number within the given bounds."""
    lo = "" if low is None else ("(" if low_open else "[") + f"{low:g}"
    hi = "" if high is None else f"{high:g}" + (")" if high_open else "]")
    where = f" in {lo or '(-inf'}, {hi or 'inf)'}" if (low is not None or high is not None) else ""
    bad = ConfigError(f"{name} must be a finite number{where}, got {value!r}")
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise bad
    if low is not None and (value < low or (low_open and value == low)):
        raise bad
    if high is not None and (value > high or (high_open and value == high)):
        raise bad
    return float(value)


def choice(name: str, value: Any, allowed: Iterable[Any]) -> Any:
    """``value`` if it is one of ``allowed``."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ConfigError(f"unknown {name} {value!r}; allowed: {quoted(allowed)}")
    return value


def known_keys(given: Mapping[str, Any] | Iterable[str], allowed: Iterable[str], where: str) -> None:
    """Raise :class:`ConfigKeyError` naming the keys of ``given`` that are not ``allowed``."""
    allowed = tuple(allowed)
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ConfigKeyError(f"{where} got unknown key(s) {unknown}; allowed: {', '.join(allowed) or '(none)'}")


def setting(help: str, **kw: Any) -> Any:
    """A dataclass field documented with ``help`` (the command line's flag help)."""
    return dataclasses.field(metadata={"help": help}, **kw)


def changed_copy(obj: Any, changes: Mapping[str, Any]) -> tuple[Any, list[str]]:
    """A shallow copy of the settings object ``obj`` (a frozen dataclass) with those of
    ``changes`` that differ from its own values, and their names; ``(obj, [])`` when none differ.
    Nothing is checked here: the caller checks the names returned, so settings validated once
    are checked again only where they change."""
    changed = [k for k, v in changes.items() if v is not getattr(obj, k) and v != getattr(obj, k)]
    if not changed:
        return obj, []
    new = object.__new__(type(obj))
    new.__dict__.update(obj.__dict__)
    new.__dict__.update({k: changes[k] for k in changed})
    return new, changed
