"""What a run's metrics log says about its training: the numbers a sweep stores and a report reads.

Standard library only, so that reading results does not need torch.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any


def median(values: list[float]) -> float | None:
    """The median of the finite values (None when there are none)."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.median(values) if values else None


def mean(values: list[Any]) -> float | None:
    """The mean of the values that are not None (None when there are none)."""
    values = [float(v) for v in values if v is not None]
    return sum(values) / len(values) if values else None


def training_numbers(metrics_path: Path) -> dict[str, Any]:
    """Gradient norms, skipped steps, the last loss/accuracy and, over the last quarter of the
    logged training steps, the mean loss and the solver's converged fractions (forward, and the
    implicit backward where it ran) from a run's metrics log."""
    grad, steps, skipped = [], [], 0
    if metrics_path.exists():
        for line in metrics_path.read_text().splitlines():
            try:
                m = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "grad_norm" in m and m["grad_norm"] is not None and math.isfinite(m["grad_norm"]):
                grad.append(float(m["grad_norm"]))
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
        "final_loss": steps[-1]["loss"] if steps else None,
        "final_train_accuracy": steps[-1].get("accuracy") if steps else None,
        "late_loss": tail_mean("loss"),
        "late_train_accuracy": tail_mean("accuracy"),
        "late_forward_converged": tail_mean("converged"),
        "late_backward_converged": tail_mean("backward_converged"),
        "skipped_steps": skipped,
    }
