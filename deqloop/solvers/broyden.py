"""Limited-memory ("good") Broyden's method on g(z) = f(z) − z.

The inverse Jacobian of g is approximated as H = −I + Σ u_i v_iᵀ with at most ``m`` rank-one
terms (a ring: the oldest is overwritten), so memory is O(m·B·D) regardless of ``max_iter``.
The first step, with H = −I, is a plain iteration. Updates whose denominator vᵀΔg is tiny are
skipped. All products run in float32 (float64 for float64 states).
"""

from __future__ import annotations

import torch

from deqloop.solvers.base import Solver, State
from deqloop.validate import integer


def _apply(U: torch.Tensor, V: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """H y = −y + Σ u_i (v_i · y). U, V: (N, m, D); y: (N, D)."""
    return -y + torch.bmm(U.transpose(1, 2), torch.bmm(V, y.unsqueeze(2))).squeeze(2)


def _apply_transposed(U: torch.Tensor, V: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Hᵀ y = −y + Σ v_i (u_i · y)."""
    return -y + torch.bmm(V.transpose(1, 2), torch.bmm(U, y.unsqueeze(2))).squeeze(2)


class Broyden(Solver):
    """Limited-memory Broyden. ``m`` rank-one updates kept."""

    name = "broyden"

    def __init__(self, m: int = 12):
        self.m = integer("m", m)

    def init(self, x: torch.Tensor, fx: torch.Tensor, acc_dtype: torch.dtype) -> State:
        n, d = x.shape
        z = lambda *s: torch.zeros(*s, dtype=acc_dtype, device=x.device)  # noqa: E731
        return {
            "U": z(n, self.m, d),
            "V": z(n, self.m, d),
            "x_prev": z(n, d),
            "g_prev": z(n, d),
            "updates": torch.zeros(n, dtype=torch.long, device=x.device),
        }

    def step(self, state: State, x: torch.Tensor, fx: torch.Tensor, k: int) -> tuple[torch.Tensor, State]:
        U, V = state["U"], state["V"]
        acc = U.dtype
        xa = x.to(acc)
        g = fx.to(acc) - xa
        if k > 1:
            dx = xa - state["x_prev"]
            dg = g - state["g_prev"]
            h_dg = _apply(U, V, dg)
            v = _apply_transposed(U, V, dx)  # Hᵀ Δx
            denom = (v * dg).sum(dim=1)  # Δxᵀ H Δg
            tiny = denom.abs() <= 1e-30 + torch.finfo(acc).eps * v.norm(dim=1) * dg.norm(dim=1)
            safe = torch.where(tiny, torch.ones_like(denom), denom)
            u = (dx - h_dg) / safe[:, None]
            keep = (~tiny & torch.isfinite(denom))[:, None]
            slot = state["updates"] % self.m  # (N,) ring position per row (equal across rows)
            idx = slot[:, None, None].expand(-1, 1, U.shape[2])
            # a skipped update leaves the ring untouched
            U.scatter_(1, idx, torch.where(keep, u, U.gather(1, idx).squeeze(1)).unsqueeze(1))
            V.scatter_(1, idx, torch.where(keep, v, V.gather(1, idx).squeeze(1)).unsqueeze(1))
            state["updates"] = state["updates"] + keep.squeeze(1).long()
        state["x_prev"], state["g_prev"] = xa, g
        x_next = xa - _apply(U, V, g)
        return x_next, state
