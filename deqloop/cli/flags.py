"""Command-line flags from dataclass fields, nested groups included: one flag per setting, named by
its flat name (:mod:`deqloop.flat_names`), typed by its annotation, with its ``setting(help=...)``
text and its default in the help."""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from typing import Any

__all__ = ["IntPair", "add_dataclass_flags", "flag_name", "int_pair", "iters_type", "json_object", "json_or_text",
           "nonempty"]


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def nonempty(text: str) -> str:
    """A path argument that names something: ``--out ''`` is an error, not the default folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON ({e.msg}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object like '{{\"m\": 5}}', got {text!r}")
    return value


def json_or_text(text: str) -> Any:
    """A JSON value when ``text`` parses as one (e.g. ``[0, 5]``), else the text itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def int_pair(values: list[str]) -> tuple[int, int]:
    """Two integers from ``["lo", "hi"]`` or ``["lo-hi"]`` (e.g. ``--blanks 4 24`` or ``--blanks 4-24``)."""
    parts = values[0].split("-") if len(values) == 1 else values
    try:
        if len(parts) == 2:
            return int(parts[0]), int(parts[1])
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"expected two integers as 'lo hi' or 'lo-hi', got {' '.join(values)!r}")


class IntPair(argparse.Action):
    """An argparse action storing :func:`int_pair` of one or two arguments."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        if len(values) > 2:
            parser.error(f"{option_string}: expected 'lo hi' or 'lo-hi', got {' '.join(values)!r}")
        try:
            setattr(namespace, self.dest, int_pair(values))
        except argparse.ArgumentTypeError as e:
            parser.error(f"{option_string}: {e}")


def iters_type(text: str) -> list[int]:
    from deqloop.eval.curves import parse_iters
    from deqloop.errors import ConfigError

    try:
        return parse_iters(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _optional_of(hint: Any) -> Any:
    """``X`` for ``X | None`` (and ``X`` itself otherwise); ``None`` for unions of several types."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else None
    return hint


def add_dataclass_flags(parser: argparse.ArgumentParser, cls: type, *, choices: dict[str, tuple] | None = None,
                        skip: tuple[str, ...] = (), special: dict[str, dict[str, Any]] | None = None) -> list[str]:
    """Add ``--flat-name`` for each setting of the (possibly nested) dataclass ``cls`` except
    ``skip``; returns the flat names (:func:`deqloop.flat_names.leaves`, which raises
    :class:`~deqloop.errors.ConfigError` when two nested settings would make the same flag).

    Defaults are suppressed (absent flags stay absent), so the dataclasses' defaults apply.
    ``choices`` restrict string settings; ``special`` gives argparse keywords for some (by flat name).
    """
    from deqloop.flat_names import leaves

    names = []
    for name, leaf in leaves(cls, skip=skip).items():
        f = leaf.field
        names.append(name)
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        help_text = f.metadata.get("help", "")
        if default not in (None, (), {}, ""):
            help_text += f" [default: {' '.join(map(str, default)) if isinstance(default, tuple) else default}]"
        kw: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": help_text}
        hint = _optional_of(leaf.hint)
        origin = typing.get_origin(hint)
        if name in (special or {}):
            kw.update(special[name])
        elif hint is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif origin is dict:
            kw.update(type=json_object, metavar="JSON")
        elif origin is tuple and typing.get_args(hint) == (int, int):
            kw.update(nargs="+", action=IntPair, metavar=("LO[-HI]", "HI"))
        elif origin is tuple:
            args = typing.get_args(hint)
            item = args[0] if args else str
            n = "+" if (len(args) == 2 and args[1] is Ellipsis) else len(args)
            kw.update(nargs=n, type=item, metavar={int: "N", float: "X"}.get(item, "S"))
        elif hint in (int, float, str):
            kw["type"] = hint
            if choices and name in choices:
                kw["choices"] = choices[name]
            else:
                kw["metavar"] = {int: "N", float: "X", str: "S"}[hint]
        else:  # a union of several kinds (e.g. a name or a [low, high] pair): JSON, else text
            kw.update(type=json_or_text, metavar="V")
        parser.add_argument(flag_name(name), **kw)
    return names
