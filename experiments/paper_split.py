"""The report's section on the paper's prefix-sums split: train on ≤ 32 bits, test on 512.

The runs come from ``python -m experiments.sweep --preset paper`` (summaries under
``results/paper_split``, apart from the cpu grid because their run names are the same). The
section is one row per seed (a seed that failed stays in the table) and a mean row, then the
iterations plot: accuracy against test-time iterations at the training lengths and at 512 bits.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from experiments import figures
from experiments.markdown import table
from experiments.seed_table import HEADER, context, draw_seeds, finish, rows

def plot(runs: list[dict[str, Any]], path: Path) -> Path:
    """Accuracy against test-time iterations, one line per seed, at the training lengths and at the hard length."""
    plt = figures.pyplot()

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    hard = runs[0]["train_config"]["task_options"]["hard_length"]
    draw_seeds(ax, runs, "training lengths", f"{hard} bits")
    ax.axvline(hard, color="grey", ls="--", lw=1)
    finish(ax, f"test-time iterations (dashed: {hard}, the propagation depth at {hard} bits)",
           "exact-match accuracy (%)", "prefix sums, the paper's split")
    return figures.save(fig, path)


def section(runs: list[dict[str, Any]], plots: Path, out: Path) -> list[str]:
    """The section's markdown lines (none without runs)."""
    if not runs:
        return []
    cfg, opts, last, n, commands = context(runs)
    figure = plot(runs, plots / "prefix_sums_paper_split.png")
    return [
        "", "## prefix_sums: the paper's split", "",
        f"Trained on {opts['min_length']}–{opts['length']} bits, reached by a difficulty schedule from "
        f"{opts.get('start_min_length')}–{opts.get('start_length')} bits over the first {opts.get('ramp_steps')} of "
        f"{cfg['steps']} steps (plain backpropagation through length + {cfg.get('depth_offset')} iterations, width "
        f"{cfg['width']}, local window {cfg['window']}, batch {cfg['batch_size']}); tested on {n.get('hard', '?')} "
        f"strings of {opts['hard_length']} bits (*hard*) and {n.get('val', '?')} of the training lengths (*val*). "
        f"Runs: {commands}. *adaptive* and *solver* as above (accuracy / mean "
        f"iterations, at {opts['hard_length']} bits); *train s* and *eval s* wall seconds of training and of the "
        "whole evaluation (both splits, every count, adaptive and solver) on one core.", "",
        table([h.format(last=last) for h in HEADER], rows(runs)),
        "", f"![the paper's split]({os.path.relpath(figure, out.parent)})",
    ]
