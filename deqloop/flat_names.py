"""Flat names for a tree of settings dataclasses: one name per setting, checked unique.

A settings tree is a dataclass whose fields may be dataclasses themselves (groups, also behind
``X | None``). Each leaf setting has a flat name: its field's name, or the name its group's field
gives it in the metadata ``flat_names`` (``{"precision": "solve_precision"}``). Flat names are what
the command line's flags and flat ``name → value`` dicts use:

    leaves(TrainConfig)["max_iter"].path      # ("solve", "max_iter")
    nest(TrainConfig, {"width": 32, "lr": 1e-3})  # {"model": {"width": 32}, "optim": {"lr": 0.001}}

Two leaves with the same flat name are an error when the tree is read (:func:`leaves`), naming both.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from deqloop.errors import ConfigError
from deqloop.validate import known_keys

__all__ = ["Leaf", "group_class", "leaves", "nest"]


@dataclass(frozen=True)
class Leaf:
    """One setting of a tree: its flat name, its path of field names, its field and its type."""

    flat: str
    path: tuple[str, ...]
    field: dataclasses.Field
    hint: Any


def group_class(hint: Any) -> type | None:
    """The dataclass a field's annotation names (``X`` or ``X | None``); ``None`` for a leaf."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = args[0] if len(args) == 1 else None
    return hint if isinstance(hint, type) and dataclasses.is_dataclass(hint) else None


def leaves(cls: type, *, skip: tuple[str, ...] = ()) -> dict[str, Leaf]:
    """Every leaf setting of the tree ``cls`` by flat name (in field order; ``skip``: flat names
    left out). Raises :class:`ConfigError` when two leaves share a flat name."""
    found: dict[str, Leaf] = {}
    _walk(cls, (), {}, found, cls.__name__)
    return {name: leaf for name, leaf in found.items() if name not in skip}


def _walk(cls: type, prefix: tuple[str, ...], renames: Mapping[str, str], found: dict[str, Leaf], root: str) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        group = group_class(hints[f.name])
        if group is not None:
            _walk(group, prefix + (f.name,), f.metadata.get("flat_names", {}), found, root)
            continue
        leaf = Leaf(renames.get(f.name, f.name), prefix + (f.name,), f, hints[f.name])
        if leaf.flat in found:
            raise ConfigError(f"settings {'.'.join(found[leaf.flat].path)} and {'.'.join(leaf.path)} of {root} "
                              f"would both be named {leaf.flat!r} (flag --{leaf.flat.replace('_', '-')}): rename "
                              "one (its group field's metadata flat_names)")
        found[leaf.flat] = leaf


def nest(cls: type, values: Mapping[str, Any], where: str | None = None) -> dict[str, Any]:
    """Flat ``name → value`` pairs as the tree's nested dicts (only the names given); unknown
    names are a :class:`~deqloop.errors.ConfigKeyError` that lists the allowed ones."""
    tree = leaves(cls)
    known_keys(values, tree, where or cls.__name__)
    out: dict[str, Any] = {}
    for name, value in values.items():
        *groups, last = tree[name].path
        node = out
        for g in groups:
            node = node.setdefault(g, {})
        node[last] = value
    return out
