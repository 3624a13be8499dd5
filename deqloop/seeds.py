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
           "derive_seed", "example_seeds", "generator"]

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
    z = np.uint64(derive_seed(*keys)) + np.arange(start + 1, stop + 1, dtype=np.uint64) * _GAMMA  # wraps mod 2**64
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return [int(v) for v in z >> np.uint64(1)]
