"""Prefix sums: a bit string in, its running parity out.

``y[i] = (x[0] + ... + x[i]) mod 2``. Tokens and classes are both the bits ``{0, 1}``.
Train on short strings (32 bits by default) and test on long ones (512 bits): the
extrapolation the looped model is meant to make. A prediction is correct only if the whole
output sequence matches.

    x, y = generate(1000, 32, seed=0)      # LongTensor (1000, 32) each
    ok = correct(logits, y)                 # (1000,) bool
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from deqloop.tasks.base import as_predictions, check_band, check_count, make_generator

__all__ = ["PrefixSums", "cell_accuracy", "correct", "generate"]

VOCAB_SIZE = 2
NUM_CLASSES = 2
TRAIN_LENGTH = 32
HARD_LENGTH = 512
_STREAMS = {"train": 0, "val": 1, "hard": 2}


def generate(n: int, length: int, seed: int = 0, *, stream: int = 0) -> tuple[Tensor, Tensor]:
    """``n`` uniformly random bit strings of ``length`` bits and their prefix parities.

    Deterministic in ``(seed, stream)``; different streams give independent draws.
    Returns LongTensors ``x, y`` of shape ``(n, length)``.
    """
    check_count(n)
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ValueError(f"length must be a positive int, got {length!r}")
    x = torch.randint(0, 2, (n, length), generator=make_generator(seed, 0, stream), dtype=torch.long)
    y = torch.cumsum(x, dim=1) % 2
    return x, y


def correct(out: Tensor, y: Tensor, x: Tensor | None = None) -> Tensor:
    """``(n,)`` bool: the whole predicted sequence equals the target (``x`` is unused)."""
    pred = as_predictions(out, y)
    return (pred == y).flatten(1).all(dim=1)


def cell_accuracy(out: Tensor, y: Tensor, x: Tensor | None = None) -> Tensor:
    """``(n,)`` float: the fraction of positions predicted right."""
    pred = as_predictions(out, y)
    return (pred == y).flatten(1).float().mean(dim=1)


@dataclass(frozen=True)
class PrefixSums:
    """The prefix-sums task: ``train``/``val`` at ``train_length`` bits, ``hard`` at ``hard_length``."""

    train_length: int = TRAIN_LENGTH
    hard_length: int = HARD_LENGTH

    name: ClassVar[str] = "prefix_sums"
    vocab_size: ClassVar[int] = VOCAB_SIZE
    num_classes: ClassVar[int] = NUM_CLASSES

    def __post_init__(self) -> None:
        for name in ("train_length", "hard_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"PrefixSums.{name} must be a positive int, got {value!r}")

    @property
    def grid(self) -> tuple[int, ...]:
        return (self.train_length,)

    def length(self, band: str) -> int:
        return self.hard_length if check_band(band) == "hard" else self.train_length

    def make(self, band: str, n: int, seed: int = 0, *, length: int | None = None) -> tuple[Tensor, Tensor]:
        """``(x, y)`` of shape ``(n, length)``; ``length`` overrides the band's (for curricula)."""
        length = self.length(band) if length is None else length
        return generate(n, length, seed, stream=_STREAMS[check_band(band)])

    def correct(self, out: Tensor, y: Tensor, x: Tensor | None = None) -> Tensor:
        return correct(out, y, x)

    def cell_accuracy(self, out: Tensor, y: Tensor, x: Tensor | None = None) -> Tensor:
        return cell_accuracy(out, y, x)
