"""Anderson acceleration (type II) with a window of the last ``m`` iterates.

With residuals g_i = f(x_i) − x_i over the window, the weights α solve
min ‖Σ α_i g_i‖² + λ‖α‖² subject to Σ α_i = 1, i.e. α ∝ (GGᵀ + λI)⁻¹ 1, and the next point is
Σ α_i x_i + β Σ α_i g_i (β = 1: undamped mixing). The Gram matrix GGᵀ is updated one row per
iteration and solved in float32 (float64 for float64 states), whatever the state's dtype.
``ridge`` is applied to the Gram matrix of the *normalised* residuals g_i/‖g_i‖, so it neither
depends on the scale of z nor swamps the small residuals of late iterations.
"""

from __future__ import annotations

import torch

from deqloop.solvers.base import Solver, State
from deqloop.validate import integer, number


class Anderson(Solver):
    """Anderson acceleration. ``m`` window, ``ridge`` relative regularisation, ``beta`` mixing."""

    name = "anderson"

    def __init__(self, m: int = 6, ridge: float = 1e-6, beta: float = 1.0):
        self.m = integer("m", m)
        self.ridge = number("ridge", ridge, low=0)
        self.beta = number("beta", beta, low=0, high=1, low_open=True)

    def init(self, x: torch.Tensor, fx: torch.Tensor, acc_dtype: torch.dtype) -> State:
        n, d = x.shape
        return {
            "X": torch.zeros(n, self.m, d, dtype=acc_dtype, device=x.device),  # (N, m, D) points
            "G": torch.zeros(n, self.m, d, dtype=acc_dtype, device=x.device),  # (N, m, D) residuals
            "GG": torch.zeros(n, self.m, self.m, dtype=acc_dtype, device=x.device),  # (N, m, m) Gram
        }

    def step(self, state: State, x: torch.Tensor, fx: torch.Tensor, k: int) -> tuple[torch.Tensor, State]:
        X, G, GG = state["X"], state["G"], state["GG"]
        acc = X.dtype
        slot = (k - 1) % self.m
        n = min(k, self.m)
        xa, ga = x.to(acc), fx.to(acc) - x.to(acc)
        X[:, slot] = xa
        G[:, slot] = ga
        row = torch.bmm(G[:, :n], ga.unsqueeze(2)).squeeze(2)  # (N, n) ⟨g_i, g_new⟩
        GG[:, slot, :n] = row
        GG[:, :n, slot] = row
        if n == 1:
            return (xa + self.beta * ga), state
        # Solve in the basis of unit residuals: the ridge then penalises each weight relative to
        # its own residual's size, so late, tiny residuals are not regularised away.
        norms = GG[:, :n, :n].diagonal(dim1=1, dim2=2).clamp_min(torch.finfo(acc).tiny).sqrt()  # (N, n)
        C = GG[:, :n, :n] / (norms[:, :, None] * norms[:, None, :])  # (N, n, n), unit diagonal
        C = C + self.ridge * torch.eye(n, dtype=acc, device=x.device)
        w, _ = torch.linalg.solve_ex(C, (1.0 / norms).unsqueeze(2))  # (N, n, 1); bad rows caught below
        w = w / norms.unsqueeze(2)
        alpha = w / w.sum(dim=1, keepdim=True)  # Σ α = 1
        a = alpha.transpose(1, 2)  # (N, 1, n)
        mixed = (torch.bmm(a, X[:, :n]) + self.beta * torch.bmm(a, G[:, :n])).squeeze(1)  # (N, D)
        ok = torch.isfinite(alpha).all(dim=1).squeeze(1)
        x_next = torch.where(ok[:, None], mixed, xa + self.beta * ga)  # ill-posed rows: one plain step
        return x_next, state
