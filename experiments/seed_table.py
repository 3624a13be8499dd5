"""One row per seed of a single configuration, then the mean row: the table of the report's
sections on runs kept apart from the main grid (the paper's split, the long chess run). Standard
library only."""

from __future__ import annotations

from typing import Any

from experiments.configs import _m
from experiments.markdown import num, pct

HEADER = ["seed", "val best", "hard best", "hard@{last}", "adaptive", "solver", "train s", "eval s"]


def curve(run: dict[str, Any], split: str) -> list[float]:
    """The accuracy of ``run`` on ``split`` at each test-time count."""
    return run["eval"]["curves"]["accuracy"][split]


def best(run: dict[str, Any], split: str) -> tuple[float, int]:
    """The best accuracy over the test-time counts and the first count that reaches it."""
    values, iters = curve(run, split), run["eval"]["curves"]["iters"]
    top = max(values)
    return top, iters[values.index(top)]


def _settle(run: dict[str, Any], key: str) -> float | None:
    return (run["eval"].get("settling") or {}).get("hard", {}).get(key)


def _solver(run: dict[str, Any], key: str) -> float | None:
    return (run["eval"].get("solver") or {}).get("hard", {}).get(key)


def rows(runs: list[dict[str, Any]]) -> list[list[str]]:
    """One row per run (by seed), then the mean over them."""
    out = []
    for r in sorted(runs, key=lambda r: r["spec"]["seed"]):
        vb, vi = best(r, "val")
        hb, hi = best(r, "hard")
        sec = r.get("seconds", {})
        out.append([str(r["spec"]["seed"]), f"{pct(vb)} ({vi})", f"{pct(hb)} ({hi})", pct(curve(r, "hard")[-1]),
                    f"{pct(_settle(r, 'accuracy'))} / {num(_settle(r, 'iterations_mean'))}",
                    f"{pct(_solver(r, 'accuracy'))} / {num(_solver(r, 'iterations_mean'))}",
                    num(sec.get("train"), 4), num(sec.get("eval"), 4)])
    if len(runs) > 1:
        out.append([f"mean of {len(runs)}", pct(_m([best(r, "val")[0] for r in runs])),
                    pct(_m([best(r, "hard")[0] for r in runs])), pct(_m([curve(r, "hard")[-1] for r in runs])),
                    f"{pct(_m([_settle(r, 'accuracy') for r in runs]))} / "
                    f"{num(_m([_settle(r, 'iterations_mean') for r in runs]))}",
                    f"{pct(_m([_solver(r, 'accuracy') for r in runs]))} / "
                    f"{num(_m([_solver(r, 'iterations_mean') for r in runs]))}",
                    num(_m([r.get("seconds", {}).get("train") for r in runs]), 4),
                    num(_m([r.get("seconds", {}).get("eval") for r in runs]), 4)])
    return out




def draw_seeds(ax: Any, runs: list[dict[str, Any]], val: str, hard: str) -> None:
    """Accuracy against test-time iterations on matplotlib axes ``ax``, one dotted (val) and one solid
    (hard) line per seed, labelled ``seed N: {val}`` and ``seed N: {hard}``."""
    for r in sorted(runs, key=lambda r: r["spec"]["seed"]):
        iters, seed = r["eval"]["curves"]["iters"], r["spec"]["seed"]
        ax.plot(iters, [100 * a for a in curve(r, "val")], ":", marker="o", ms=3, label=f"seed {seed}: {val}")
        ax.plot(iters, [100 * a for a in curve(r, "hard")], "-", marker="s", ms=3, label=f"seed {seed}: {hard}")


def finish(ax: Any, xlabel: str, ylabel: str, title: str) -> None:
    """Log-scaled iterations, the labels, the legend and a light grid."""
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)


def context(runs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any], int, dict[str, int], str]:
    """What a section's text names, from its first run: the training config, the task's options,
    the last test-time count, the examples per split, and the sweep commands as markdown."""
    cfg = runs[0]["train_config"]
    commands = "; ".join(f"`{c}`" for c in sorted({r.get("command", "") for r in runs}))
    return cfg, cfg.get("task_options", {}), runs[0]["eval"]["curves"]["iters"][-1], runs[0]["eval"].get("n", {}), commands
