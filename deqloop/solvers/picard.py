"""Naive fixed-point (Picard) iteration, optionally damped: z ← (1 − τ)·z + τ·f(z)."""

from __future__ import annotations

import torch

from deqloop.solvers.base import Solver, State


class Picard(Solver):
    """Picard iteration. ``damping`` τ ∈ (0, 1]; τ = 1 is plain iteration z ← f(z)."""

    name = "picard"

    def __init__(self, damping: float = 1.0):
        if not 0.0 < float(damping) <= 1.0:
            raise ValueError(f"damping must be in (0, 1], got {damping!r}")
        self.damping = float(damping)

    def step(self, state: State, x: torch.Tensor, fx: torch.Tensor, k: int) -> tuple[torch.Tensor, State]:
        if self.damping == 1.0:
            return fx, state
        return torch.lerp(x, fx, self.damping), state
