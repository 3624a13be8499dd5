"""Randomness as a pure function of keys: the seed of every stream the library draws from.

    g = generator(seed, BATCH, step)        # a CPU torch.Generator for this (seed, stream, step)
    s = derive_seed(seed, POOL) % 2**31     # an integer seed for a function that takes one

Keys are hashed by NumPy's ``SeedSequence``, so different key tuples give independent streams.
The stream ids below name what the trainer draws; tasks use their own ids for their bands.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["AUGMENT", "BATCH", "EPOCH", "EVAL", "JACOBIAN", "LENGTH", "MONITOR", "POOL", "PROGRESSIVE",
           "derive_seed", "generator"]

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
