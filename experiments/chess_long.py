"""The report's section on the long chess run: the cpu chess cell trained for 3,000 steps (45 min) on the
whole ≤ 1600 Lichess file, beside the model-free baselines on the very same puzzles.

The runs come from ``python -m experiments.sweep --preset chess`` (summaries under
``results/chess_long``). The section is one row per seed and a mean row, the baselines under both
metrics, the model's best hard accuracy as a multiple of the random-legal baseline and against
the greedy one, and the iterations plot with the baselines drawn as horizontal lines.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from experiments import figures
from experiments.configs import _m
from experiments.markdown import table
from experiments.seed_table import HEADER, context, best, draw_seeds, finish, rows

METRIC = "correct"  # the paper's top-2 squares; the model's accuracies are this metric


def baseline(run: dict[str, Any], split: str, name: str, metric: str = METRIC) -> float | None:
    """A baseline's accuracy on ``split`` of ``run``'s evaluation examples (None when not stored)."""
    return ((run.get("eval") or {}).get("baselines") or {}).get(split, {}).get(f"{name}/{metric}")


def verdict(runs: list[dict[str, Any]], target: float = 3.0) -> str:
    """The mean best hard accuracy against the baselines: its multiple of the random-legal
    baseline (against ``target``) and whether it beats the greedy one."""
    model = _m([best(r, "hard")[0] for r in runs])
    random = _m([baseline(r, "hard", "random") for r in runs])
    greedy = _m([baseline(r, "hard", "greedy") for r in runs])
    if model is None or not random or greedy is None:
        return "No baselines stored with these runs."
    ratio = model / random
    return (f"Hard (mean best over seeds): {100 * model:.1f} % = {ratio:.1f}× the random-legal baseline "
            f"({100 * random:.1f} %; target ≥ {target:g}×: {'met' if ratio >= target else 'not met'}); "
            f"the greedy baseline scores {100 * greedy:.1f} %: the model "
            f"{'beats' if model > greedy else 'does not beat'} it.")


def baselines_text(run: dict[str, Any]) -> str:
    """The baselines of ``run``'s splits under both metrics."""
    parts = []
    for split, scores in ((run.get("eval") or {}).get("baselines") or {}).items():
        if scores:
            cells = [f"{name} {100 * scores[f'{name}/correct']:.1f} / {100 * scores[f'{name}/correct_legal']:.1f}"
                     for name in ("random", "greedy") if f"{name}/correct" in scores]
            parts.append(f"{split}: {', '.join(cells)}")
    return "; ".join(parts)


def plot(runs: list[dict[str, Any]], path: Path) -> Path:
    """Accuracy against test-time iterations per seed (val and hard), with the hard split's baselines."""
    plt = figures.pyplot()

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    draw_seeds(ax, runs, "val (≤ 1600)", "hard")
    for name, style in (("random", "--"), ("greedy", "-.")):
        value = _m([baseline(r, "hard", name) for r in runs])
        if value is not None:
            ax.axhline(100 * value, color="grey", ls=style, lw=1, label=f"{name} move, hard")
    finish(ax, "test-time iterations", "puzzles solved (%, top-2 squares)", "chess, long CPU run")
    return figures.save(fig, path)


def section(runs: list[dict[str, Any]], plots: Path, out: Path) -> list[str]:
    """The section's markdown lines (none without runs)."""
    if not runs:
        return []
    cfg, opts, last, n, commands = context(runs)
    figure = plot(runs, plots / "chess_long.png")
    return [
        "", "## chess: the long CPU run", "",
        f"{cfg['recall']} recall, {cfg['norm']} norm, width {cfg['width']}, {cfg['heads']} heads, "
        f"{cfg.get('attention')} attention, progressive loss (alpha {cfg.get('alpha')}) through {cfg['max_iter']} "
        f"iterations, {cfg['steps']} steps of batch {cfg['batch_size']} drawn from the puzzles rated ≤ "
        f"{opts.get('train_max_rating', 1600)} of {', '.join(Path(f).name for f in opts.get('data') or ())}; "
        f"tested on {n.get('hard', '?')} puzzles rated {opts.get('hard_min_rating', 1601)}–"
        f"{opts.get('hard_max_rating', 2000)} (*hard*) and {n.get('val', '?')} held-out ≤ "
        f"{opts.get('train_max_rating', 1600)} (*val*). Runs: {commands}. Accuracy "
        "is the paper's metric (the two top-scoring squares are the move's).", "",
        table([h.format(last=last) for h in HEADER], rows(runs)), "",
        "Baselines on the same puzzles, no model (accuracy %, `correct` / `correct_legal`; *random* a uniformly "
        "random legal move, *greedy* a mate in one, else the most valuable capture, else random; exact "
        "expectations; a baseline marks the squares of a legal move, so its two metrics agree): "
        f"{baselines_text(runs[0])}.", "",
        verdict(runs), "",
        f"![chess, long run]({os.path.relpath(figure, out.parent)})",
    ]
