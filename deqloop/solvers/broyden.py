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
When the loop evaluates exactly the point the last step returned (a state in the solver's own
precision), Δx is that step, −H g_prev, and the update's numerator Δx − H Δg is just −H g: no
Δx, no previous point, one pass for u. A lower-precision state rounds the point it evaluates, so
there Δx is taken from the points themselves.
"""

from __future__ import annotations

import torch

from deqloop.solvers import base, workspace
from deqloop.solvers.base import KeptRows, Solver, State
from deqloop.validate import integer


def _apply(U: torch.Tensor, V: torch.Tensor, y: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """H y = −y + Σ u_i (v_i · y), written into ``out``. U, V: (N, m, D); y, out: (N, D). Both
    products take the row-times-matrix layout ((N, 1, D) @ (N, D, m), then (N, 1, m) @ (N, m, D)),
    which reads each ring once at memory speed."""
    c = torch.bmm(y.unsqueeze(1), V.transpose(1, 2))  # (N, 1, m): v_i · y
    return torch.baddbmm(y.unsqueeze(1), c, U, beta=-1, out=out.unsqueeze(1)).squeeze(1)  # −y + c U


def _apply_transposed(U: torch.Tensor, V: torch.Tensor, y: torch.Tensor, out: torch.Tensor, sign: float = 1.0) -> torch.Tensor:
    """Hᵀ (sign·y) = −sign·y + Σ v_i (u_i · sign·y), written into ``out`` (sign ±1)."""
    c = torch.bmm(y.unsqueeze(1), U.transpose(1, 2))  # (N, 1, m): u_i · y
    return torch.baddbmm(y.unsqueeze(1), c, V, beta=-sign, alpha=sign, out=out.unsqueeze(1)).squeeze(1)


SCRATCH = ("X0", "X1", "dx", "hg")  # rewritten before read at every step: never moved


class Broyden(Solver):
    """Limited-memory Broyden. ``m`` rank-one updates kept (6 by default: on the benchmark's
    transformer-block map, 64 samples, 6 took 561 / 728 / 893 sample evaluations to reach
    rtol 1e-4 / 1e-5 / 1e-6, where 12 took 568 / 761 / 953, and each step reads the memory
    through half as many slots)."""

    name = "broyden"
    records_history = False  # its steps write into the low-rank memory's buffers

    def __init__(self, m: int = 6):
        self.m = integer("m", m)

    def init(self, x: torch.Tensor, fx: torch.Tensor, acc_dtype: torch.dtype) -> State:
        # Uninitialised: a step reads only the slots written since the last restart.
        n, d = x.shape
        e = lambda *s: workspace.empty(*s, dtype=acc_dtype, device=x.device)  # noqa: E731
        state = {
            "U": e(n, self.m, d),
            "V": e(n, self.m, d),
            "G": e(n, 2, d),  # residuals by turns: step k's in slot k % 2, the previous one in the other
            "hg_prev": e(n, d),  # H⁺ g_prev of the last step, which stepped by −hg_prev
            "g_norm": torch.empty(n, 2, dtype=torch.float32, device=x.device),  # ‖g‖ by turns
            "X0": e(n, d),  # the next point, by turns in X0 and X1: the point being evaluated is
            "X1": e(n, d),  # never overwritten by the step that follows it
            "hg": e(n, d),
        }
        if not self.evaluates_its_own_points(x, acc_dtype):  # Δx from the points themselves
            state |= {"x_prev": e(n, d), "dx": e(n, d)}
        return state

    def residual_out(self, state: State, k: int) -> torch.Tensor:
        return state["G"][:, k % 2]

    @staticmethod
    def evaluates_its_own_points(x: torch.Tensor, acc: torch.dtype) -> bool:
        """Whether the point evaluated is exactly the one the last step returned (not rounded to a
        lower-precision state): then Δx is that step."""
        return x.dtype == acc

    def step(self, state: State, x: torch.Tensor, fx: torch.Tensor, g: torch.Tensor, k: int) -> tuple[torch.Tensor, State]:
        U, V, G = state["U"], state["V"], state["G"]
        acc = U.dtype
        xa = x.to(acc)
        now, before = k % 2, (k - 1) % 2
        if g.data_ptr() != G[:, now].data_ptr():  # not written in place by the loop (residual_out)
            G[:, now].copy_(g)
        g = G[:, now]
        state["g_norm"][:, now] = torch.linalg.vector_norm(g, dim=1)
        exact = self.evaluates_its_own_points(x, acc)
        if k == 1:
            hg = torch.neg(g, out=state["hg_prev"])  # H = −I
        else:
            # step k takes update number k − 2 since the start; the memory restarts every m of them.
            # Every row writes slot `used` (its u and v, or zeros where the update is skipped), so
            # the slots filled since the restart are the same for all rows.
            used = (k - 2) % self.m
            hg_prev = state["hg_prev"]  # H⁺ g_prev of the last step, which stepped by −hg_prev
            if exact:
                dx, sign = hg_prev, -1.0  # Δx = −hg_prev, never formed
            else:
                dx, sign = torch.sub(xa, state["x_prev"], out=state["dx"]), 1.0
            Uu, Vu = U[:, :used], V[:, :used]
            hg = _apply(Uu, Vu, g, state["hg"]) if used else torch.neg(g, out=state["hg"])  # H g
            v = (_apply_transposed(Uu, Vu, dx, V[:, used], sign) if used
                 else torch.mul(dx, -sign, out=V[:, used]))  # Hᵀ Δx
            # vᵀg and vᵀg_prev in one pass over v: Δxᵀ H Δg = vᵀg − vᵀg_prev, and vᵀg again below
            dots = torch.bmm(v.unsqueeze(1), G.transpose(1, 2)).squeeze(1)  # (N, 2)
            vg = dots[:, now]
            denom = vg - dots[:, before]
            scale = torch.finfo(acc).eps * torch.linalg.vector_norm(v, dim=1) * state["g_norm"].sum(dim=1)
            keep = (denom.abs() > 1e-30 + scale) & torch.isfinite(denom)
            # u = (Δx − H Δg) / (Δxᵀ H Δg), with H Δg = H g − H g_prev, where H g_prev is hg_prev,
            # or −g_prev when the memory has just restarted (H = −I)
            factor = torch.where(keep, 1.0 / torch.where(keep, denom, 1.0), 0.0)[:, None]
            if used and exact:  # Δx − H Δg = −hg_prev − hg + hg_prev
                u = torch.mul(hg, -factor, out=U[:, used])
            elif used:
                u = torch.sub(hg_prev, hg, out=U[:, used]).add_(dx).mul_(factor)
            else:
                u = torch.add(G[:, before], hg, out=U[:, used]).neg_().add_(dx, alpha=sign).mul_(factor)
            if not base.host_reads_are_free(U.device) or not bool(keep.all()):
                u.masked_fill_(~keep[:, None], 0.0)  # no term, even where Δx − H Δg overflowed
                v.masked_fill_(~keep[:, None], 0.0)
            # H⁺ = H + u vᵀ, so H⁺ g = H g + u (vᵀg); u is zero where the update was skipped
            hg = torch.addcmul(hg, u, torch.where(keep, vg, 0.0)[:, None], out=hg_prev)
        if not exact:
            state["x_prev"].copy_(xa)
        return torch.sub(xa, hg, out=state[f"X{k % 2}"]), state

    def compact(self, state: State, rows: KeptRows) -> State:
        # every entry is a buffer of its own: move only the rows that change place (and none of
        # the scratch buffers, rewritten before they are read)
        n = rows.index.numel()
        return {name: v[:n] if name in SCRATCH else rows.move(v) for name, v in state.items()}
