"""Checks of the tensors and callables handed to the public entry points, made once at entry.

Each raises :class:`~deqloop.errors.InputError` (:class:`~deqloop.errors.InputTypeError` for a
wrong type or dtype) with a message naming the argument, the bad value and what is allowed::

    tensor("x", [[1, 2]])                  # InputTypeError: x must be a torch.Tensor, got list
    token_ids("x", x, vocab_size=10, grid_axes=1)
    state("z0", z0)                        # float, batch-first, at least one sample
    finite("z0", z0)                       # one host synchronisation

Everything here reads only a tensor's metadata (shape, dtype, device), except :func:`finite` and
the range check of :func:`token_ids`, which reduce the tensor once (one host synchronisation).
None of them belongs inside a solver's iteration loop.
"""

from __future__ import annotations

from typing import Any

import torch

from deqloop.errors import InputError, InputTypeError

__all__ = ["callable_map", "finite", "float_tensor", "state", "steps", "tensor", "token_ids"]


def tensor(name: str, value: Any) -> torch.Tensor:
    """``value`` if it is a :class:`torch.Tensor`."""
    if not isinstance(value, torch.Tensor):
        raise InputTypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def float_tensor(name: str, value: Any) -> torch.Tensor:
    """``value`` if it is a real floating-point tensor."""
    tensor(name, value)
    if not value.is_floating_point():
        raise InputTypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    return value


def state(name: str, value: Any) -> torch.Tensor:
    """A solver's state: a floating-point tensor, batch-first, with at least one sample."""
    tensor(name, value)
    if value.device.type == "meta":
        raise InputError(f"{name} is on the meta device (a shape without values); create it on the device to solve on")
    if value.dim() < 1 or value.shape[0] == 0:
        raise InputError(f"{name} must be batch-first (B, ...) with B ≥ 1 samples, got shape {tuple(value.shape)}")
    return float_tensor(name, value)


def finite(name: str, value: torch.Tensor) -> torch.Tensor:
    """``value`` if every entry is finite (no NaN or ±Inf). One host synchronisation, one read:
    the smallest and largest entries (``aminmax`` propagates NaN; ±Inf is one of them) are
    finite exactly when all are."""
    if value.numel() and not bool(torch.isfinite(torch.stack(torch.aminmax(value.detach()))).all()):
        bad = int((~torch.isfinite(value)).sum())
        raise InputError(f"{name} has {bad} non-finite entries (NaN or Inf) of {value.numel()}; "
                         "it must be finite")
    return value


def callable_map(name: str, value: Any) -> Any:
    """``value`` if it can be called."""
    if not callable(value):
        raise InputTypeError(f"{name} must be callable (a map z ↦ f(z)), got {type(value).__name__}")
    return value


def steps(name: str, value: Any) -> int:
    """A count of iterations: an integer ≥ 0 (``bool`` is not one)."""
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise InputTypeError(f"{name} must be an integer ≥ 0, got {value!r}")
    value = int(value.__index__())
    if value < 0:
        raise InputError(f"{name} must be an integer ≥ 0, got {value}")
    return value


def token_ids(name: str, value: Any, *, vocab_size: int, grid_axes: int, device: torch.device | None = None) -> torch.Tensor:
    """Token ids ``(B, *grid)``: an integer tensor with ``grid_axes`` grid axes, ``B ≥ 1``, no
    empty axis, every id in ``[0, vocab_size)``, on ``device`` (when given).

    The grid's sizes are free (a model runs on other lengths and board sizes than it trained on);
    only the number of axes is fixed. The range check is one min/max reduction (one host
    synchronisation).
    """
    tensor(name, value)
    if value.dtype == torch.bool or value.is_floating_point() or value.is_complex():
        raise InputTypeError(f"{name} must be an integer tensor of token ids, got dtype {value.dtype}")
    if value.dim() != grid_axes + 1:
        raise InputError(f"{name} must have shape (B, *grid) with {grid_axes} grid axis(es), i.e. {grid_axes + 1} "
                         f"dimensions; got shape {tuple(value.shape)}")
    if value.shape[0] == 0:
        raise InputError(f"{name} has an empty batch (shape {tuple(value.shape)}); it needs at least one example")
    if 0 in value.shape:
        raise InputError(f"{name} has an empty grid axis (shape {tuple(value.shape)}); every grid size must be ≥ 1")
    if device is not None and value.device != device:
        raise InputError(f"{name} is on {value.device}, the model on {device}; move it with .to({str(device)!r})")
    low, high = torch.stack(torch.aminmax(value)).tolist()  # one synchronisation
    if low < 0 or high >= vocab_size:
        bad = low if low < 0 else high
        raise InputError(f"{name} holds token id {bad}, outside the vocabulary [0, {vocab_size}) "
                         f"(ids range over [{low}, {high}])")
    return value
