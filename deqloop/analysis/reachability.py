"""Reachability of the loop's fixed points, and how they sit relative to each other.

* :func:`solve_from` — solve ``z = f(z; e)`` from one kind of initial state and summarize the
  solve per example (converged, iterations, residual, empirical contraction factor, trace).
* :func:`agreement` — whether two solves (from different initial states) reached the same
  fixed point.
* :func:`count_distinct` and :func:`relative_spread` — how many distinct fixed points a batch of
  inputs reaches, and how far apart they are relative to their size.

Distances are relative: ``‖a − b‖ ≤ rtol · max(‖a‖, ‖b‖)`` (2-norm over an example's entries)
counts as the same point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from deqloop.validate import choice

from deqloop.model import INITS
from deqloop.solvers import BatchedMap, Solution, solve

__all__ = ["Reachability", "agreement", "contraction_factor", "count_distinct", "relative_spread", "solve_from"]


@dataclass
class Reachability:
    """One solve of the whole batch from one kind of initial state.

    Attributes:
        init: ``"embed"``, ``"zeros"`` or ``"noise"``.
        converged: ``(B,)`` bool, within the iteration budget.
        iterations: ``(B,)`` int64 evaluations of f each example needed.
        residual: ``(B,)`` float64 final relative residual ``‖f(z) − z‖ / ‖f(z)‖``.
        contraction: ``(B,)`` float64 empirical contraction factor: geometric-mean decay of the
            relative residual per iteration over the solve (NaN with fewer than 2 iterations).
        trace: ``(T, B)`` float64 relative residual per iteration.
    """

    init: str
    converged: Tensor
    iterations: Tensor
    residual: Tensor
    contraction: Tensor
    trace: Tensor

    @property
    def converged_fraction(self) -> float:
        return float(self.converged.double().mean())

    def to_dict(self) -> dict[str, Any]:
        return {
            "init": self.init,
            "converged": self.converged.tolist(),
            "iterations": self.iterations.tolist(),
            "residual": _floats(self.residual),
            "contraction": _floats(self.contraction),
            "trace": [_floats(row) for row in self.trace],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Reachability:
        return cls(
            init=d["init"],
            converged=torch.tensor(d["converged"], dtype=torch.bool),
            iterations=torch.tensor(d["iterations"], dtype=torch.long),
            residual=_tensor(d["residual"]),
            contraction=_tensor(d["contraction"]),
            trace=_tensor(d["trace"]) if d["trace"] else torch.zeros(0, len(d["converged"]), dtype=torch.float64),
        )


def _floats(t: Tensor) -> list[float | None]:
    """Plain floats for JSON; NaN and ±inf become None."""
    return [v if math.isfinite(v) else None for v in t.double().reshape(-1).tolist()]


def _tensor(values: list) -> Tensor:
    def conv(v):
        if isinstance(v, list):
            return [conv(u) for u in v]
        return float("nan") if v is None else float(v)

    return torch.tensor(conv(values), dtype=torch.float64)


def contraction_factor(trace: Tensor, iterations: Tensor) -> Tensor:
    """``(r_T / r_1)^(1/(T−1))`` per example over its own ``T`` iterations of ``trace`` ``(T, B)``."""
    out = torch.full((trace.shape[1],), float("nan"), dtype=torch.float64)
    for b in range(trace.shape[1]):
        t = int(iterations[b])
        if t < 2:
            continue
        r0, r1 = float(trace[0, b]), float(trace[t - 1, b])
        if r0 > 0 and r1 > 0 and math.isfinite(r0) and math.isfinite(r1):
            out[b] = (r1 / r0) ** (1.0 / (t - 1))
    return out


def initial_state(model, e: Tensor, init: str, *, scale: float, generator: torch.Generator) -> Tensor:
    """z₀ for ``init``; ``"noise"`` and ``"mixed"`` draw from ``generator`` (reproducible, global RNG
    untouched)."""
    choice("init", init, INITS)
    if init == "noise":
        noise = torch.randn(e.shape, generator=generator, dtype=torch.float64)
        return (scale * noise).to(dtype=e.dtype, device=e.device)
    if init == "mixed":
        noise = torch.randn(e.shape, generator=generator, dtype=torch.float64)
        keep = torch.rand(e.shape, generator=generator, dtype=torch.float64) < 0.5
        return (noise * keep).to(dtype=e.dtype, device=e.device)
    return model.initial_state(e, init)


def solve_from(
    model,
    e: Tensor,
    init: str,
    *,
    solver: str,
    rtol: float,
    atol: float,
    max_iter: int,
    scale: float,
    generator: torch.Generator,
    solver_options: dict[str, Any] | None = None,
) -> tuple[Reachability, Solution]:
    """Solve every example of ``e`` ``(B, *grid, D)`` from ``init``; returns the summary and the solution."""
    z0 = initial_state(model, e, init, scale=scale, generator=generator)
    with torch.no_grad():
        sol = solve(BatchedMap(model.step, e), z0, solver, rtol=rtol, atol=atol, max_iter=max_iter,
                    trace=True, **(solver_options or {}))
    trace = sol.trace.double().cpu()
    reach = Reachability(
        init=init,
        converged=sol.converged.cpu(),
        iterations=sol.iterations.cpu(),
        residual=sol.residual.double().cpu(),
        contraction=contraction_factor(trace, sol.iterations.cpu()),
        trace=trace,
    )
    return reach, sol


def _relative_distances(a: Tensor, b: Tensor) -> Tensor:
    """``‖a_i − b_j‖ / max(‖a_i‖, ‖b_j‖)`` for flattened rows, ``(len(a), len(b))``."""
    a, b = a.reshape(a.shape[0], -1).double(), b.reshape(b.shape[0], -1).double()
    dist = torch.cdist(a, b)
    scale = torch.maximum(a.norm(dim=1)[:, None], b.norm(dim=1)[None, :])
    return torch.where(scale > 0, dist / scale.clamp_min(torch.finfo(torch.float64).tiny), torch.zeros_like(dist))


def agreement(za: Tensor, zb: Tensor, ok_a: Tensor, ok_b: Tensor, rtol: float) -> tuple[float, int]:
    """Fraction of the examples converged in both solves whose fixed points agree within ``rtol``.

    Returns ``(fraction, count)``; the fraction is NaN when no example converged in both.
    """
    both = (ok_a & ok_b).cpu()
    n = int(both.sum())
    if n == 0:
        return float("nan"), 0
    a, b = za.cpu()[both].reshape(n, -1).double(), zb.cpu()[both].reshape(n, -1).double()
    rel = (a - b).norm(dim=1) / torch.maximum(a.norm(dim=1), b.norm(dim=1)).clamp_min(torch.finfo(torch.float64).tiny)
    return float((rel <= rtol).double().mean()), n


def count_distinct(z: Tensor, rtol: float) -> int:
    """Number of clusters of the rows of ``z`` ``(B, ...)``: greedy leader clustering.

    Each point joins the first cluster whose leader is within relative distance ``rtol``, else it
    leads a new one. Points a few ``rtol`` apart may land either way; distinct fixed points of a
    trained model are usually far apart relative to the solver's tolerance.
    """
    if z.shape[0] == 0:
        return 0
    rel = _relative_distances(z.cpu(), z.cpu())
    leaders: list[int] = []
    for i in range(z.shape[0]):
        if not any(float(rel[i, j]) <= rtol for j in leaders):
            leaders.append(i)
    return len(leaders)


def relative_spread(z: Tensor) -> float:
    """RMS distance of the rows of ``z`` from their mean, over the RMS norm of the rows.

    0 when every example has the same fixed point; close to 1 when the fixed points share no
    common component. NaN for an empty batch.
    """
    if z.shape[0] == 0:
        return float("nan")
    flat = z.reshape(z.shape[0], -1).double().cpu()
    centered = flat - flat.mean(dim=0, keepdim=True)
    denom = flat.pow(2).sum(dim=1).mean().sqrt()
    if float(denom) == 0.0:
        return 0.0
    return float(centered.pow(2).sum(dim=1).mean().sqrt() / denom)
