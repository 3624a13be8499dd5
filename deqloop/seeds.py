"""Randomness as a pure function of keys: the seed of every stream the library draws from.

    g = generator(seed, BATCH, step)        # a CPU torch.Generator for this (seed, stream, step)
    s = derive_seed(seed, POOL) % 2**31     # an integer seed for a function that takes one
    ss = example_seeds(start, stop, seed, BATCH, step)   # one seed per example start..stop-1

Keys are hashed by NumPy's ``SeedSequence``, so different key tuples give independent streams.
The stream ids below name what the trainer draws; tasks use their own ids for their bands.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["AUGMENT", "BATCH", "EPOCH", "EVAL", "JACOBIAN", "LENGTH", "MONITOR", "POOL", "PROGRESSIVE",
           "LaneStreams", "derive_seed", "example_seeds", "generator"]

# Streams of a training run (keys after the run's seed).
BATCH, LENGTH, PROGRESSIVE, AUGMENT, EPOCH, POOL, JACOBIAN = range(7)
MONITOR = 98  # the stability monitor's probe and draws
EVAL = 99


def derive_seed(*keys: int) -> int:
    """A 64-bit integer seed derived from ``keys`` (independent streams per key tuple): the two
    32-bit words of their ``SeedSequence`` state, concatenated."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 32 | int(state[1])


def generator(*keys: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` (the CPU by default) seeded by :func:`derive_seed` of ``keys``.
    A device's generator draws other numbers than the CPU's from the same seed, equally a function
    of the keys; it draws there, without a copy from the host."""
    return torch.Generator(device=device).manual_seed(derive_seed(*keys))


_GAMMA = np.uint64(0x9E3779B97F4A7C15)  # splitmix64's increment (2**64 / golden ratio, odd)


def _mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's output function of the states ``z`` (uint64, elementwise; wraps mod 2**64)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def example_seeds(start: int, stop: int, *keys: int) -> list[int]:
    """Seeds ``< 2**63`` of examples ``start, ..., stop - 1`` of the stream ``keys`` (e.g. ``(seed,
    BATCH, step)``): example ``i``'s seed is a function of ``(keys, i)`` alone, so any split of a
    batch into index ranges (one per DDP rank) gives each example the seed it has in one process.

    They are splitmix64's outputs at positions ``i + 1`` of the sequence that starts at
    :func:`derive_seed` of ``keys`` (Steele, Lea and Flood, "Fast splittable pseudorandom number
    generators", OOPSLA 2014): ``derive_seed`` separates streams, the mixer separates examples.
    """
    if not 0 <= start <= stop:
        raise ValueError(f"example range must satisfy 0 <= start <= stop, got [{start}, {stop})")
    z = np.uint64(derive_seed(*keys)) + np.arange(start + 1, stop + 1, dtype=np.uint64) * _GAMMA
    return [int(v) for v in _mix64(z) >> np.uint64(1)]


class LaneStreams:
    """Independent uniform streams, one per lane of a vectorized computation: lane ``j``'s ``k``-th
    number is splitmix64's output at position ``k + 1`` from ``seeds[j]``. A draw for some lanes
    advances only those lanes, so what a lane draws depends on its seed and its own past alone,
    never on which other lanes run beside it. It offers the two methods of ``np.random.Generator``
    that draw a value per lane (``random``, ``integers``), and ``random_rows`` for a subset of lanes.

        rng = LaneStreams([11, 12, 13])
        u = rng.random((3, 81))              # (3, 81) floats in [0, 1), row j from lane j
        d = rng.random_rows(np.array([2]), 9)  # (1, 9) for lane 2 only
    """

    def __init__(self, lane_seeds, _count: np.ndarray | None = None):
        self.seeds = np.asarray(lane_seeds, dtype=np.uint64).reshape(-1)
        self.count = np.zeros(len(self.seeds), np.uint64) if _count is None else _count  # numbers drawn

    def __len__(self) -> int:
        return len(self.seeds)

    def __getitem__(self, lanes: slice) -> LaneStreams:
        """The streams of ``lanes`` (a slice), advancing with this object's."""
        return LaneStreams(self.seeds[lanes], self.count[lanes])

    def random_rows(self, lanes: np.ndarray, width: int) -> np.ndarray:
        """``(len(lanes), width)`` floats in ``[0, 1)``: the next ``width`` numbers of each lane in ``lanes``."""
        position = self.count[lanes, None] + np.arange(1, width + 1, dtype=np.uint64)  # (L, width)
        self.count[lanes] += np.uint64(width)
        bits = _mix64(self.seeds[lanes, None] + position * _GAMMA)
        return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53

    def random(self, size: tuple[int, ...]) -> np.ndarray:
        """``size = (lanes, ...)``: each lane's next numbers, in ``[0, 1)``."""
        if size[0] != len(self):
            raise ValueError(f"LaneStreams of {len(self)} lanes asked for {size[0]} rows")
        width = int(np.prod(size[1:], dtype=np.int64))
        return self.random_rows(np.arange(len(self)), width).reshape(size)

    def integers(self, low: int, high: int, size: int) -> np.ndarray:
        """``(lanes,)`` integers in ``[low, high)``, one per lane."""
        if size != len(self):
            raise ValueError(f"LaneStreams of {len(self)} lanes asked for {size} integers")
        return low + np.minimum((self.random((size, 1))[:, 0] * (high - low)).astype(np.int64), high - low - 1)
