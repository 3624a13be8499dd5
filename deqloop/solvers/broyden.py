"""Limited-memory ("good") Broyden's method on g(z) = f(z) − z.

The inverse Jacobian of g is approximated as H = −I + Σ u_i v_iᵀ with at most ``m`` rank-one
terms, so memory is O(m·B·D) regardless of ``max_iter``. The first step, with H = −I, is a plain
iteration. Once ``m`` updates are held the memory *restarts*: H = −I again, and the next update is
taken against it. (Overwriting only the oldest term instead leaves the later terms, each computed
against an H that contained it, inconsistent: on a transformer-block map in float32 that made a
slowly contracting sample stall and then blow up, where restarting converges in fewer steps.)
Updates whose denominator vᵀΔg is tiny are skipped. All products run in float32 (float64 for
float64 states).

A step reads the memory four times, not six: after the update H⁺ = H + u vᵀ the step H⁺g is
H g + u (vᵀg), and H Δg = H g − H g_prev reuses H g_prev, kept from the previous step (it is H⁺g
of that step). Only H g and Hᵀ Δx go through the memory, and only through the slots filled so far.
"""

from __future__ import annotations

import torch

from deqloop.solvers.base import KeptRows, Solver, State
from deqloop.validate import integer


def _apply(U: torch.Tensor, V: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """H y = −y + Σ u_i (v_i · y). U, V: (N, m, D); y: (N, D). Both products take the
    row-times-matrix layout ((N, 1, D) @ (N, D, m), then (N, 1, m) @ (N, m, D)), which reads
    each ring once at memory speed."""
    c = torch.bmm(y.unsqueeze(1), V.transpose(1, 2))  # (N, 1, m): v_i · y
    return torch.baddbmm(y.unsqueeze(1), c, U, beta=-1).squeeze(1)  # −y + c U in one pass


def _apply_transposed(U: torch.Tensor, V: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Hᵀ y = −y + Σ v_i (u_i · y)."""
    c = torch.bmm(y.unsqueeze(1), U.transpose(1, 2))  # (N, 1, m): u_i · y
    return torch.baddbmm(y.unsqueeze(1), c, V, beta=-1).squeeze(1)


class Broyden(Solver):
    """Limited-memory Broyden. ``m`` rank-one updates kept."""

    name = "broyden"

    def __init__(self, m: int = 12):
        self.m = integer("m", m)

    def init(self, x: torch.Tensor, fx: torch.Tensor, acc_dtype: torch.dtype) -> State:
        # Uninitialised: slot j is zeroed at the step that may write it, and a step reads only the
        # slots zeroed since the last restart; the last point is written at step 1.
        n, d = x.shape
        e = lambda *s: torch.empty(*s, dtype=acc_dtype, device=x.device)  # noqa: E731
        return {
            "U": e(n, self.m, d),
            "V": e(n, self.m, d),
            "x_prev": e(n, d),
            "g_prev": e(n, d),
            "hg_prev": e(n, d),  # H g_prev with the H that made the previous step
            "updates": torch.zeros(n, dtype=torch.long, device=x.device),
        }

    def step(self, state: State, x: torch.Tensor, fx: torch.Tensor, k: int) -> tuple[torch.Tensor, State]:
        U, V = state["U"], state["V"]
        acc = U.dtype
        xa = x.to(acc)
        g = fx.to(acc) - xa
        if k == 1:
            hg = -g  # H = −I
        else:
            # step k takes update number k − 2 since the start; the memory restarts every m of them
            used = (k - 2) % self.m  # the slots filled since the last restart (at most one update a step)
            if used == 0:
                state["updates"].zero_()
                state["hg_prev"] = -state["g_prev"]  # H g_prev with H = −I
            U[:, used].zero_()  # the slot this step may write, zero (no term of H) until it is
            V[:, used].zero_()
            Uu, Vu = U[:, :used], V[:, :used]
            hg = _apply(Uu, Vu, g) if used else -g  # H g with the current memory
            dx = xa - state["x_prev"]
            dg = g - state["g_prev"]
            h_dg = hg - state["hg_prev"]  # H Δg
            v = _apply_transposed(Uu, Vu, dx) if used else -dx  # Hᵀ Δx
            denom = (v * dg).sum(dim=1)  # Δxᵀ H Δg
            tiny = denom.abs() <= 1e-30 + torch.finfo(acc).eps * v.norm(dim=1) * dg.norm(dim=1)
            safe = torch.where(tiny, torch.ones_like(denom), denom)
            u = torch.sub(dx, h_dg).div_(safe[:, None])
            keep = (~tiny & torch.isfinite(denom))[:, None]
            # the slot of each row (its updates so far), in the (N·m, D) view; a skipped update
            # leaves it zero
            n, m, d = U.shape
            flat = torch.arange(n, device=U.device) * m + state["updates"]
            U.view(n * m, d).index_copy_(0, flat, torch.where(keep, u, 0.0))
            V.view(n * m, d).index_copy_(0, flat, torch.where(keep, v, 0.0))
            state["updates"] = state["updates"] + keep.squeeze(1).long()
            # H⁺ = H + u vᵀ, so H⁺ g = H g + u (vᵀg) for rows that took the update (u is finite: ·0
            # adds nothing)
            hg = torch.addcmul(hg, u, torch.where(keep, (v * g).sum(dim=1, keepdim=True), 0.0))
        state["x_prev"], state["g_prev"], state["hg_prev"] = xa, g, hg
        return xa - hg, state

    def compact(self, state: State, rows: KeptRows) -> State:
        # the memories are buffers of their own: move only the rows that change place; the last point
        # may be the loop's own tensor, so it and the other (N, D) entries are copied
        return {name: rows.move(v) if name in ("U", "V") else rows.take(v) for name, v in state.items()}
