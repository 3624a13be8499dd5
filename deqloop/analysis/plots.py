"""Figures of a :class:`~deqloop.analysis.StabilityReport`, written as PNG files.

    paths = plot_report(report, "out/")    # residual_traces.png, eigenvalues.png, spectral_radius.png

Uses matplotlib's object-oriented API (no pyplot), so it neither needs a display nor changes the
caller's backend.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from deqloop.analysis.report import StabilityReport

__all__ = ["plot_report"]


def plot_report(report: StabilityReport, out_dir: str | Path, *, prefix: str = "", dpi: int = 120) -> list[Path]:
    """Write the report's figures into ``out_dir`` (created if missing); returns their paths.

    * ``residual_traces.png`` — relative residual per iteration, one panel per initial state,
      one line per example.
    * ``eigenvalues.png`` — every example's leading eigenvalues of J in the complex plane with the
      unit circle (only when the spectrum was computed).
    * ``spectral_radius.png`` — ρ(J) per example against 1 and 1 ± δ (only with the spectrum).
    """
    from matplotlib.figure import Figure

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []

    inits = list(report.reachability)
    fig = Figure(figsize=(4.2 * len(inits), 3.4), layout="constrained")
    axes = fig.subplots(1, len(inits), squeeze=False)[0]
    rtol = report.options.get("rtol") or report.model.get("rtol")
    for ax, init in zip(axes, inits):
        r = report.reachability[init]
        trace = r.trace.numpy()
        for b in range(trace.shape[1]):
            t = int(r.iterations[b])
            color = "tab:blue" if bool(r.converged[b]) else "tab:red"
            ax.semilogy(np.arange(1, t + 1), np.clip(trace[:t, b], 1e-300, None), color=color, alpha=0.35, lw=0.8)
        if rtol:
            ax.axhline(rtol, color="k", ls="--", lw=0.8, label=f"rtol {rtol:g}")
            ax.legend(loc="upper right", fontsize=8)
        ax.set_title(f"z₀ = {init}: {r.converged_fraction:.0%} converged", fontsize=10)
        ax.set_xlabel("iteration")
    axes[0].set_ylabel("‖f(z) − z‖ / ‖f(z)‖")
    paths.append(_save(fig, out / f"{prefix}residual_traces.png", dpi))

    if report.eigenvalues is not None:
        ev = report.eigenvalues.numpy()
        fig = Figure(figsize=(4.6, 4.4), layout="constrained")
        ax = fig.subplots()
        theta = np.linspace(0, 2 * math.pi, 400)
        ax.plot(np.cos(theta), np.sin(theta), color="k", lw=0.8, label="unit circle")
        rest = ev[:, 1:].ravel()
        rest = rest[np.isfinite(rest)]
        lead = ev[:, 0][np.isfinite(ev[:, 0])]
        ax.scatter(rest.real, rest.imag, s=8, alpha=0.4, color="tab:gray", label="leading eigenvalues")
        ax.scatter(lead.real, lead.imag, s=14, alpha=0.8, color="tab:red", label="largest |λ|")
        lim = max(1.1, float(np.abs(ev[np.isfinite(ev)]).max(initial=0)) * 1.1)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_xlabel("Re λ")
        ax.set_ylabel("Im λ")
        ax.set_title("eigenvalues of ∂f/∂z at z*", fontsize=10)
        ax.legend(loc="upper right", fontsize=7)
        paths.append(_save(fig, out / f"{prefix}eigenvalues.png", dpi))

    if report.spectral_radius is not None:
        rho = report.spectral_radius.numpy()
        delta = float(report.options.get("delta", 0.05))
        fig = Figure(figsize=(6, 3.4), layout="constrained")
        ax = fig.subplots()
        idx = np.arange(len(rho))
        ok = report.eig_converged.numpy() if report.eig_converged is not None else np.ones(len(rho), bool)
        ax.scatter(idx[ok], rho[ok], s=14, color="tab:blue", label="eigensolver converged")
        if (~ok).any():
            ax.scatter(idx[~ok], rho[~ok], s=14, color="tab:red", marker="x", label="eigensolver not converged")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.axhspan(1 - delta, 1 + delta, color="tab:orange", alpha=0.15, label=f"critical (1 ± {delta:g})")
        ax.set_xlabel("example")
        ax.set_ylabel("ρ(∂f/∂z)")
        ax.set_title("spectral radius at the fixed point", fontsize=10)
        ax.legend(loc="best", fontsize=8)
        paths.append(_save(fig, out / f"{prefix}spectral_radius.png", dpi))
    return paths


def _save(fig, path: Path, dpi: int) -> Path:
    from deqloop.files import save_figure

    return save_figure(fig, path, dpi=dpi)
