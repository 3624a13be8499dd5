"""RESULTS.md and its figures from the run summaries: one table of runs, a few queries, one template.

    python -m experiments.report [results/runs] [--out RESULTS.md] [--plots results]
    python -m experiments.report runs/sweep                # a sweep's result.json files, summarized on the fly

Every run summary (``results/*/<task>/<run>.json``, committed; ``experiments/summary.py``) becomes a
row of :func:`experiments.table.runs_frame`; the tables are ``groupby``/``pivot_table`` queries on it
written by ``to_markdown``, the verdicts come from :mod:`experiments.claims`, and the prose is
``experiments/results_template.md``. Nothing in RESULTS.md is typed by hand, and a fresh clone
regenerates it byte for byte but for the date.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from experiments import claims, examples_report
from experiments.figures import ITERS, figure
from experiments.presets import TASK_ORDER, get_preset
from experiments.summary import SummaryError, load_summaries
from experiments.table import (AT, FLOOR, curves_frame, fill, load_results, md, mean_pm, num, ordered, paper_layout,
                               pct, runs_frame, traces_frame)

SECTIONS = {"paper": "the paper's prefix-sums split: train on ≤ 32 bits, test on 512",
            "recipes": "the fixed-point training recipes at another number of steps",
            "chess": "the long chess run beside its baselines",
            "seed-cpu": "the paper's grid and regime at CPU scale",
            "seed-gpu": "the paper's grid and regime at its own scale"}
"""The presets whose sweeps are kept apart from the main grid, each drawn as a section of its own."""
DEFAULT_SECTIONS = ("results/seed_gpu", "results/seed_cpu", "results/paper_split", "results/recipes_1500",
                    "results/chess_long")
STABILITY = {"plain_reach": "plain reach", "anderson_reach": "Anderson", "rho": "ρ", "resolvent": "‖(I−J)⁻¹‖",
             "ift": "IFT", "fd": "FD", "fd_input": "FD from e", "bwd": "bwd", "grad_spread": "grad spread"}


def grid_section(task: str, runs: pd.DataFrame) -> str:
    """A task of deqloop's own cpu grid (``results/runs``): every recall × norm × training regime, no verdict."""
    g = ordered(runs).groupby(["recall", "norm", "regime", "lr"], sort=False)
    acc = g.agg(seeds=("seed", "count"), hard_at=("hard_at", mean_pm), best=("hard_best", mean_pm),
                solver=("solver", mean_pm))
    table = acc.join(g[list(STABILITY)].mean().map(lambda v: num(v, 2))).reset_index()
    return fill("grid", task=task, n=len(runs), budget=claims.budget(runs), width=num(runs.width.median()),
                alphas=joined(runs[runs.regime == "progressive"].alpha, "{:g}".format) or "—",
                forms=joined(runs.recall_form[runs.recall_form != "—"]),
                table=md(table.rename(columns={"hard_at": f"hard @{AT}", "best": "hard best", **STABILITY}))) + "\n"


def joined(values: pd.Series, fmt=str) -> str:
    """The distinct values, sorted, each written by ``fmt``, joined by ``/``."""
    return "/".join(fmt(v) for v in sorted(set(values.dropna())))


def baselines(runs: list[dict[str, Any]], target: float = 3.0) -> list[str]:
    """The lines on the model-free baselines the runs were evaluated beside (their ``eval.baselines``, per
    split), and the runs' mean best hard accuracy against the hard split's: its multiple of the random-legal
    baseline (against ``target``) and whether it beats the greedy one; none for a task without baselines."""
    found = [{k: v for k, v in ((r.get("eval") or {}).get("baselines") or {}).items() if v} for r in runs]
    if not found or not all(found):
        return []
    names = sorted({k.split("/")[0] for s in found[0].values() for k in s}, key=lambda b: (b != "random", b))
    metrics = sorted({k.split("/", 1)[1] for s in found[0].values() for k in s})
    per_split = "; ".join(f"{split}: " + ", ".join(f"{b} " + " / ".join(f"{100 * s[f'{b}/{m}']:.1f}" for m in metrics)
                                                   for b in names) for split, s in found[0].items())
    lines = [fill("baselines", metrics=" / ".join(f"`{m}`" for m in metrics), per_split=per_split)]
    hard = [s.get("hard") or {} for s in found]
    if all("random/correct" in h and "greedy/correct" in h for h in hard):
        model = sum(max(r["eval"]["curves"]["accuracy"]["hard"]) for r in runs) / len(runs)
        random, greedy = (sum(h[k] for h in hard) / len(hard) for k in ("random/correct", "greedy/correct"))
        lines.append(fill("baselines_hard", model=f"{100 * model:.1f}", ratio=f"{model / random:.1f}",
                          target=f"{target:g}", random=f"{100 * random:.1f}",
                          met="met" if model / random >= target else "not met", greedy=f"{100 * greedy:.1f}",
                          beats="beats" if model > greedy else "does not beat"))
    return lines


def run_table(runs: pd.DataFrame) -> str:
    """A row per run of a separate sweep: its regime and seed, accuracies, and times."""
    f = ordered(runs)
    return md(pd.DataFrame({
        "regime": f.regime, "seed": f.seed.map(lambda v: str(int(v))), "val best": f.val_best.map(pct),
        "hard best (count)": f.hard_best.map(pct) + " (" + f.hard_best_at.map(num) + ")", f"hard @{AT}": f.hard_at.map(pct),
        "hard at the last count": f.hard_last.map(pct) + " (" + f["last"].map(num) + ")",
        "adaptive / iterations": f.adaptive.map(pct) + " / " + f.adaptive_iters.map(num),
        "solver / iterations": f.solver.map(pct) + " / " + f.solver_iters.map(num), "train s": f.train_s.map(num)}))


def section(folder: Path, summaries: list[dict[str, Any]], plots: Path, out: Path) -> str:
    """A sweep kept apart from the main grid (one preset of :data:`SECTIONS`): its runs and a figure."""
    runs = runs_frame(summaries)
    presets = sorted(runs.preset.unique())
    if len(presets) != 1 or presets[0] not in SECTIONS:
        raise SummaryError(f"{folder}: a separate section holds the runs of one preset of {', '.join(SECTIONS)}; "
                           f"these are of {', '.join(presets)}")
    if presets[0].startswith("seed-"):
        return seed_section(folder, summaries, runs, plots, out, presets[0])
    cfg = summaries[0]["train_config"]
    fig = figure(ordered(curves_frame(summaries)), folder.name, plots, out, folder.name, facet="regime", hue="split",
                 title=f"{SECTIONS[presets[0]]} (band: seeds' range)", cols=3, **ITERS)
    return fill("section", task=runs.task.iloc[0], title=SECTIONS[presets[0]], folder=folder, n=len(runs),
                commands=commands(runs), recall=cfg["recall"], norm=cfg["norm"], width=cfg["width"], steps=cfg["steps"],
                options={k: v for k, v in (cfg.get("task_options") or {}).items() if k != "data"},
                table=run_table(runs), baselines="".join("\n\n" + line for line in baselines(summaries)),
                figure=fig) + "\n"


def commands(runs: pd.DataFrame) -> str:
    """The commands that made ``runs``, each in backquotes."""
    return "; ".join(f"`{x}`" for x in sorted(runs.command.dropna().unique()))


def seed_section(folder: Path, summaries: list[dict[str, Any]], runs: pd.DataFrame, plots: Path, out: Path,
                 preset: str) -> str:
    """A seed preset's sweep: per task, the paper's table (:func:`experiments.table.paper_layout`), how many of
    the grid's runs are done, hard accuracy against test-time iterations per recall × residual, and ρ(J) at
    the probe's fixed points over training per recall."""
    parts = [f"## {SECTIONS[preset]} (`{preset}`)", ""]
    lrs = dict(zip(runs.name, runs.lr))
    for task in [t for t in TASK_ORDER if (runs.task == t).any()]:
        mine = runs[runs.task == task]
        cfg = next(s["train_config"] for s in sorted(summaries, key=lambda s: (s["train_config"].get("blocks") or 1) > 1)
                   if s["spec"]["task"] == task)  # a looped run's, not the untied baseline's, where there is one
        c = curves_frame([s for s in summaries if s["spec"]["task"] == task])
        c = ordered(c[c.split == "hard"].assign(panel=lambda f: f.recall + " · " + f.norm, lr=c.name.map(lrs)))
        t = traces_frame([s for s in summaries if s["spec"]["task"] == task and (s["train_config"].get("blocks") or 1) == 1])
        options = {k: v for k, v in (cfg.get("task_options") or {}).items() if k not in ("data", "test_data")}
        parts += [fill("seed_task", task=task, folder=folder, n=len(mine),
                       grid=len(get_preset(preset).runs(task=(task,))), commands=commands(mine), width=cfg["width"],
                       steps=cfg["steps"], batch=cfg["batch_size"], depth=cfg["max_iter"], options=options,
                       table=md(paper_layout(mine[mine.regime == claims.PAPER_REGIME])),
                       figure=figure(c, f"{folder.name}_{task}", plots, out, f"{folder.name} {task}", facet="panel",
                                     hue="lr", title=f"{task}, {preset}: hard split (band: seeds' range)", cols=4,
                                     **ITERS)), ""]
        if len(t) and t.rho.notna().any():
            parts += [figure(ordered(t, ("recall", "norm", "seed")), f"{folder.name}_{task}_rho", plots, out,
                             f"{folder.name} {task} ρ over training", x="fraction", y="rho", facet="recall", hue="norm",
                             percent=False, hline=1.0, cols=3, xlabel="fraction of training", ylabel="ρ(J)",
                             title=f"{task}, {preset}: ρ(∂f/∂z) at the probe's fixed points over training (median "
                                   "over the probe; band: seeds' range)"), ""]
    return "\n".join(parts)


def runs_note(frame: pd.DataFrame) -> str:
    """What the verdicts read: the preset, its runs in the paper's regime, the internal recall's form, the
    seeds a cell."""
    runs = claims.paper_runs(frame)
    if runs.empty:
        return "No runs in the paper's regime yet: every verdict is inconclusive."
    seeds = runs.groupby(["task", "lr", "recall", "norm"]).seed.nunique()
    return fill("runs_note", n=len(runs), preset=runs.preset.iloc[0], regime=claims.PAPER_REGIME,
                alphas=joined(runs.alpha, "{:g}".format),
                forms=joined(runs.recall_form[runs.recall == "internal"]) or "—",
                cells=len(seeds), seeds=f"{seeds.min()}" + (f"–{seeds.max()}" if seeds.max() > seeds.min() else "")
                + f" seed{'s' * int(seeds.max() > 1)}")


def claim_tables(frame: pd.DataFrame) -> str:
    """The numbers behind C2, C3 and C4 as tables."""
    def written(rows: pd.DataFrame, fmt, hi: str, lo: str) -> pd.DataFrame:
        gap = rows.pop("gap")
        return rows.assign(**{hi: gap.map(lambda g: fmt(g.hi)), lo: gap.map(lambda g: fmt(g.lo)),
                              "gap ± s.e.": gap.map(lambda g: f"{fmt(g.gap)} ± {fmt(g.se)}"),
                              "seeds": gap.map(lambda g: str(g.seeds))})

    parts = []
    c3 = claims.c3_rows(frame)
    if len(c3):
        c3 = written(c3.assign(best=c3.best.map(lambda g: f"{pct(g.hi)} / {pct(g.lo)}")), pct, f"internal @{AT}",
                     f"external @{AT}").rename(columns={"best": "best (internal / external)"})
        c3 = c3[["task", "lr", "norm", "budget", f"internal @{AT}", f"external @{AT}", "gap ± s.e.", "seeds",
                 "best (internal / external)", "status"]]  # the numbers first, the reading last
        parts += [f"C3, internal against external recall with an outer norm (hard @{AT}, %):", "", md(c3), ""]
    c2 = claims.c2_rows(frame)
    if len(c2):
        c2 = written(c2.assign(lr=c2.lr.map(lambda v: f"{v:g}"), axis=c2.axis.map({**claims.C2_AXES, **claims.C2_BESIDE})),
                     num, "outer (mean)", "inner (mean)")
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


def render(results: list[dict[str, Any]], plots: Path, out: Path, command: str,
           sections: dict[Path, list[dict[str, Any]]] | None = None,
           examples: dict[str, list[dict[str, Any]]] | None = None) -> str:
    """RESULTS.md's text (and its figures under ``plots``): the verdicts on every run given, read through
    :func:`experiments.claims.paper_runs`."""
    frame = runs_frame(results)
    every = runs_frame([*results, *(s for ss in (sections or {}).values() for s in ss)])
    verdicts = {f"{v.claim.lower()}{k}": x for v in claims.verdicts(every)
                for k, x in (("", v.verdict), ("_evidence", v.evidence), ("_change", v.change))}
    tasks = sorted(frame.task.unique(), key=lambda t: (TASK_ORDER.index(t) if t in TASK_ORDER else 99, t))
    machines = sorted({", ".join(f"{k} {v}" for k, v in r["machine"].items() if v is not None) for r in results})
    return fill(
        "document", command=command, date=f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}", n_runs=len(every),
        commands=commands(frame),
        presets=", ".join(sorted(frame.preset.unique())), commits=", ".join(sorted(frame.commit.unique())),
        machines="; ".join(machines), **verdicts, min_runs=claims.MIN_RUNS, reached=f"{claims.REACHED:.0%}",
        floor=f"{FLOOR:.0%}", fd_constant=claims.FD_CONSTANT, fd_moves=claims.FD_MOVES, runs_note=runs_note(every),
        claim_tables=claim_tables(every),
        tasks="\n".join(grid_section(t, frame[frame.task == t]) for t in tasks),
        sections="".join("\n" + section(f, s, plots, out) for f, s in (sections or {}).items() if s),
        examples="".join("\n" + examples_report.section(t, rs, plots, out)
                         for t, rs in sorted((examples or {}).items()))) + "\n"


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
        out = Path(a.out).resolve()
        command = " ".join(["python -m experiments.report", *(argv if argv is not None else sys.argv[1:])])
        text = render(results, Path(a.plots).resolve(), out, command, sections=sections, examples=examples)
    except (SummaryError, ValueError) as err:
        p.error(str(err))
    out.write_text(text)
    print(f"wrote {out} ({len(results) + sum(len(s) for s in sections.values())} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
