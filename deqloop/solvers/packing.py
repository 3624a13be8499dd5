"""States that are several tensors: a tuple, list or dict (nested) of batch-first tensors.

A multi-branch model (MDEQ's resolutions, DEQ-flow's flow and context) carries its state as
several tensors that share the batch dimension. :func:`deqloop.solve` and
:func:`deqloop.fixed_point` accept such a *tree* and hand ``f`` a tree of the same structure. The
loop itself sees one ``(B, N)`` tensor: :class:`Packing` flattens the leaves of each sample into
one row (``pack``) and cuts a row back into views of the leaves (``unpack``), so everything the
loop does per sample (the residual norm, convergence, freezing, dropping rows, Anderson's and
Broyden's memory, every backward mode) is over the sample's whole state, all leaves together::

    packing = Packing.of("z0", (a0, b0))      # a0: (B, C, H, W), b0: (B, C', H', W')
    x = packing.pack((a0, b0))                # (B, C·H·W + C'·H'·W')
    a, b = packing.unpack(x)                  # views of x's rows, shaped as a0 and b0

Leaves must share the batch size, the dtype and the device (one row is one tensor). A single
tensor is not packed at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Union

import torch

from deqloop import inputs
from deqloop.errors import InputError, InputTypeError

__all__ = ["Packing", "Tree", "map_leaves", "packed_map"]

Tree = Union[torch.Tensor, tuple, list, dict]
_LEAF = None  # the spec of a leaf


def _flatten(tree: Any, path: str, leaves: list[torch.Tensor], paths: list[str]) -> Any:
    if isinstance(tree, torch.Tensor):
        leaves.append(tree)
        paths.append(path)
        return _LEAF
    if isinstance(tree, dict):
        return (dict, tuple(tree), tuple(_flatten(v, f"{path}[{k!r}]", leaves, paths) for k, v in tree.items()))
    if isinstance(tree, (tuple, list)):
        return (type(tree), None, tuple(_flatten(v, f"{path}[{i}]", leaves, paths) for i, v in enumerate(tree)))
    raise InputTypeError(f"{path} must be a tensor or a tuple, list or dict of tensors, got {type(tree).__name__}")


def _build(spec: Any, leaves: Any) -> Any:
    if spec is _LEAF:
        return next(leaves)
    kind, keys, children = spec
    values = [_build(c, leaves) for c in children]
    if kind is dict:
        return dict(zip(keys, values))
    if hasattr(kind, "_fields"):  # a namedtuple
        return kind(*values)
    return kind(values)


def flatten(name: str, tree: Any) -> tuple[list[torch.Tensor], list[str], Any]:
    """``(leaves, their paths, spec)`` of ``tree``; the paths name each leaf (``"z0[1]['flow']"``)."""
    leaves: list[torch.Tensor] = []
    paths: list[str] = []
    spec = _flatten(tree, name, leaves, paths)
    if not leaves:
        raise InputError(f"{name} holds no tensor; it must be a tensor or a tuple, list or dict of tensors")
    return leaves, paths, spec


def map_leaves(fn: Callable[[torch.Tensor], torch.Tensor], tree: Any) -> Any:
    """``tree`` with ``fn`` applied to each tensor leaf (tuple, list, dict containers)."""
    leaves, _, spec = flatten("tree", tree)
    return _build(spec, iter([fn(leaf) for leaf in leaves]))


@dataclass(frozen=True)
class Packing:
    """How a tree of batch-first tensors lies in one ``(B, N)`` tensor: each sample's leaves,
    flattened and concatenated in the tree's order."""

    spec: Any
    paths: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]  # each leaf's shape without the batch dimension
    sizes: tuple[int, ...]  # entries per sample of each leaf
    dtype: torch.dtype
    device: torch.device

    @classmethod
    def of(cls, name: str, tree: Any) -> Packing:
        """The packing of ``tree``; its leaves must be floating-point, batch-first, of one batch
        size, dtype and device (an :class:`~deqloop.errors.InputError` names the leaf that is not)."""
        leaves, paths, spec = flatten(name, tree)
        first, first_path = leaves[0], paths[0]
        for leaf, path in zip(leaves, paths):
            inputs.state(path, leaf)
            if leaf.shape[0] != first.shape[0]:
                raise InputError(f"the leaves of {name} must share the batch size: {first_path} has "
                                 f"{first.shape[0]} samples, {path} {leaf.shape[0]}")
            if leaf.dtype != first.dtype:
                raise InputTypeError(f"the leaves of {name} must share one dtype: {first_path} is {first.dtype}, "
                                     f"{path} {leaf.dtype}")
            if leaf.device != first.device:
                raise InputError(f"the leaves of {name} must be on one device: {first_path} is on {first.device}, "
                                 f"{path} on {leaf.device}")
        shapes = tuple(tuple(leaf.shape[1:]) for leaf in leaves)
        sizes = tuple(leaf[0].numel() for leaf in leaves)
        return cls(spec, tuple(paths), shapes, sizes, first.dtype, first.device)

    def pack(self, tree: Any, name: str = "f(z)", batch: int | None = None) -> torch.Tensor:
        """``(B, N)``: the rows of ``tree``'s leaves concatenated (differentiable). ``tree`` must have
        the structure, leaf shapes (batch ``batch`` when given) and dtype this packing was made from."""
        leaves, paths, spec = flatten(name, tree)
        if spec != self.spec:
            raise InputError(f"{name} must have the structure of the state ({self._describe(self.paths, self.shapes)}), "
                             f"got {self._describe(paths, [tuple(t.shape[1:]) for t in leaves])}")
        B = leaves[0].shape[0] if batch is None else batch
        for leaf, path, shape in zip(leaves, paths, self.shapes):
            if tuple(leaf.shape) != (B, *shape):
                raise InputError(f"{path} must have shape {(B, *shape)} (that of the state), got {tuple(leaf.shape)}")
            if leaf.dtype != self.dtype:
                raise InputTypeError(f"{path} must have the state's dtype {self.dtype}, got {leaf.dtype}; cast inside "
                                     "f if a different precision is meant")
        if len(leaves) == 1:
            return leaves[0].reshape(B, -1)
        return torch.cat([leaf.reshape(B, -1) for leaf in leaves], dim=1)

    def unpack(self, x: torch.Tensor) -> Any:
        """The tree whose leaves are views of the columns of ``x`` ``(b, N)`` (any number of rows)."""
        b = x.shape[0]
        parts = torch.split(x, list(self.sizes), dim=1)
        return _build(self.spec, iter([p.reshape(b, *shape) for p, shape in zip(parts, self.shapes)]))

    @staticmethod
    def _describe(paths: Any, shapes: Any) -> str:
        return ", ".join(f"{p}: (B, {', '.join(map(str, s))})" if s else f"{p}: (B,)" for p, s in zip(paths, shapes))


class PackedMap:
    """``x ↦ pack(f(unpack(x)))``: a map on trees seen as a map on ``(B, N)`` tensors."""

    def __init__(self, f: Callable[[Any], Any], packing: Packing):
        self.f = f
        self.packing = packing

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.packing.pack(self.f(self.packing.unpack(x)), batch=x.shape[0])


class _SubsettablePackedMap(PackedMap):
    def select(self, index: torch.Tensor) -> _SubsettablePackedMap:
        return _SubsettablePackedMap(self.f.select(index), self.packing)  # type: ignore[attr-defined]


def packed_map(f: Callable[[Any], Any], packing: Packing) -> PackedMap:
    """``f`` on trees as a map on packed tensors; it keeps ``f``'s ``select`` (adaptive compute)."""
    return (_SubsettablePackedMap if callable(getattr(f, "select", None)) else PackedMap)(f, packing)
