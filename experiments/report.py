"""RESULTS.md and its figures from the run summaries: one table of runs, a few queries, one template.

    python -m experiments.report [results/runs] [--out RESULTS.md] [--plots results]
    python -m experiments.report runs/sweep                # a sweep's result.json files, summarized on the fly

Every run summary (``results/runs/<task>/<run>.json``, committed; see ``experiments/summary.py``)
becomes a row of :func:`experiments.table.runs_frame`; the tables are ``groupby``/``pivot_table``
queries on it written by ``to_markdown``, the verdicts come from :mod:`experiments.claims`, and the
prose is ``experiments/results_template.md``. Nothing in RESULTS.md is typed by hand, and a fresh
clone regenerates it byte for byte but for the date.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from string import Template
from typing import Any

import pandas as pd

from experiments import chess_baselines, claims, examples_report
from experiments.claims import mean_se, num, pct
from experiments.figures import facets
from experiments.paper_table import markdown, paper_table
from experiments.presets import NORMS, RECALLS, REGIMES, TASK_ORDER
from experiments.summary import SummaryError, load_summaries
from experiments.table import AT, curves_frame, load_results, runs_frame

TEMPLATE = Path(__file__).with_name("results_template.md")
SECTIONS = {"paper": "the paper's prefix-sums split: train on ≤ 32 bits, test on 512",
            "recipes": "the fixed-point training recipes at another number of steps",
            "chess": "the long chess run beside its baselines",
            "seed-cpu": "the paper's grid and regime at CPU scale",
            "seed-gpu": "the paper's grid and regime at its own scale"}
"""The presets whose sweeps are kept apart from the main grid, each drawn as a section of its own."""
DEFAULT_SECTIONS = ("results/seed_gpu", "results/seed_cpu", "results/paper_split", "results/recipes_1500",
                    "results/chess_long")
NAMES = {"C1": "without recall, countable fixed points and no strong input dependence",
         "C2": "recall + outer norm gives reachable, locally smooth, backprop-stable fixed points",
         "C3": "internal recall ≥ external once the norm is outer; much better on sudoku",
         "C4": "performance follows the framework: recall + outer > recall + inner > no recall"}


def md(frame: pd.DataFrame) -> str:
    return frame.to_markdown(index=False, missingval="—", disable_numparse=True)


def ms(x: pd.Series) -> str:
    """Mean ± standard error of accuracies, in %."""
    m, s, _ = mean_se(x)
    return "—" if m != m else f"{pct(m)} ± {pct(s)}"


def ordered(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows in the order recall, norm, regime of the presets (others after them), then seed."""
    keys = {"recall": RECALLS, "norm": NORMS, "regime": REGIMES}
    return frame.sort_values([*keys, "seed"], key=lambda c: c.map(lambda v: keys[c.name].index(v) if v in keys[
        c.name] else len(keys[c.name])) if c.name in keys else c, kind="stable")


def paper_layout(summaries: list[dict[str, Any]], task: str, regime: str = claims.PAPER_REGIME) -> str:
    """The paper's layout (:func:`experiments.paper_table.paper_table`) in its regime: a row per recall ×
    norm, per learning rate the hard accuracy @500 and, beside it, the best over counts."""
    where = {"regime": regime}
    try:
        header, at = paper_table(summaries, task=task, where=where)
    except ValueError:  # no runs of the paper's regime
        return "No runs in the paper's regime."
    best = paper_table(summaries, task=task, where=where, metric="best")[1]
    return markdown([*header[:2], *(f"{h} @{AT}" for h in header[2:]), *(f"{h} best" for h in header[2:])],
                    [a + b[2:] for a, b in zip(at, best)])


STABILITY = {"plain_reach": "plain reach", "anderson_reach": "Anderson", "rho": "ρ", "resolvent": "‖(I−J)⁻¹‖",
             "ift": "IFT", "fd": "FD", "fd_input": "FD from e", "bwd": "bwd", "grad_spread": "grad spread"}


def grid_table(runs: pd.DataFrame) -> str:
    """Every configuration (recall, norm, regime, learning rate): accuracy and the stability numbers, over seeds."""
    g = ordered(runs).groupby(["recall", "norm", "regime", "lr"], sort=False)
    acc = g.agg(seeds=("seed", "count"), hard_at=("hard_at", ms), best=("hard_best", ms), solver=("solver", ms))
    stab = g[list(STABILITY)].mean().map(lambda v: num(v, 2))
    table = acc.join(stab).reset_index()
    return md(table.rename(columns={"hard_at": f"hard @{AT}", "best": "hard best", **STABILITY}))


def grid_section(task: str, runs: pd.DataFrame) -> str:
    """A task of deqloop's own cpu grid (``results/runs``): every recall × norm × training regime, no verdict."""
    steps = "/".join(str(int(s)) for s in sorted(runs.steps.dropna().unique()))
    return "\n".join([
        f"## {task}: deqloop's cpu grid", "", f"{len(runs)} runs, {steps} training steps, width "
        f"{num(runs.width.median())}: accuracy (mean ± s.e. over seeds) and the stability numbers (means over seeds) "
        "of every recall × norm × training regime. None of it is the paper's regime (its progressive loss here has "
        f"α = {'/'.join(f'{a:g}' for a in sorted(runs[runs.regime == 'progressive'].alpha.dropna().unique())) or '—'}, "
        "z₀ detached, and the internal recall is the "
        f"{'/'.join(sorted(set(runs.recall_form) - {'—'})) or '—'} form; the other regimes are fixed-point "
        "training, `experiments/presets.py` `REGIME_TRAIN`), so no verdict reads it.", "", grid_table(runs)]) + "\n"


def run_table(runs: pd.DataFrame) -> str:
    """A row per run of a separate sweep: its regime and seed, accuracies, and times."""
    rows = ordered(runs).assign(
        val_best=lambda f: f.val_best.map(pct), hard_best=lambda f: f.hard_best.map(pct) + " (" +
        f.hard_best_at.map(lambda v: num(v)) + ")", hard_last=lambda f: f.hard_last.map(pct) + " (" +
        f["last"].map(lambda v: num(v)) + ")",
        adaptive=lambda f: f.adaptive.map(pct) + " / " + f.adaptive_iters.map(num),
        solver=lambda f: f.solver.map(pct) + " / " + f.solver_iters.map(num), train_s=lambda f: f.train_s.map(num),
        seed=lambda f: f.seed.map(lambda v: str(int(v))))
    cols = {"regime": "regime", "seed": "seed", "val_best": "val best", "hard_best": "hard best (count)",
            "hard_last": "hard at the last count", "adaptive": "adaptive / iterations", "solver": "solver / iterations",
            "train_s": "train s"}
    return md(rows[list(cols)].rename(columns=cols))


def section(folder: Path, summaries: list[dict[str, Any]], baselines: Any, plots: Path, out: Path) -> str:
    """A sweep kept apart from the main grid (one preset of :data:`SECTIONS`): its runs and a figure."""
    runs = runs_frame(summaries)
    presets = sorted(runs.preset.unique())
    if len(presets) != 1 or presets[0] not in SECTIONS:
        raise SummaryError(f"{folder}: a separate section holds the runs of one preset of {', '.join(SECTIONS)}; "
                           f"these are of {', '.join(presets)}")
    if presets[0].startswith("seed-"):
        return seed_section(folder, summaries, plots, out, presets[0])
    cfg = summaries[0]["train_config"]
    c = curves_frame(summaries).assign(panel=lambda f: f.regime)
    fig = facets(ordered(c), plots / f"{folder.name}.png", x="iters", y="accuracy", facet="panel", hue="split",
                 xlog=True, title=f"{SECTIONS[presets[0]]} (band: seeds' range)", xlabel="test-time iterations",
                 ylabel="exact match (%)", cols=3)
    lines = [x for x in (chess_baselines.baseline_line(summaries, baselines),
                         chess_baselines.versus(summaries, baselines)) if x]
    return "\n".join([
        f"## {runs.task.iloc[0]}: {SECTIONS[presets[0]]}", "",
        f"`{folder}` (runs: {len(runs)}, by {'; '.join(f'`{x}`' for x in sorted(runs.command.dropna().unique()))}); "
        f"{cfg['recall']} recall, {cfg['norm']} norm, width {cfg['width']}, {cfg['steps']} steps, task settings "
        f"{ {k: v for k, v in (cfg.get('task_options') or {}).items() if k != 'data'} }.", "",
        run_table(runs), *(x for line in lines for x in ("", line)), "",
        f"![{folder.name}]({os.path.relpath(fig, out.parent)})"]) + "\n"


def seed_section(folder: Path, summaries: list[dict[str, Any]], plots: Path, out: Path, preset: str) -> str:
    """A seed preset's sweep: per task, the paper's table (a row per recall × residual, per learning rate
    the hard accuracy @500 and the best over counts, mean ± s.e. over seeds), how many of the grid's
    runs are done, and hard accuracy against test-time iterations per recall × residual."""
    from experiments.presets import get_preset

    grid = get_preset(preset)
    parts = [f"## {SECTIONS[preset]} (`{preset}`)", ""]
    for task in [t for t in TASK_ORDER if any(s["spec"]["task"] == t for s in summaries)]:
        mine = [s for s in summaries if s["spec"]["task"] == task]
        looped = [s for s in mine if (s["train_config"].get("blocks") or 1) == 1]  # not the untied baseline
        cfg = (looped or mine)[0]["train_config"]
        c = curves_frame(mine)
        c = c[c.split == "hard"].assign(panel=lambda f: f.recall + " · " + f.norm,
                                         lr=lambda f: f["name"].map({s["name"]: s["train_config"]["lr"] for s in mine}))
        fig = facets(ordered(c), plots / f"{folder.name}_{task}.png", x="iters", y="accuracy", facet="panel",
                     hue="lr", xlog=True, title=f"{task}, {preset}: hard split (band: seeds' range)",
                     xlabel="test-time iterations", ylabel="exact match (%)", cols=4)
        options = {k: v for k, v in (cfg.get("task_options") or {}).items() if k not in ("data", "test_data")}
        parts += [f"### {task}", "",
                  f"`{folder}`: {len(mine)} of the grid's {len(grid.runs(task=(task,)))} runs (by "
                  f"{'; '.join(f'`{x}`' for x in sorted({s.get('command') or '' for s in mine} - {''}))}); width "
                  f"{cfg['width']}, {cfg['steps']} steps of batch {cfg['batch_size']}, training depth {cfg['max_iter']}, "
                  f"task settings {options}. Rows are recall × residual as the paper names them (`fixed`: 15 untied "
                  f"blocks at one iteration, scored there; `gru`: the GRU residual with peri norm).", "",
                  paper_layout(mine, task), "",
                  f"![{folder.name} {task}]({os.path.relpath(fig, out.parent)})", ""]
    return "\n".join(parts)


def runs_note(frame: pd.DataFrame) -> str:
    """What the verdicts read: the preset, its runs in the paper's regime, the internal recall's form, the
    seeds a cell."""
    runs = claims.paper_runs(frame)
    if runs.empty:
        return "No runs in the paper's regime yet: every verdict is inconclusive."
    seeds = runs.groupby(["task", "lr", "recall", "norm"]).seed.nunique()
    forms = "/".join(sorted(set(runs[runs.recall == "internal"].recall_form))) or "—"
    return (f"The verdicts read the {len(runs)} runs of the `{runs.preset.iloc[0]}` preset in the paper's regime "
            f"(`{claims.PAPER_REGIME}`: the progressive loss with α = "
            f"{'/'.join(f'{a:g}' for a in sorted(runs.alpha.dropna().unique()))} and z₀'s gradient, depth 30, the "
            f"paper's schedule; internal recall in the {forms} form), {len(seeds)} cells (task × learning rate × "
            f"recall × residual) with {seeds.min()}" + (f"–{seeds.max()}" if seeds.max() > seeds.min() else "")
            + f" seed{'s' * int(seeds.max() > 1)} each; no other run decides a verdict.")


def claim_tables(frame: pd.DataFrame) -> str:
    """The numbers behind C2, C3 and C4 as tables."""
    parts = []
    c3 = claims.c3_rows(frame)
    if len(c3):
        c3 = c3.assign(**{"internal @500": c3.gap.map(lambda g: pct(g.hi)), "external @500": c3.gap.map(
            lambda g: pct(g.lo)), "gap ± s.e.": c3.gap.map(lambda g: f"{pct(g.gap)} ± {pct(g.se)}"),
            "seeds": c3.gap.map(lambda g: str(g.seeds)), "best (internal / external)": c3.best.map(
            lambda g: f"{pct(g.hi)} / {pct(g.lo)}")}).drop(columns=["gap", "best"])
        parts += [f"C3, internal against external recall with an outer norm (hard @{AT}, %):", "", md(c3), ""]
    c2 = claims.c2_rows(frame)
    if len(c2):
        c2 = c2.assign(lr=c2.lr.map(lambda v: f"{v:g}"), axis=c2.axis.map({**claims.C2_AXES, **claims.C2_BESIDE}),
                       **{"outer (mean)": c2.gap.map(lambda g: num(g.hi)), "inner (mean)": c2.gap.map(
                           lambda g: num(g.lo)), "gap ± s.e.": c2.gap.map(lambda g: f"{num(g.gap)} ± {num(g.se)}"),
                          "seeds": c2.gap.map(lambda g: str(g.seeds))}).drop(columns=["gap"])
        parts += ["C2, outer against inner norms within each recall family (means of the cells' seed means):", "",
                  md(c2), ""]
    c4 = claims.c4_rows(frame)
    if len(c4):
        c4 = c4.assign(value=c4["mean"].map(pct) + " ± " + c4.se.map(pct) + " (" + c4.cells.astype(str) + " cells, "
                       + c4.runs.astype(str) + " runs)", task=c4.task + ", lr " + c4.lr.map(lambda v: f"{v:g}"))
        parts += [f"C4, hard @{AT} by family (mean of the cells' means ± seed s.e., %):", "",
                  md(c4.pivot(index="family", columns="task", values="value").reindex(
                      [f for f in (*claims.ORDER, "untied") if f in set(c4.family)]).fillna("—").reset_index()), ""]
    return "\n".join(parts)


def render(results: list[dict[str, Any]], plots: Path, out: Path, command: str, baselines: Any = None,
           sections: dict[Path, list[dict[str, Any]]] | None = None,
           examples: dict[str, list[dict[str, Any]]] | None = None) -> str:
    """RESULTS.md's text (and its figures under ``plots``): the verdicts on every run given, read through
    :func:`experiments.claims.paper_runs`."""
    frame = runs_frame(results)
    every = runs_frame([*results, *(s for ss in (sections or {}).values() for s in ss)])
    verdicts = "\n".join(f"- **{v.claim} — {NAMES[v.claim]}: {v.verdict}.** {v.evidence}.\n  - rule: {v.rule}.\n"
                         f"  - what would change it: {v.change}." for v in claims.verdicts(every))
    tasks = sorted(frame.task.unique(), key=lambda t: (TASK_ORDER.index(t) if t in TASK_ORDER else 99, t))
    machines = sorted({", ".join(f"{k} {v}" for k, v in r["machine"].items() if v is not None) for r in results})
    return Template(TEMPLATE.read_text()).substitute(
        command=command, date=f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}", n_runs=len(results),
        commands="; ".join(f"`{c}`" for c in sorted(frame.command.dropna().unique())),
        presets=", ".join(sorted(frame.preset.unique())), commits=", ".join(sorted(frame.commit.unique())),
        machines="; ".join(machines), verdicts=verdicts, runs_note=runs_note(every), claim_tables=claim_tables(every),
        tasks="\n".join(grid_section(t, frame[frame.task == t]) for t in tasks),
        sections="".join("\n" + section(f, s, baselines, plots, out) for f, s in (sections or {}).items() if s),
        examples="".join("\n" + examples_report.section(t, rs, plots, out) for t, rs in sorted((examples or {}).items())))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="?", default="results/runs",
                   help="folder of the run summaries (default results/runs), or of a sweep (holds */*/result.json)")
    p.add_argument("--out", default="RESULTS.md", help="the document to write (default RESULTS.md)")
    p.add_argument("--plots", default="results", help="folder for the PNG figures (default results/)")
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
        if not results:
            p.error(f"no run summaries or result.json under {root}: run `python -m experiments.sweep` first, or "
                    "`python -m experiments.summary import runs/sweep` for an older sweep")
        sections = {Path(f): load_summaries(Path(f)) for f in a.sections if Path(f).is_dir()}
        examples = examples_report.load(Path(a.examples)) if a.examples and Path(a.examples).is_dir() else {}
        stored = chess_baselines.load(Path(__file__).resolve().parents[1] / chess_baselines.DEFAULT_PATH)
        out = Path(a.out).resolve()
        command = " ".join(["python -m experiments.report", *(argv if argv is not None else sys.argv[1:])])
        text = render(results, Path(a.plots).resolve(), out, command, baselines=stored, sections=sections,
                      examples=examples)
    except (SummaryError, ValueError) as err:
        p.error(str(err))
    out.write_text(text)
    print(f"wrote {out} ({len(results)} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
