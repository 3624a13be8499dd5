"""Naive fixed-point (Picard) iteration, optionally damped: z ← (1 − τ)·z + τ·f(z)."""

from __future__ import annotations

import torch

from deqloop.solvers.base import Solver, State
from deqloop.validate import number


class Picard(Solver):
    """Picard iteration. ``damping`` τ ∈ (0, 1]; τ = 1 is plain iteration z ← f(z)."""

    name = "picard"

    def __init__(self, damping: float = 1.0):
        self.damping = number("damping", damping, low=0, high=1, low_open=True)

    def step(self, state: State, x: torch.Tensor, fx: torch.Tensor, g: torch.Tensor, k: int) -> tuple[torch.Tensor, State]:
        if self.damping == 1.0:
            return fx, state
        return torch.lerp(x, fx, self.damping), state
