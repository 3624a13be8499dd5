"""Stability over training in the report: when each configuration's ρ(J) crossed 1 and its fixed
points stopped being reachable, and the monitor's traces on one figure per task.

Reads the ``traces`` of run summaries (:func:`experiments.runlog.traces`, written when the run was
trained with ``stability_every``); a configuration without them is left out. ``configs`` are the
report's per-configuration groups (anything with ``recall``, ``norm``, ``regime`` and ``runs``).
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

NEVER = math.inf

# (trace field, panel title) of the figure; "loss" is the training loss
PANELS = (("rho", "ρ(∂f/∂z) at the fixed point (probe median)"),
          ("plain_converged", "reachable: plain iteration converged"),
          ("backward_converged", "implicit backward solve converged"),
          ("loss", "training loss"))


def stability_rows(run: dict[str, Any]) -> list[dict[str, Any]]:
    """The monitor's records of one run summary as dicts (``[]`` when it has none)."""
    stab = (run.get("traces") or {}).get("stability") or {}
    fields = stab.get("fields") or []
    return [dict(zip(fields, row)) for row in stab.get("rows") or []]


def first_fraction(run: dict[str, Any], field: str, test) -> float:
    """The fraction of training (probe step / the run's steps) at the first probe whose ``field``
    satisfies ``test``; :data:`NEVER` when no probe does."""
    steps = run["train"].get("steps") or run["train_config"]["steps"]
    for row in stability_rows(run):
        value = row.get(field)
        if value is not None and test(value):
            return row["step"] / steps
    return NEVER


def crossings(run: dict[str, Any]) -> dict[str, float | None]:
    """For one run with monitor traces: ρ at the first and the last probe, the fraction of training
    at which the median ρ first exceeded 1 (a ρ above 1 at the first probe counts as crossing
    there), the fraction at which the reachable fraction (plain iteration converged) first fell
    below 50 % (below it from the first probe counts there), and the reachable fraction and backward
    convergence at the last probe. ``{}`` without traces."""
    rows = stability_rows(run)
    if not rows:
        return {}
    return {
        "rho_first": rows[0].get("rho"), "rho_last": rows[-1].get("rho"),
        "rho_above_1": first_fraction(run, "rho", lambda v: v > 1.0),
        "unreachable": first_fraction(run, "plain_converged", lambda v: v < 0.5),
        "reachable_last": rows[-1].get("plain_converged"), "backward_last": rows[-1].get("backward_converged"),
    }


def _median(values: list[float | None]) -> float | None:
    """The median (infinities, i.e. "never", included); None when there are no values."""
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _when(v: float | None) -> str:
    if v is None:
        return "—"
    return "never" if v == NEVER else f"{v:.2f}"


def _num(v: float | None, digits: int = 2) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def when_table(configs: list[Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the "when" table: per configuration with traces, medians over its seeds."""
    header = ["recall", "norm", "regime", "seeds", "ρ first", "ρ > 1 at", "ρ last", "reachable < 50 % at",
              "reachable last", "bwd last"]
    rows = []
    for c in configs:
        found = [x for x in (crossings(r) for r in c.runs) if x]
        if not found:
            continue

        def med(key: str, found: list[dict[str, Any]] = found) -> float | None:
            return _median([x[key] for x in found])

        rows.append([c.recall, c.norm, c.regime, str(len(found)), _num(med("rho_first"), 3), _when(med("rho_above_1")),
                     _num(med("rho_last"), 3), _when(med("unreachable")), _num(med("reachable_last")),
                     _num(med("backward_last"))])
    return header, rows


def _trace(run: dict[str, Any], field: str) -> tuple[list[float], list[float]]:
    """(fractions of training, values) of one field of a run's traces, Nones dropped."""
    steps = run["train"].get("steps") or run["train_config"]["steps"]
    if field == "loss":
        points = (run.get("traces") or {}).get("loss") or []
    else:
        points = [(row["step"], row.get(field)) for row in stability_rows(run)]
    points = [(s / steps, v) for s, v in points if v is not None and math.isfinite(v)]
    return ([p[0] for p in points], [p[1] for p in points]) if points else ([], [])


def plot_traces(configs: list[Any], task: str, path: Path) -> Path | None:
    """One figure for ``task``: a row of :data:`PANELS` per training regime (named on the left), one
    line per recall × norm (colour: norm, style: recall; its first seed's run), over the fraction of
    training. None when no run has traces."""
    with_traces = [c for c in configs if any(stability_rows(r) for r in c.runs)]
    if not with_traces:
        return None
    from matplotlib.figure import Figure

    regimes = list(dict.fromkeys(c.regime for c in with_traces))
    norms = sorted({c.norm for c in with_traces})
    recalls = sorted({c.recall for c in with_traces})
    colors = {n: f"C{i}" for i, n in enumerate(norms)}
    styles = {r: s for r, s in zip(recalls, ("-", "--", ":", "-."))}
    fig = Figure(figsize=(14, 2.8 * len(regimes) + 0.6), layout="constrained")
    axes = fig.subplots(len(regimes), len(PANELS), squeeze=False)
    for i, (row, regime) in enumerate(zip(axes, regimes)):
        for c in (c for c in with_traces if c.regime == regime):
            run = next(r for r in c.runs if stability_rows(r))
            for ax, (field, _) in zip(row, PANELS):
                xs, ys = _trace(run, field)
                if xs:
                    ax.plot(xs, ys, color=colors[c.norm], ls=styles[c.recall], marker="." if field != "loss" else None,
                            ms=3, lw=1, label=f"{c.recall}/{c.norm}")
        row[0].set_ylabel(regime, fontsize=9, fontweight="bold")
        for ax, (field, title) in zip(row, PANELS):
            if i == 0:
                ax.set_title(title, fontsize=9)
            ax.set_xlabel("fraction of training", fontsize=8)
            ax.tick_params(labelsize=7)
            if field == "rho":
                ax.axhline(1.0, color="grey", lw=0.8, ls="--")
            elif field != "loss":
                ax.set_ylim(-0.05, 1.05)
        if row[0].lines:
            row[0].legend(fontsize=6, ncol=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
