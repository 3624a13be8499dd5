"""What a run's metrics log says about its training: the numbers a sweep stores and a report reads."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from deqloop.analysis.weights import WEIGHT_KEYS
from deqloop.train.metrics import read_metrics


def median(values: list[float]) -> float | None:
    """The median of the finite values (None when there are none)."""
    values = [float(v) for v in values if v is not None and math.isfinite(v)]
    return statistics.median(values) if values else None


def mean(values: list[Any]) -> float | None:
    """The mean of the values that are not None (None when there are none)."""
    values = [float(v) for v in values if v is not None]
    return sum(values) / len(values) if values else None


def records(metrics_path: Path) -> list[dict[str, Any]]:
    """The records of a run's metrics log (:func:`deqloop.train.metrics.read_metrics`); [] without a log."""
    return list(read_metrics(metrics_path)) if Path(metrics_path).exists() else []


def training_numbers(metrics_path: Path) -> dict[str, Any]:
    """Gradient norms (over every applied step where the log has them, ``grad_norm_every_step``;
    else over the logged steps), skipped steps, the last loss/accuracy and, over the last quarter of the
    logged training steps, the mean loss and the solver's converged fractions (forward, and the
    implicit backward where it ran) from a run's metrics log."""
    grad, steps, skipped, every_step = [], [], 0, True
    for m in records(metrics_path):
        if "grad_norms" in m:  # every applied step's norm since the previous record
            grad.extend(float(v) for v in m["grad_norms"] if v is not None and math.isfinite(v))
        elif "grad_norm" in m and m["grad_norm"] is not None and math.isfinite(m["grad_norm"]):
            grad.append(float(m["grad_norm"]))  # an earlier log: the logged steps' norms only
            every_step = False
        if "loss" in m:
            steps.append(m)
        skipped = max(skipped, int(m.get("skipped_total", 0) or 0))
    tail = steps[len(steps) - max(1, len(steps) // 4):] if steps else []

    def tail_mean(key: str) -> float | None:
        return mean([float(m[key]) for m in tail if isinstance(m.get(key), (int, float)) and math.isfinite(m[key])])

    return {
        "grad_norm_median": median(grad),
        "grad_norm_max": max(grad) if grad else None,
        "grad_norm_last": grad[-1] if grad else None,
        "grad_norm_every_step": every_step and bool(grad),
        "final_loss": steps[-1]["loss"] if steps else None,
        "final_train_accuracy": steps[-1].get("accuracy") if steps else None,
        "late_loss": tail_mean("loss"),
        "late_train_accuracy": tail_mean("accuracy"),
        "late_forward_converged": tail_mean("converged"),
        "late_backward_converged": tail_mean("backward_converged"),
        "skipped_steps": skipped,
    }


# the stability monitor's fields a run summary keeps, per probe (see deqloop.train.monitor), the
# paper's weight diagnostics last
STABILITY_FIELDS = ("step", "rho", "rho_max", "forward_converged", "plain_converged", "backward_converged",
                    "init_distance", *WEIGHT_KEYS)
TRACE_POINTS = 100  # at most this many points per trace in a summary (evenly thinned, the last one kept)


def _round(value: Any) -> Any:
    """Four significant digits for a float (summaries stay small); other values unchanged."""
    return float(f"{value:.4g}") if isinstance(value, float) and math.isfinite(value) else value


def traces(metrics_path: Path) -> dict[str, Any]:
    """The stability monitor's records over training (``"stability"``: ``{"fields": STABILITY_FIELDS,
    "rows": [[step, rho, ...], ...]}``, empty rows when the run was trained without the monitor) and
    the training loss (``"loss"``: ``[[step, loss], ...]`` of the logged training steps) from a run's
    metrics log; torn lines are skipped, and a value missing from a record is None. A trace longer
    than :data:`TRACE_POINTS` keeps every k-th point (and the last), k the smallest that fits."""
    rows, loss = [], []
    for m in records(metrics_path):
        if m.get("kind") == "stability":
            rows.append([_round(m.get(k)) for k in STABILITY_FIELDS])
        elif "loss" in m and "step" in m and m.get("kind", "train") == "train":
            loss.append([m["step"], _round(m["loss"])])
    return {"stability": {"fields": list(STABILITY_FIELDS), "rows": _thin(rows)}, "loss": _thin(loss)}


def _thin(points: list) -> list:
    """Every k-th point, k = ceil(len / TRACE_POINTS), with the last point in place of the last kept
    one (or after it, while there is room) when the stride skipped it."""
    if len(points) <= TRACE_POINTS:
        return list(points)
    k = -(-len(points) // TRACE_POINTS)
    kept = points[::k]
    if (len(kept) - 1) * k != len(points) - 1:
        kept = kept[:-1] + points[-1:] if len(kept) == TRACE_POINTS else kept + points[-1:]
    return kept
