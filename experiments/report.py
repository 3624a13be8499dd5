"""Build RESULTS.md (tables, verdicts per claim, plots) from the run summaries, or from a sweep.

    python -m experiments.report [results/runs] [--out RESULTS.md] [--plots results]
    python -m experiments.report runs/sweep                # a sweep's result.json files, summarized on the fly

The run summaries (``results/runs/<task>/<run>.json``, committed; see ``experiments/summary.py``)
hold all the report reads, so RESULTS.md can be regenerated on a fresh clone; a folder that holds
``result.json`` files is read as a sweep, each run summarized with its ``metrics.jsonl``, and
gives the same document.

Nothing in RESULTS.md is typed by hand: every number comes from the runs, and each section names
the command, commit and configuration that produced it. The verdict rules are stated next to
each verdict; a claim the runs cannot decide (too few runs, or nothing learned) is
"inconclusive at this scale".
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from experiments import chess_baselines, chess_long, examples_report, figures, paper_split, recipes_report, stability_report
from experiments.claims import Verdict, claim1, claim2, claim3, claim4
from experiments.configs import LEARNED_MARGIN, Config, _med, group
from experiments.markdown import _task_key, num, pct, table
from experiments.presets import NORMS, RECALLS, REGIMES
from experiments.stats import spearman
from experiments.summary import SummaryError, load_summaries, summarize_sweep

__all__ = ["LEARNED_MARGIN", "Config", "Verdict", "claim1", "claim2", "claim3", "claim4", "group", "load_results",
           "main", "num", "pct", "render", "spearman", "table"]


# -- loading and aggregation -------------------------------------------------------------------


def load_results(root: Path) -> list[dict[str, Any]]:
    """The runs under ``root``, sorted by name: a sweep's runs summarized from their
    ``result.json`` and ``metrics.jsonl`` where ``root`` holds any ``result.json``, else the run
    summaries under it. A file that cannot be read raises :class:`SummaryError` naming it."""
    root = Path(root)
    if next(root.rglob("result.json"), None) is not None:
        return summarize_sweep(root)
    return load_summaries(root)

def _regime_row(regime: str, cs: list[Config]) -> list[str]:
    runs = [r for c in cs for r in c.runs]

    def med(key: str) -> float | None:
        return _med([r["train"].get(key) for r in runs])

    return [regime, str(len(runs)), num(med("late_loss")), pct(med("late_train_accuracy")),
            num(med("late_forward_converged"), 2), num(med("late_backward_converged"), 2),
            pct(_med([c.best("hard")[0] for c in cs]))]


IDENTITY_TOL = 1e-3


def identity_fixed_points(configs: list[Config]) -> str | None:
    """A section on runs whose fixed point is one where the loop does nothing: J ≈ I there.

    A run counts when its median ρ(J) and median σ_max(J) are both within ``IDENTITY_TOL`` of 1.
    The table counts them per norm and regime, with the median ‖(I − J)⁻¹‖, backward-solve
    convergence and late training loss of those runs; None when there is no such run.
    """
    def near_identity(r: dict[str, Any]) -> bool:
        a = r["analysis"]["hard"]
        rho, sigma = a.get("spectral_radius_median"), a.get("sigma_max_median")
        return rho is not None and sigma is not None and abs(rho - 1) < IDENTITY_TOL and abs(sigma - 1) < IDENTITY_TOL

    runs = [r for c in configs for r in c.runs]
    if not any(near_identity(r) for r in runs):
        return None
    rows = []
    for norm in NORMS:
        for regime in REGIMES:
            cell = [r for r in runs if r["spec"]["norm"] == norm and r["spec"]["regime"] == regime]
            if not cell:
                continue
            hit = [r for r in cell if near_identity(r)]
            recalls = sorted({r["spec"]["recall"] for r in hit}, key=RECALLS.index)
            rows.append([norm, regime, f"{len(hit)} of {len(cell)}", ", ".join(recalls) or "—",
                         num(_med([r["analysis"]["hard"].get("resolvent_norm_median") for r in hit]), 3),
                         num(_med([r["analysis"]["hard"].get("backward_converged_fraction") for r in hit]), 2),
                         num(_med([r["train"].get("late_loss") for r in hit]), 3)])
    return "\n".join([
        "## Fixed points where the loop does nothing",
        "",
        f"Runs whose median ρ(J) and σ_max(J) at z* are both within {IDENTITY_TOL:g} of 1, so that J ≈ I: the loop "
        "map barely moves the state and (I − J), the matrix the implicit backward inverts, is nearly singular. "
        "Without an outer norm, and with internal or no recall, the state's residual stream passes through "
        "unnormalised, f(z) = z + r(z) and J = I + ∂r/∂z, so fixed-point training can meet z* = f(z*) by "
        "shrinking r; an outer norm (post, sandwich) rescales the stream and removes the identity from J, and "
        "external recall maps the state by W_z first. All tasks; columns for the runs counted: median "
        "‖(I − J)⁻¹‖, backward-solve converged fraction and training loss over the last quarter of training.",
        "",
        table(["norm", "regime", "runs with J ≈ I", "recalls", "‖(I − J)⁻¹‖", "bwd", "late loss"], rows),
    ])


# -- plots -------------------------------------------------------------------------------------


def plot_iterations(configs: list[Config], task: str, path: Path) -> Path:
    """Accuracy against test-time iterations of each configuration of ``task``, a panel per test set."""
    plt = figures.pyplot()

    cs = [c for c in configs if c.task == task]
    # the validation and hard splits, then any more test sets every run was evaluated on (e.g. sudoku's blank bands)
    splits = ["val", "hard"] + [k for k in cs[0].runs[0]["eval"]["curves"]["accuracy"] if k not in ("val", "hard")
                                and all(k in r["eval"]["curves"]["accuracy"] for c in cs for r in c.runs)]
    fig, axes = plt.subplots(1, len(splits), figsize=(6 * len(splits), 4.5), sharey=True)
    for ax, split in zip(axes, splits):
        for c in cs:
            style = "-" if c.regime == "progressive" else "--"
            ax.plot(c.iters, [100 * a for a in c.curve(split)], style, marker="o", ms=3, label=c.label)
        ax.axvline(cs[0].train_depth, color="grey", ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_xlabel("test-time iterations")
        ax.set_title(f"{task}: {split} (dotted: training depth)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("exact-match accuracy (%)")
    axes[1].legend(fontsize=6, ncol=2, loc="best")
    return figures.save(fig, path)


def plot_rho_vs_accuracy(configs: list[Config], path: Path) -> Path:
    plt = figures.pyplot()

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    markers = {"none": "x", "external": "s", "internal": "o"}
    for task in sorted({c.task for c in configs}, key=_task_key):
        cs = [c for c in configs if c.task == task and c.stab("spectral_radius_median") is not None]
        for recall in RECALLS:
            sub = [c for c in cs if c.recall == recall]
            if sub:
                ax.scatter([c.stab("spectral_radius_median") for c in sub], [100 * c.best("hard")[0] for c in sub],
                           marker=markers[recall], label=f"{task} / recall {recall}")
    ax.axvline(1.0, color="grey", ls=":", lw=1)
    ax.set_xlabel("median spectral radius ρ(J) at z* (hard examples)")
    ax.set_ylabel("best hard accuracy (%)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return figures.save(fig, path)


# -- the document ------------------------------------------------------------------------------


def _recipes_and_stability(cs: list[Config], task: str, plots: Path, out: Path) -> list[str]:
    """The recipe ablation table of each cell trained under three or more regimes no other cell has, and the
    stability-over-training table and figure of the runs that carry monitor traces."""
    doc = []
    cells = sorted({(c.recall, c.norm) for c in cs})
    for recall, norm in cells:
        own = {c.regime for c in cs if (c.recall, c.norm) == (recall, norm)}
        others = {c.regime for c in cs if (c.recall, c.norm) != (recall, norm)}
        if len(own - others) < 3:  # an ablation: at least three regimes trained in this cell alone
            continue
        doc += ["", f"### Fixed-point training recipes ({recall} recall, {norm} norm)", "",
                "Every regime of this cell (`python -m experiments.sweep --preset recipes`; the regimes are "
                f"defined in `experiments/presets.py` `REGIME_TRAIN`): {recipes_report.INTRO}", "",
                table(recipes_report.HEADER, recipes_report.recipe_rows(cs, recall, norm))]
        line = recipes_report.targets(cs, recall, norm)
        if line:
            doc += ["", line]
    header, rows = stability_report.when_table(cs)
    if rows:
        doc += ["", "### Stability over training", "",
                "From the stability monitor (`stability_every`, a 16-example probe of the validation split): the "
                "median ρ(∂f/∂z) at the first and last probe, the fraction of training at which it first exceeded 1, "
                "the fraction at which plain iteration (within the run's own solver budget `max_iter` and tolerance: "
                "the training depth for the progressive loss, the solver budget for fixed-point training) first converged for fewer "
                "than 50 % of the probe (*reachable*; a map with ρ ≈ 1 at initialisation starts below it), and the reachable and implicit-backward converged fractions at the last probe; "
                "medians over seeds (*never*: in most seeds it did not happen).", "", table(header, rows)]
        plot = stability_report.plot_traces(cs, task, plots / f"{task}_stability.png")
        if plot is not None:
            doc += ["", f"![stability over training]({os.path.relpath(plot, out.parent)})"]
    return doc


SECTIONS = {"paper": "the paper's prefix-sums split (experiments/paper_split.py)",
            "recipes": "the recipes ablation at another number of steps (experiments/recipes_report.py)",
            "chess": "the long chess run beside its baselines (experiments/chess_long.py)"}
"""The presets whose sweeps may be kept apart from the main grid, each drawn as its own section."""
DEFAULT_SECTIONS = ("results/paper_split", "results/recipes_1500", "results/chess_long")


def section(runs: list[dict[str, Any]], plots: Path, out: Path) -> list[str]:
    """The section of a sweep kept apart from the main grid, chosen by its preset."""
    if not runs:
        return []
    presets = sorted({r["preset"] for r in runs})
    if len(presets) != 1 or presets[0] not in SECTIONS:
        raise SummaryError(f"a separate section holds the runs of one preset of {', '.join(SECTIONS)}; "
                           f"these are of {', '.join(presets)}")
    if presets[0] == "paper":
        return paper_split.section(runs, plots, out)
    if presets[0] == "chess":
        return chess_long.section(runs, plots, out)
    return recipes_report.section(runs)


def render(results: list[dict[str, Any]], plots: Path, out: Path, command: str,
           baselines: dict[str, Any] | None = None, sections: list[list[dict[str, Any]]] = (),
           examples: dict[str, list[dict[str, Any]]] | None = None) -> str:
    """RESULTS.md's text. ``baselines``: the stored baselines file (:mod:`experiments.chess_baselines`),
    read for runs whose evaluation predates storing them; ``sections``: the summaries of each sweep
    kept apart from the main grid (:data:`SECTIONS`), a section each after the tasks'; ``examples``:
    the example runs' records by task (:mod:`experiments.examples_report`), after those."""
    configs = list(group(results).values())
    commits = sorted({r["commit"] for r in results})
    presets = sorted({r["preset"] for r in results})
    sweep_cmds = sorted({r.get("command", "") for r in results})
    doc = [
        "# Results",
        "",
        f"Generated by `{command}` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} from {len(results)} runs "
        f"({len(configs)} configurations); do not edit by hand.",
        "",
        f"- runs produced by: {'; '.join(f'`{c}`' for c in sweep_cmds)}",
        f"- preset(s): {', '.join(presets)} (see `experiments/presets.py`); commit(s): {', '.join(commits)}",
        "- machine(s): " + "; ".join(sorted({", ".join(f"{k} {v}" for k, v in r["machine"].items() if v is not None)
                                           for r in results})),
        "- accuracy is exact match of the whole output, in %; *best* is the best over the test-time iteration "
        "counts, with the count in parentheses; *adaptive* iterates each example until its state stops changing "
        "(relative change ≤ 1e-3) and *solver* runs Anderson to rtol 1e-4 (iterations spent after the slash); *cells* is the best fraction of "
        "hard-split cells right (prefix sums: bits; sudoku: blanks only; chess: squares), where the run scored cells.",
        "- stability numbers are medians over hard examples from `deqloop.analysis.analyze` (z₀ = e; solver "
        "Anderson, ≤ 100 iterations, rtol 1e-4); *conv* converged fraction, *ρ* spectral radius of ∂f/∂z at z*, "
        "*contr* fraction with ρ < 0.95, *sens* IFT input sensitivity, *Lip* ‖Δz*‖/‖Δe‖, *bwd* implicit backward "
        "converged fraction, *grad* median gradient norm in training.",
        "",
        "## Verdicts",
        "",
    ]
    verdicts = [claim1(configs), claim2(configs), claim3(configs), claim4(configs)]
    names = {"C1": "without recall, fixed points are input-independent",
             "C2": "recall + outer (post) norm gives reachable, smooth, backprop-stable fixed points",
             "C3": "internal recall ≥ external once outer norm is used; much better on sudoku",
             "C4": "extrapolation tracks the stability axes"}
    for v in verdicts:
        doc += [f"- **{v.claim} — {names[v.claim]}: {v.verdict}.** {v.evidence}.", f"  - rule: {v.rule}."]
    for task in sorted({c.task for c in configs}, key=_task_key):
        cs = [c for c in configs if c.task == task]
        depth = cs[0].train_depth
        last = cs[0].iters[-1]
        near = max([t for t in cs[0].iters if t <= depth] or cs[0].iters[:1])  # the count nearest the training depth
        rows = []
        for c in cs:
            vb, vi = c.best("val")
            hb, hi = c.best("hard")
            rows.append([c.recall, c.norm, c.regime, str(len(c.runs)), pct(c.at("val", near)), f"{pct(vb)} ({vi})",
                         f"{pct(hb)} ({hi})", pct(c.at("hard", last)), pct(c.best_cells("hard")),
                         f"{pct(c.settle('hard', 'accuracy'))} / {num(c.settle('hard', 'iterations_mean'))}",
                         f"{pct(c.solver('hard', 'accuracy'))} / {num(c.solver('hard', 'iterations_mean'))}",
                         num(c.stab("converged_fraction"), 2), num(c.stab("spectral_radius_median")),
                         num(c.stab("contractive_fraction"), 2), num(c.stab("input_sensitivity_median")),
                         num(c.stab("local_smoothness_median")), num(c.stab("backward_converged_fraction"), 2),
                         num(c.train("grad_norm_median"))])
        plot = plot_iterations(cs, task, plots / f"{task}_iterations.png")
        cfg = cs[0].runs[0]["train_config"]
        # the task's settings sit in task_options (in older runs' configs, among the trainer's fields)
        merged = {**cfg, **cfg.get("task_options", {})}
        shown = {k: merged[k] for k in ("width", "heads", "attention", "window", "max_iter", "steps", "batch_size", "lr",
                                        "length", "min_length", "hard_length", "depth_offset", "data", "augment")
                 if merged.get(k) not in (None, (), [], False)}
        doc += ["", f"## {task}", "", f"Training: {shown}; training depth {depth} (column *val@{near}*: the evaluated count nearest it); "
                f"hard accuracy at {last} iterations in column *hard@{last}*.", "",
                table(["recall", "norm", "regime", "seeds", f"val@{near}", "val best", "hard best", f"hard@{last}", "cells",
                       "adaptive", "solver", "conv", "ρ", "contr", "sens", "Lip", "bwd", "grad"], rows),
                "", f"![accuracy vs iterations]({os.path.relpath(plot, out.parent)})"]
        line = chess_baselines.baseline_line([r for c in cs for r in c.runs], baselines)
        if line:
            doc[-1:-1] = [line, ""]  # under the table, before the plot
        # beyond the paper: the training regimes side by side, fixed-count next to adaptive compute
        regimes = [g for g in REGIMES if any(c.regime == g for c in cs)]
        # the grid's regimes (trained in more than one cell); a single cell's ablation has its own table
        grid = [g for g in regimes if sum(c.regime == g for c in cs) > 1]
        plain, solved = [], []
        for recall in RECALLS:
            for norm in NORMS:
                by = {c.regime: c for c in cs if c.recall == recall and c.norm == norm and c.regime in grid}
                if len(by) < 2:
                    continue
                plain.append([recall, norm] + [f"{pct(by[g].best('hard')[0])} ({by[g].best('hard')[1]})"
                                               if g in by else "—" for g in grid])
                solved.append([recall, norm] + [f"{pct(by[g].solver('hard', 'accuracy'))} / "
                                                f"{num(by[g].solver('hard', 'iterations_mean'))}"
                                                if g in by else "—" for g in grid])
        if plain:
            doc += ["", "Beyond the paper — the same grid trained by the progressive loss (the paper's) and by "
                    "fixed-point training (exact implicit differentiation or the phantom gradient, alone or with the "
                    "recipes named in the regime). Hard-split accuracy at the best count of plain iterations (the "
                    "count in parentheses):", "", table(["recall", "norm", *grid], plain), "",
                    "and of the Anderson solve to rtol 1e-4, the answer a model trained at its fixed point gives "
                    "(accuracy / mean iterations; plain iteration until the state stops changing is the main "
                    "table's *adaptive* column):", "", table(["recall", "norm", *grid], solved)]
        if len(regimes) > 1:
            doc += ["", "Training by regime (medians over the runs; *late*: mean over the last quarter of the logged "
                    "training steps; the solver columns are the fraction of training examples whose forward solve, "
                    "and implicit backward solve, converged — the progressive loss runs no solver):", "",
                    table(["regime", "runs", "late loss", "late train acc", "forward conv", "backward conv",
                           "hard best"], [_regime_row(g, [c for c in cs if c.regime == g]) for g in regimes])]
        doc += _recipes_and_stability(cs, task, plots, out)
    for runs in sections:
        doc += section(list(runs), plots, out)
    doc += examples_report.section(examples or {}, plots, out)
    identity = identity_fixed_points(configs)
    if identity:
        doc += ["", identity]
    if configs:
        plot = plot_rho_vs_accuracy(configs, plots / "rho_vs_hard_accuracy.png")
        doc += ["", "## ρ(J) against hard accuracy", "",
                f"![rho vs accuracy]({os.path.relpath(plot, out.parent)})"]
    return "\n".join(doc) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="?", default="results/runs",
                   help="folder of the run summaries (default results/runs), or of a sweep (holds */*/result.json)")
    p.add_argument("--out", default="RESULTS.md", help="the document to write (default RESULTS.md)")
    p.add_argument("--plots", default="results", help="folder for the PNG plots (default results/)")
    p.add_argument("--sections", nargs="*", default=list(DEFAULT_SECTIONS),
                   help="folders of run summaries kept apart from the main grid, a section each "
                        f"(default {' '.join(DEFAULT_SECTIONS)}; those absent are skipped); one preset per folder, of "
                        + "; ".join(f"{k}: {v}" for k, v in SECTIONS.items()))
    p.add_argument("--examples", default=examples_report.DEFAULT_ROOT,
                   help=f"folder of the example runs' records (default {examples_report.DEFAULT_ROOT}; '' for none)")
    a = p.parse_args(argv)
    root = Path(a.runs)
    if not root.is_dir():
        p.error(f"no such folder: {root}")
    try:
        results = load_results(root)
    except SummaryError as err:
        p.error(str(err))
    if not results:
        p.error(f"no run summaries or result.json under {root}: run `python -m experiments.sweep` first, or "
                "`python -m experiments.summary import runs/sweep` for an older sweep")
    try:
        sections = [load_summaries(Path(f)) for f in a.sections if Path(f).is_dir()]
        examples = examples_report.load(Path(a.examples)) if a.examples and Path(a.examples).is_dir() else {}
    except SummaryError as err:
        p.error(str(err))
    out = Path(a.out).resolve()
    command = " ".join(["python -m experiments.report", *(argv if argv is not None else sys.argv[1:])])
    try:
        stored = chess_baselines.load(Path(__file__).resolve().parents[1] / chess_baselines.DEFAULT_PATH)
    except ValueError as err:
        p.error(str(err))
    try:
        text = render(results, Path(a.plots).resolve(), out, command, baselines=stored, sections=sections,
                      examples=examples)
    except SummaryError as err:
        p.error(str(err))
    out.write_text(text)
    print(f"wrote {out} ({len(results)} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
