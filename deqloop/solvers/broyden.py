"""Limited-memory ("good") Broyden's method on g(z) = f(z) − z.

The inverse Jacobian of g is approximated as H = −I + Σ u_i v_iᵀ with at most ``m`` rank-one
terms, so memory is O(m·B·D) regardless of ``max_iter``. The first step, with H = −I, is a plain
iteration. Once ``m`` updates are held the memory *restarts*: H = −I again, and the next update is
taken against it. (Overwriting only the oldest term instead leaves the later terms, each computed
against an H that contained it, inconsistent: on a transformer-block map in float32 that made a
slowly contracting sample stall and then blow up, where restarting converges in fewer steps.)
Updates whose denominator vᵀΔg is within rounding of zero (|vᵀg − vᵀg_prev| ≤ ε‖v‖(‖g‖ +
‖g_prev‖), the error of that difference) are skipped. All products run in float32 (float64 for
float64 states), in buffers allocated once per solve (the scratch ones are never moved when
converged rows are dropped).

A step reads the memory four times, not six: after the update H⁺ = H + u vᵀ the step H⁺g is
H g + u (vᵀg), and H Δg = H g − H g_prev reuses H g_prev, kept from the previous step (it is H⁺g
of that step). Only H g and Hᵀ Δx go through the memory, and only through the slots filled so far.
"""

from __future__ import annotations

import torch

from deqloop.solvers import workspace
from deqloop.solvers.base import KeptRows, Solver, State
from deqloop.validate import integer


def _apply(U: torch.Tensor, V: torch.Tensor, y: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """H y = −y + Σ u_i (v_i · y), written into ``out``. U, V: (N, m, D); y, out: (N, D). Both
    products take the row-times-matrix layout ((N, 1, D) @ (N, D, m), then (N, 1, m) @ (N, m, D)),
    which reads each ring once at memory speed."""
    c = torch.bmm(y.unsqueeze(1), V.transpose(1, 2))  # (N, 1, m): v_i · y
    return torch.baddbmm(y.unsqueeze(1), c, U, beta=-1, out=out.unsqueeze(1)).squeeze(1)  # −y + c U


def _apply_transposed(U: torch.Tensor, V: torch.Tensor, y: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Hᵀ y = −y + Σ v_i (u_i · y), written into ``out``."""
    c = torch.bmm(y.unsqueeze(1), U.transpose(1, 2))  # (N, 1, m): u_i · y
    return torch.baddbmm(y.unsqueeze(1), c, V, beta=-1, out=out.unsqueeze(1)).squeeze(1)


SCRATCH = ("X0", "X1", "dx", "hg")  # rewritten before read at every step: never moved


class Broyden(Solver):
    """Limited-memory Broyden. ``m`` rank-one updates kept."""

    name = "broyden"

    def __init__(self, m: int = 12):
        self.m = integer("m", m)

    def init(self, x: torch.Tensor, fx: torch.Tensor, acc_dtype: torch.dtype) -> State:
        # Uninitialised: a step reads only the slots written since the last restart.
        n, d = x.shape
        e = lambda *s: workspace.empty(*s, dtype=acc_dtype, device=x.device)  # noqa: E731
        state = {
            "U": e(n, self.m, d),
            "V": e(n, self.m, d),
            "G": e(n, 2, d),  # residuals by turns: step k's in slot k % 2, the previous one in the other
            "x_prev": e(n, d),
            "hg_prev": e(n, d),  # H g_prev with the H that made the previous step
            "g_norm": torch.empty(n, 2, dtype=torch.float32, device=x.device),  # ‖g‖ by turns
        }
        # the next point goes to X0 and X1 by turns, so the point being evaluated is never overwritten
        return state | {name: e(n, d) for name in SCRATCH}

    def residual_out(self, state: State, k: int) -> torch.Tensor:
        return state["G"][:, k % 2]

    def step(self, state: State, x: torch.Tensor, fx: torch.Tensor, g: torch.Tensor, k: int) -> tuple[torch.Tensor, State]:
        U, V, G = state["U"], state["V"], state["G"]
        acc = U.dtype
        xa = x.to(acc)
        now, before = k % 2, (k - 1) % 2
        if g.data_ptr() != G[:, now].data_ptr():  # not written in place by the loop (residual_out)
            G[:, now].copy_(g)
        g = G[:, now]
        state["g_norm"][:, now] = torch.linalg.vector_norm(g, dim=1)
        if k == 1:
            hg = torch.neg(g, out=state["hg_prev"])  # H = −I
        else:
            # step k takes update number k − 2 since the start; the memory restarts every m of them.
            # Every row writes slot `used` (its u and v, or zeros where the update is skipped), so
            # the slots filled since the restart are the same for all rows.
            used = (k - 2) % self.m
            if used == 0:
                torch.neg(G[:, before], out=state["hg_prev"])  # H g_prev with H = −I
            Uu, Vu = U[:, :used], V[:, :used]
            hg = _apply(Uu, Vu, g, state["hg"]) if used else torch.neg(g, out=state["hg"])  # H g
            dx = torch.sub(xa, state["x_prev"], out=state["dx"])
            v = _apply_transposed(Uu, Vu, dx, V[:, used]) if used else torch.neg(dx, out=V[:, used])  # Hᵀ Δx
            # vᵀg and vᵀg_prev in one pass over v: Δxᵀ H Δg = vᵀg − vᵀg_prev, and vᵀg again below
            dots = torch.bmm(v.unsqueeze(1), G.transpose(1, 2)).squeeze(1)  # (N, 2)
            vg = dots[:, now]
            denom = vg - dots[:, before]
            scale = torch.finfo(acc).eps * torch.linalg.vector_norm(v, dim=1) * state["g_norm"].sum(dim=1)
            keep = (denom.abs() > 1e-30 + scale) & torch.isfinite(denom)
            # u = (Δx − H Δg) / (Δxᵀ H Δg), with H Δg = H g − H g_prev
            factor = torch.where(keep, 1.0 / torch.where(keep, denom, 1.0), 0.0)
            u = torch.sub(dx, hg, out=U[:, used]).add_(state["hg_prev"]).mul_(factor[:, None])
            if U.device.type != "cpu" or not bool(keep.all()):  # (on the CPU, reading keep is free)
                u.masked_fill_(~keep[:, None], 0.0)  # no term, even where Δx − H Δg overflowed
                v.masked_fill_(~keep[:, None], 0.0)
            # H⁺ = H + u vᵀ, so H⁺ g = H g + u (vᵀg); u is zero where the update was skipped
            hg = torch.addcmul(hg, u, torch.where(keep, vg, 0.0)[:, None], out=state["hg_prev"])
        state["x_prev"].copy_(xa)
        return torch.sub(xa, hg, out=state[f"X{k % 2}"]), state

    def compact(self, state: State, rows: KeptRows) -> State:
        # every entry is a buffer of its own: move only the rows that change place (and none of
        # the scratch buffers, rewritten before they are read)
        n = rows.index.numel()
        return {name: v[:n] if name in SCRATCH else rows.move(v) for name, v in state.items()}
