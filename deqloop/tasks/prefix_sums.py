"""Prefix sums: a bit string in, its running parity out.

``y[i] = (x[0] + ... + x[i]) mod 2``. Tokens and classes are both the bits ``{0, 1}``.
Train on short strings (32 bits by default) and test on long ones (512 bits): the
extrapolation the looped model is meant to make. A prediction is correct only if the whole
output sequence matches.

    x, y = generate(1000, 32, seed=0)      # LongTensor (1000, 32) each
    task = PrefixSums(length=12, min_length=4, hard_length=48)   # a 4-12 bit curriculum
    ok = task.correct(logits, y)            # (n,) bool
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from deqloop import seeds
from deqloop.errors import ConfigError
from deqloop.tasks.base import Task, as_predictions, check_band, check_count, check_seed
from deqloop.validate import integer, setting

__all__ = ["PrefixSums", "cell_accuracy", "correct", "generate"]

VOCAB_SIZE = 2
NUM_CLASSES = 2
TRAIN_LENGTH = 32
HARD_LENGTH = 512
_STREAMS = {"train": 0, "val": 1, "hard": 2}
EXTRA_STREAM = 3  # extra test lengths (deqloop eval --extra 96)


def generate(n: int, length: int, seed: int = 0, *, stream: int = 0) -> tuple[Tensor, Tensor]:
    """``n`` uniformly random bit strings of ``length`` bits and their prefix parities.

    Deterministic in ``(seed, stream)``; different streams give independent draws.
    Returns LongTensors ``x, y`` of shape ``(n, length)``.
    """
    check_count(n)
    integer("length", length)
    check_seed(seed)
    x = torch.randint(0, 2, (n, length), generator=seeds.generator(seed, 0, stream), dtype=torch.long)
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
class PrefixSums(Task):
    """The prefix-sums task: ``train``/``val`` at ``length`` bits, ``hard`` at ``hard_length``.

    With ``min_length``, each training batch draws its length uniformly from
    ``[min_length, length]`` (a curriculum that is a pure function of the run's seed and step).
    With ``start_length`` and ``ramp_steps`` that range grows: it starts at
    ``[start_min_length, start_length]`` and moves linearly to ``[min_length, length]`` over the
    first ``ramp_steps`` steps (both ends rounded; :meth:`length_range`), so ``--resume``
    continues it exactly. A batch of L bits needs about L iterations of a local-attention loop:
    its :meth:`propagation_depth` is L.

        PrefixSums(length=32, min_length=8, start_length=8, start_min_length=4, ramp_steps=1000)
        # step 0: 4-8 bits, step 500: 6-20 bits, from step 1000 on: 8-32 bits
    """

    length: int = setting("training length in bits", default=TRAIN_LENGTH)
    min_length: int | None = setting("draw each training batch's length uniformly from [min_length, length] "
                                   "(a length curriculum; default: always length)", default=None)
    hard_length: int = setting("length of the hard split in bits", default=HARD_LENGTH)
    start_length: int | None = setting("difficulty schedule: the longest training length at step 0, growing "
                                       "linearly to length over ramp_steps (default: no schedule)", default=None)
    start_min_length: int | None = setting("difficulty schedule: the shortest training length at step 0, moving "
                                           "linearly to min_length (default: min_length)", default=None)
    ramp_steps: int = setting("difficulty schedule: steps over which the length range grows (needs "
                              "start_length)", default=0)

    name: ClassVar[str] = "prefix_sums"
    vocab_size: ClassVar[int] = VOCAB_SIZE
    num_classes: ClassVar[int] = NUM_CLASSES

    def __post_init__(self) -> None:
        integer("prefix_sums length", self.length)
        integer("prefix_sums hard_length", self.hard_length)
        if self.min_length is not None:
            integer("prefix_sums min_length", self.min_length)
            if self.min_length > self.length:
                raise ConfigError(f"prefix_sums min_length ({self.min_length}) exceeds length ({self.length})")
        integer("prefix_sums ramp_steps", self.ramp_steps, minimum=0)
        if (self.start_length is None) != (self.ramp_steps == 0) or (self.start_min_length is not None
                                                                      and self.start_length is None):
            raise ConfigError("prefix_sums difficulty schedule: start_length and ramp_steps > 0 go together "
                              f"(got start_length={self.start_length}, start_min_length={self.start_min_length}, "
                              f"ramp_steps={self.ramp_steps})")
        if self.start_length is not None:
            integer("prefix_sums start_length", self.start_length)
            lo = self.start_min_length if self.start_min_length is not None else self._final_min
            integer("prefix_sums start_min_length", lo)
            if not lo <= self.start_length <= self.length:
                raise ConfigError(f"prefix_sums difficulty schedule: need start_min_length ({lo}) ≤ start_length "
                                  f"({self.start_length}) ≤ length ({self.length})")

    @property
    def _final_min(self) -> int:
        return self.length if self.min_length is None else self.min_length

    def length_range(self, step: int) -> tuple[int, int]:
        """``(shortest, longest)`` training length at ``step``: ``[min_length, length]``, or with a
        difficulty schedule the linear interpolation from ``[start_min_length, start_length]``,
        reaching ``[min_length, length]`` at ``ramp_steps`` (each end rounded to a whole bit)."""
        if self.start_length is None:
            return self._final_min, self.length
        t = min(1.0, step / self.ramp_steps)
        lo0 = self.start_min_length if self.start_min_length is not None else self._final_min
        return round(lo0 + t * (self._final_min - lo0)), round(self.start_length + t * (self.length - self.start_length))

    def curriculum(self, step: int) -> dict[str, list[int]]:
        lo, hi = self.length_range(step)
        return {"train_lengths": [lo, hi]} if (lo, hi) != (self.length, self.length) else {}

    @property
    def grid(self) -> tuple[int, ...]:
        return (self.length,)

    def split_length(self, split: str) -> int:
        return self.hard_length if check_band(split) == "hard" else self.length

    def make(self, split: str, n: int, seed: int = 0, *, length: int | None = None) -> tuple[Tensor, Tensor]:
        """``(x, y)`` of shape ``(n, length)``; ``length`` overrides the split's."""
        length = self.split_length(split) if length is None else length
        return generate(n, length, seed, stream=_STREAMS[check_band(split)])

    def train_length(self, seed: int, step: int) -> int:
        """The length of the training batch of ``step`` (the curriculum's draw)."""
        lo, hi = self.length_range(step)
        if lo == hi:
            return hi
        g = seeds.generator(seed, seeds.LENGTH, step)
        return int(torch.randint(lo, hi + 1, (1,), generator=g))

    def train_examples(self, seed: int, step: int, start: int, stop: int) -> tuple[Tensor, Tensor]:
        """Examples ``start..stop-1`` of ``step``'s batch: all at the step's :meth:`train_length`,
        example ``i``'s bits drawn by a generator seeded by ``seeds.example_seeds`` at ``i``."""
        length = self.train_length(seed, step)
        x = torch.empty((stop - start, length), dtype=torch.long)
        for row, s in zip(x, seeds.example_seeds(start, stop, seed, seeds.BATCH, step)):
            row.random_(0, 2, generator=torch.Generator().manual_seed(s))
        return x, torch.cumsum(x, dim=1) % 2

    def propagation_depth(self, x: Tensor | None = None) -> int:
        return self.length if x is None else int(x.shape[-1])

    def extra_split(self, spec: str, n: int, seed: int) -> tuple[str, tuple[Tensor, Tensor]]:
        """``spec`` is a length in bits: ``n`` random strings of that length."""
        try:
            length = int(spec)
        except ValueError:
            raise ConfigError(f"prefix_sums extra test sets are lengths in bits, got {spec!r}") from None
        return f"{length} bits", generate(n, integer("extra length", length), seed=seed, stream=EXTRA_STREAM)

    def correct(self, out: Tensor, y: Tensor, x: Tensor | None = None) -> Tensor:
        return correct(out, y, x)

    def cell_accuracy(self, out: Tensor, y: Tensor, x: Tensor | None = None) -> Tensor:
        return cell_accuracy(out, y, x)
