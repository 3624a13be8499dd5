"""Stability of the loop's fixed points: reachability, input-dependence and geometry.

    from deqloop.analysis import analyze
    report = analyze(model, x)          # StabilityReport
    report.spectral_radius              # (B,) ρ(∂f/∂z) at each example's fixed point
    report.converged_fraction           # float
    report.input_sensitivity            # (B,) ‖∂z*/∂e · v‖ (RMS over random unit v)
    report.distinct_fixed_points        # int, over the batch
    report.regime                       # ["contractive" | "critical" | "expansive", ...]
    print(report.summary()); report.to_json()

The building blocks are public too: :class:`LoopJacobian` (batched JVPs/VJPs of the loop map),
:func:`leading_eigenvalues` (Krylov–Schur, warm-startable: the training monitor's ρ estimator too),
:func:`backward_stats` (the implicit backward solve at the fixed points), :func:`sigma_max`, :func:`resolvent_norm`,
:func:`input_sensitivity`, :func:`local_smoothness`, :func:`weight_diagnostics` (the paper's
ρ(W_x), ‖W_x‖₂, ... of the block's weights), and :func:`plot_report` for figures.
:func:`anisotropy_table` and :func:`plot_anisotropy` are the paper's scalar toy of the stable
gains with internal and external recall (:mod:`deqloop.analysis.anisotropy`).
"""

from __future__ import annotations

from deqloop.analysis.analyze import MEASURES, AnalysisOptions, analyze
from deqloop.analysis.anisotropy import anisotropy_table, plot_anisotropy
from deqloop.analysis.backward import backward_stats
from deqloop.analysis.jacobian import EIG_METHODS, LoopJacobian, leading_eigenvalues
from deqloop.analysis.norms import resolvent_norm, sigma_max
from deqloop.analysis.report import REGIMES, StabilityReport
from deqloop.analysis.sensitivity import input_sensitivity, local_smoothness
from deqloop.analysis.weights import WEIGHT_KEYS, weight_diagnostics

__all__ = [
    "EIG_METHODS",
    "MEASURES",
    "REGIMES",
    "AnalysisOptions",
    "LoopJacobian",
    "StabilityReport",
    "WEIGHT_KEYS",
    "analyze",
    "anisotropy_table",
    "backward_stats",
    "input_sensitivity",
    "leading_eigenvalues",
    "local_smoothness",
    "plot_anisotropy",
    "plot_report",
    "resolvent_norm",
    "sigma_max",
    "weight_diagnostics",
]


def plot_report(*args, **kwargs):
    """See :func:`deqloop.analysis.plots.plot_report` (imported on use: matplotlib is heavy)."""
    from deqloop.analysis.plots import plot_report as _plot

    return _plot(*args, **kwargs)
