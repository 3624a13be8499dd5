"""Markdown formatting of the report: percentages, numbers, tables, the order of tasks."""

from __future__ import annotations

import math

from experiments.presets import TASK_ORDER


def _task_key(task: str) -> tuple[int, str]:
    """Tasks in the presets' order, any other after them by name."""
    return (TASK_ORDER.index(task) if task in TASK_ORDER else len(TASK_ORDER), task)


def pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f}"


def pct_se(mean: float | None, se: float | None) -> str:
    """A mean and its standard error in %: ``90.0 ± 5.8``; ``± —`` where there is no standard error."""
    return f"{pct(mean)} ± {pct(se)}"


def num(v: float | None, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{v:.{digits}g}"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)
