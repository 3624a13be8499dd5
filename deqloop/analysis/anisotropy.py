"""The paper's anisotropy toy (its Appendix B.2; authors' ``analyses/anistropy.py``, repository
ashlab11/generalization): which stable parameters lie nearest to a random perturbation, with the
recall inside the residual branch or before the block.

A scalar caricature of one loop step: ``x`` the state-injection gain, ``y`` the sublayer's gain.
With internal recall the branch sees the injected state, ``z ← z + y·x·z = (1 + xy) z``; with
external recall the injection comes first, ``z ← (1 + y)·x·z``. The iteration is stable where the
factor is at most 1 in modulus:

    internal: |1 + xy| ≤ 1, i.e. −2 ≤ xy ≤ 0      external: |(1 + y) x| ≤ 1

The internal set is symmetric in x and y; the external one is not (x must shrink as 1/(1 + y)).
The experiment draws n points (x, y) ~ N(0, σ²) (the same standard normal draws, scaled, for every
σ), moves each to its nearest point of each stable set (itself when inside) and measures how
balanced the stable point's two gains are:

    log-ratio |log((|x| + ε) / (|y| + ε))|   (0: balanced)      balance (min(|x|,|y|) + ε) / (max + ε)   (1: balanced)

reporting per σ the mean with its standard error (σ̂/√n) and the median, for each set.

The nearest point is exact here: on a boundary hyperbola ``x·u = c`` (``u = y`` for internal,
``u = 1 + y`` for external) it is a real root of the quartic ``x⁴ − x₀x³ + c·u₀·x − c² = 0``; on
the internal set's boundary ``xy = 0`` it is the nearer axis. (The authors' script minimises the
distance along each branch numerically over x ∈ [−20, 20].)

    rows = anisotropy_table()                     # σ ∈ (0.1, 0.5, 1, 2, 4), n = 10,000, seed 0
    plot_anisotropy("anisotropy.png")
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deqloop.validate import choice, integer, number

__all__ = ["EPS", "SETS", "SIGMAS", "AnisotropyRow", "anisotropy_table", "balance", "draws", "log_ratio",
           "plot_anisotropy", "project", "stable"]

SETS = ("internal", "external")
SIGMAS = (0.1, 0.5, 1.0, 2.0, 4.0)  # the paper's
EPS = 1e-8
# per set: the band lo ≤ x·(y + shift) ≤ hi that is the stable set
_BANDS = {"internal": (-2.0, 0.0, 0.0), "external": (-1.0, 1.0, 1.0)}


def stable(x: np.ndarray | float, y: np.ndarray | float, recall: str) -> np.ndarray:
    """Whether the scalar loop with gains ``(x, y)`` is stable: ``|1 + xy| ≤ 1`` (internal) or
    ``|(1 + y) x| ≤ 1`` (external)."""
    choice("recall", recall, SETS)
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    return np.abs(1 + x * y) <= 1 if recall == "internal" else np.abs((1 + y) * x) <= 1


def _nearest_on_hyperbola(x0: np.ndarray, u0: np.ndarray, c: float) -> np.ndarray:
    """``(n, 2)`` nearest points ``(x, u)`` with ``x·u = c`` (c ≠ 0) to the points ``(x0, u0)``."""
    n = len(x0)
    # companion matrices of x⁴ − x0 x³ + 0 x² + c u0 x − c²: their eigenvalues are the roots
    comp = np.zeros((n, 4, 4))
    comp[:, 0, 0], comp[:, 0, 1], comp[:, 0, 2], comp[:, 0, 3] = x0, 0.0, -c * u0, c * c
    comp[:, 1, 0] = comp[:, 2, 1] = comp[:, 3, 2] = 1.0
    roots = np.linalg.eigvals(comp).real  # (n, 4); the minimiser is a real root, other candidates lie on the curve too
    roots = np.where(roots == 0, np.finfo(float).tiny, roots)
    d2 = (roots - x0[:, None]) ** 2 + (c / roots - u0[:, None]) ** 2
    best = roots[np.arange(n), d2.argmin(axis=1)]
    return np.stack([best, c / best], axis=1)


def project(points: np.ndarray, recall: str) -> tuple[np.ndarray, np.ndarray]:
    """The nearest stable point (``recall`` ``"internal"`` or ``"external"``) to each of ``points``
    ``(n, 2)`` (itself when stable) and the Euclidean distance to it: ``(n, 2)``, ``(n,)``."""
    choice("recall", recall, SETS)
    p = np.asarray(points, dtype=float).reshape(-1, 2)
    lo, hi, shift = _BANDS[recall]
    x0, u0 = p[:, 0], p[:, 1] + shift
    prod = x0 * u0
    out = p.copy()  # a stable point stays exactly where it is
    for bound, outside in ((lo, prod < lo), (hi, prod > hi)):
        if not outside.any():
            continue
        xs, us = x0[outside], u0[outside]
        if bound == 0:  # the axes: drop the smaller coordinate
            keep_x = np.abs(xs) >= np.abs(us)
            near = np.stack([np.where(keep_x, xs, 0.0), np.where(keep_x, 0.0, us)], axis=1)
        else:
            near = _nearest_on_hyperbola(xs, us, bound)
        out[outside] = near - np.array([0.0, shift])
    return out, np.linalg.norm(out - p, axis=1)


def log_ratio(points: np.ndarray, eps: float = EPS) -> np.ndarray:
    """``|log((|x| + ε) / (|y| + ε))|`` per point: 0 for balanced gains, large for lopsided ones."""
    p = np.abs(np.asarray(points, dtype=float).reshape(-1, 2))
    return np.abs(np.log((p[:, 0] + eps) / (p[:, 1] + eps)))


def balance(points: np.ndarray, eps: float = EPS) -> np.ndarray:
    """``(min(|x|, |y|) + ε) / (max(|x|, |y|) + ε)`` per point: 1 balanced, near 0 lopsided."""
    p = np.abs(np.asarray(points, dtype=float).reshape(-1, 2))
    return (p.min(axis=1) + eps) / (p.max(axis=1) + eps)


def _stats(v: np.ndarray) -> tuple[float, float, float]:
    """Mean, its standard error (sample s.d. / √n) and median."""
    se = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else math.nan
    return float(v.mean()), se, float(np.median(v))


@dataclass
class AnisotropyRow:
    """One σ of :func:`anisotropy_table`: per set (``"internal"``, ``"external"``), the
    ``(mean, standard error, median)`` of the log-ratio and of the balance of the stable points."""

    sigma: float
    n: int
    log_ratio: dict[str, tuple[float, float, float]]
    balance: dict[str, tuple[float, float, float]]


def draws(n: int, sigma: float, seed: int = 0) -> np.ndarray:
    """``(n, 2)`` points ``σ · N(0, I)`` from ``numpy.random.default_rng(seed)``."""
    return np.random.default_rng(seed).normal(0.0, number("sigma", sigma, low=0, low_open=True), size=(n, 2))


def anisotropy_table(sigmas: tuple[float, ...] = SIGMAS, n: int = 10_000, seed: int = 0) -> list[AnisotropyRow]:
    """The experiment of the module docstring, one row per σ in ``sigmas`` (the paper's by default)."""
    integer("n", n, 2)
    rows = []
    for sigma in sigmas:
        pts = draws(n, sigma, seed)
        near = {s: project(pts, s)[0] for s in SETS}
        rows.append(AnisotropyRow(float(sigma), n, {s: _stats(log_ratio(near[s])) for s in SETS},
                                  {s: _stats(balance(near[s])) for s in SETS}))
    return rows


def plot_anisotropy(path: str | Path, *, sigma: float = 1.0, shown: int = 60, rows: list[AnisotropyRow] | None = None,
                    extent: float = 3.0, seed: int = 0) -> Path:
    """Write a PNG: each stable set shaded in the (x, y) plane with ``shown`` draws at ``sigma`` and
    the segments to their nearest stable points, and the log-ratio's mean and median against σ for
    both sets (``rows`` from :func:`anisotropy_table`, computed when not given)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    rows = anisotropy_table(seed=seed) if rows is None else rows
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid = np.linspace(-extent, extent, 601)
    gx, gy = np.meshgrid(grid, grid)
    pts = draws(integer("shown", shown), sigma, seed)
    colors = {"internal": "tab:blue", "external": "tab:orange"}
    titles = {"internal": "internal recall: |1 + xy| ≤ 1", "external": "external recall: |(1 + y)x| ≤ 1"}
    fig, axes = plt.subplots(1, 3, figsize=(13.5, 4.4), dpi=120)
    for ax, s in zip(axes, SETS):
        ax.contourf(gx, gy, stable(gx, gy, s).astype(float), levels=[0.5, 1.5], colors=[colors[s]], alpha=0.25)
        ax.contour(gx, gy, stable(gx, gy, s).astype(float), levels=[0.5], colors=[colors[s]], linewidths=1)
        near, _ = project(pts, s)
        for (a, b), (c, d) in zip(pts, near):
            ax.plot([a, c], [b, d], color="gray", linewidth=0.6, alpha=0.7)
        ax.scatter(pts[:, 0], pts[:, 1], s=8, color="black", label=f"draws, σ = {sigma:g}", zorder=3)
        ax.scatter(near[:, 0], near[:, 1], s=10, color=colors[s], edgecolor="black", linewidth=0.3,
                   label="nearest stable point", zorder=4)
        ax.axhline(0, color="black", linewidth=0.5)
        ax.axvline(0, color="black", linewidth=0.5)
        ax.set_xlim(-extent, extent)
        ax.set_ylim(-extent, extent)
        ax.set_aspect("equal")
        ax.set_xlabel("x (state-injection gain)")
        ax.set_ylabel("y (sublayer gain)")
        ax.set_title(titles[s], fontsize=10)
        ax.legend(loc="lower left", fontsize=7, framealpha=0.9)
    ax = axes[2]
    sig = [r.sigma for r in rows]
    for s in SETS:
        mean = np.array([r.log_ratio[s][0] for r in rows])
        se = np.array([r.log_ratio[s][1] for r in rows])
        ax.errorbar(sig, mean, yerr=se, marker="o", color=colors[s], capsize=3, label=f"{s}: mean ± s.e.")
        ax.plot(sig, [r.log_ratio[s][2] for r in rows], marker="s", linestyle="--", color=colors[s],
                label=f"{s}: median")
    ax.set_xscale("log")
    ax.set_xlabel("σ of the draws")
    ax.set_ylabel("|log(|x| / |y|)| of the nearest stable point")
    ax.set_title(f"anisotropy of the nearest stable point (n = {rows[0].n:,})", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
