"""Anderson acceleration (type II) with a window of the last ``m`` iterates.

With residuals g_i = f(x_i) − x_i over the window, the weights α solve
min ‖Σ α_i g_i‖² + λ‖α‖² subject to Σ α_i = 1, i.e. α ∝ (GGᵀ + λI)⁻¹ 1, and the next point is
Σ α_i x_i + β Σ α_i g_i = Σ α_i y_i with y_i = x_i + β g_i (β = 1: undamped mixing, y_i = f(x_i)).
The window keeps only the residuals g_i (for the Gram matrix) and the points to mix y_i, so a
step reads each of them once: one pass for the new row of the Gram matrix, one for the mixing.
The loop writes g straight into the window (``residual_out``), and the mixing writes the next
point into one of two buffers taken by turns, so a step allocates nothing large.
The Gram matrix GGᵀ is updated one row per iteration and solved in float32 (float64 for float64
states), whatever the state's dtype. ``ridge`` is applied to the Gram matrix of the *normalised*
residuals g_i/‖g_i‖, so it neither depends on the scale of z nor swamps the small residuals of
late iterations.
"""

from __future__ import annotations

import torch

from deqloop.solvers import workspace
from deqloop.solvers.base import KeptRows, Solver, State
from deqloop.validate import integer, number


class Anderson(Solver):
    """Anderson acceleration. ``m`` window, ``ridge`` relative regularisation, ``beta`` mixing."""

    name = "anderson"
    records_history = False  # its steps write into the window's buffers

    def __init__(self, m: int = 6, ridge: float = 1e-6, beta: float = 1.0):
        self.m = integer("m", m)
        self.ridge = number("ridge", ridge, low=0)
        self.beta = number("beta", beta, low=0, high=1, low_open=True)

    def init(self, x: torch.Tensor, fx: torch.Tensor, acc_dtype: torch.dtype) -> State:
        # Uninitialised: a step reads only the slots (and Gram entries) written so far.
        n, d = x.shape
        e = lambda *s: workspace.empty(*s, dtype=acc_dtype, device=x.device)  # noqa: E731
        return {
            "Y": e(n, self.m, d),  # (N, m, D) points to mix
            "G": e(n, self.m, d),  # (N, m, D) residuals
            "GG": e(n, self.m, self.m),  # (N, m, m) Gram
            "X0": e(n, d),  # (N, D) the next point, written by turns into X0 and X1: the point being
            "X1": e(n, d),  # evaluated is never overwritten by the step that follows it
        }

    def residual_out(self, state: State, k: int) -> torch.Tensor:
        return state["G"][:, (k - 1) % self.m]  # the loop writes g straight into the window

    def step(self, state: State, x: torch.Tensor, fx: torch.Tensor, g: torch.Tensor, k: int) -> tuple[torch.Tensor, State]:
        Y, G, GG = state["Y"], state["G"], state["GG"]
        acc = Y.dtype
        slot = (k - 1) % self.m
        n = min(k, self.m)
        ga = G[:, slot]
        if g.data_ptr() != ga.data_ptr():  # not written in place by the loop (residual_out)
            ga.copy_(g)
        if self.beta == 1.0:
            Y[:, slot] = fx
        else:
            torch.add(x.to(acc), ga, alpha=self.beta, out=Y[:, slot])
        # ⟨g_i, g_new⟩ as (N, 1, D) @ (N, D, n): the row-times-matrix layout reads G once, fast
        row = torch.bmm(ga.unsqueeze(1), G[:, :n].transpose(1, 2)).squeeze(1)  # (N, n)
        GG[:, slot, :n] = row
        GG[:, :n, slot] = row
        if n == 1:
            return Y[:, slot].clone(), state
        # Solve in the basis of unit residuals: the ridge then penalises each weight relative to
        # its own residual's size, so late, tiny residuals are not regularised away.
        norms = GG[:, :n, :n].diagonal(dim1=1, dim2=2).clamp_min(torch.finfo(acc).tiny).sqrt()  # (N, n)
        C = GG[:, :n, :n] / (norms[:, :, None] * norms[:, None, :])  # (N, n, n), unit diagonal
        C = C + self.ridge * torch.eye(n, dtype=acc, device=x.device)
        w, _ = torch.linalg.solve_ex(C, (1.0 / norms).unsqueeze(2))  # (N, n, 1); bad rows caught below
        w = w.squeeze(2) / norms
        alpha = w / w.sum(dim=1, keepdim=True)  # (N, n), Σ α = 1
        # ill-posed rows take one plain step: all weight on the newest point
        ok = torch.isfinite(alpha).all(dim=1, keepdim=True)
        plain = torch.zeros_like(alpha)
        plain[:, slot] = 1.0
        alpha = torch.where(ok, alpha, plain)
        x_next = state[f"X{k % 2}"]
        torch.bmm(alpha.unsqueeze(1), Y[:, :n], out=x_next.unsqueeze(1))  # (N, 1, D)
        return x_next, state

    def compact(self, state: State, rows: KeptRows) -> State:
        # every entry is a buffer of its own: move only the rows that change place (and none of
        # the next-point buffers, rewritten before they are read)
        n = rows.index.numel()
        return {name: v[:n] if name in ("X0", "X1") else rows.move(v) for name, v in state.items()}
