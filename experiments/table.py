"""Every run summary as one row of a pandas DataFrame: the results table that the report and the
claims' rules query.

    frame = runs_frame(load_results(Path("results/runs")))
    frame.groupby(["task", "recall", "norm"])["hard_at"].mean()

One row per run (:data:`COLUMNS` read from the summary, plus the derived columns of :func:`runs_frame`);
a value a summary does not hold is NaN, never filled in. :func:`curves_frame` and :func:`traces_frame`
give the long forms of the accuracy curves and of the stability monitor's traces, for the figures;
:func:`paper_layout` the paper's table.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from string import Template
from typing import Any

import pandas as pd

from experiments.presets import REGIMES
from experiments.summary import PAPER_ITERATIONS, load_summaries, summarize_sweep, with_paper_numbers

AT = PAPER_ITERATIONS
"""The paper's number: accuracy after this many test-time iterations, at the last training step."""
FLOOR = 0.20
"""A claim about accuracy is decided only where one of the compared sides reaches this on the hard split."""
OUTER = ("post", "sandwich")  # the norm on the stream after the add (the paper's outer norm); the rest are inner
ROW_ORDER = {"recall": ("none", "external", "internal", "fixed"), "norm": ("pre", "peri", "gru", "post", "sandwich"),
             "regime": REGIMES}
"""The paper's order of rows (``experiments/run_all.bash`` of its code), then the presets' regimes; other values
follow."""
TEMPLATE = Path(__file__).with_name("results_template.md")
"""RESULTS.md's prose: the document, then the blocks it repeats (:func:`fill`)."""
SPEC = ("task", "recall", "norm", "regime", "seed")

# column -> path of the value in a run summary
COLUMNS = {
    **{k: f"spec.{k}" for k in SPEC}, "preset": "preset", "commit": "commit", "command": "command",
    "steps": "train_config.steps", "lr": "train_config.lr", "width": "train_config.width",
    "alpha": "train_config.alpha", "blocks": "train_config.blocks", "recall_maps": "train_config.recall_maps",
    "hard_at": "eval.paper.accuracy.hard", "val_at": "eval.paper.accuracy.val",  # @500 (@1 untied), the paper's number
    "hard_best_at": "eval.best.hard.0", "hard_best": "eval.best.hard.1", "val_best": "eval.best.val.1",
    "last": "eval.curves.iters.-1", "hard_last": "eval.curves.accuracy.hard.-1",  # at the largest count tested
    "adaptive": "eval.settling.hard.accuracy", "adaptive_iters": "eval.settling.hard.iterations_mean",
    "plain_reach": "eval.settling.hard.converged",  # plain iteration's state stopped changing (the paper's reach)
    "solver": "eval.solver.hard.accuracy", "solver_iters": "eval.solver.hard.iterations_mean",
    "anderson_reach": "analysis.hard.converged_fraction",  # Anderson from z0 = e on the probe
    "clusters": "analysis.hard.distinct_fixed_points", "spread": "analysis.hard.fixed_point_spread",
    "rho": "analysis.hard.spectral_radius_median", "contractive": "analysis.hard.contractive_fraction",
    "resolvent": "analysis.hard.resolvent_norm_median", "ift": "analysis.hard.input_sensitivity_median",
    "fd": "analysis.hard.local_smoothness_median", "fd_input": "analysis.hard.input_fd_median",
    "bwd": "analysis.hard.backward_converged_fraction", "probe_n": "analysis_options.n",
    "rho_wx": "analysis.hard.weights.injection_spectral_radius",  # ρ(W_x), the paper's diagnostic
    "grad_median": "train.grad_norm_median", "grad_max": "train.grad_norm_max", "late_loss": "train.late_loss",
    "train_s": "seconds.train",
}
TEXT = ("name", "task", "recall", "norm", "regime", "preset", "commit", "command", "recall_maps")


def pct(v: float) -> str:
    """A fraction in % with one decimal; — for a missing or non-finite value."""
    return "—" if v is None or not math.isfinite(v) else f"{100 * v:.1f}"


def num(v: float, digits: int = 3) -> str:
    """A number to ``digits`` significant digits; — for a missing or non-finite value."""
    return "—" if v is None or not math.isfinite(v) else f"{v:.{digits}g}"


def mean_se(x: pd.Series) -> tuple[float, float, int]:
    """The mean, its standard error (sample s.d. / √n; NaN for fewer than two values) and n, of the finite values."""
    x = x.dropna()
    n = len(x)
    return (float(x.mean()) if n else math.nan, float(x.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan, n)


def get(d: Any, path: str) -> Any:
    """The value at a dotted ``path`` of nested dicts (a number, −1 the last, indexes a list); None where any step
    is missing."""
    for key in path.split("."):
        if isinstance(d, list) and key.lstrip("-").isdigit() and -len(d) <= int(key) < len(d):
            d = d[int(key)]
        elif isinstance(d, dict) and key in d:
            d = d[key]
        else:
            return None
    return d


def load_results(root: Path) -> list[dict[str, Any]]:
    """The runs under ``root``, sorted by name: a sweep's runs summarized from their ``result.json``
    and ``metrics.jsonl`` where ``root`` holds any ``result.json``, else the run summaries under it.
    A file that cannot be read raises :class:`~experiments.summary.SummaryError` naming it."""
    root = Path(root)
    if next(root.rglob("result.json"), None) is not None:
        return summarize_sweep(root)
    return load_summaries(root)


def family(recall: str, norm: str, blocks: Any) -> str:
    """The group the framework predicts an order for: recall + outer norm, recall + inner norm, no
    recall; a model of several untied blocks is the baseline."""
    if blocks and int(blocks) > 1:
        return "untied"
    if recall == "none":
        return "no recall"
    return "recall + outer" if norm in OUTER else "recall + inner"


def runs_frame(runs: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per run, sorted by name: ``name``, :data:`COLUMNS` (accuracy @500 and the best over counts with
    its count from the summary's ``eval.paper``/``eval.best``), ``recall_form`` (which internal recall:
    the paper's ``"shared"`` pair or, also for a run whose configuration predates the option, ``"per_sublayer"``;
    ``"—"`` for the other recalls), ``family`` (:func:`family`) and ``grad_spread`` (max / median
    gradient norm over training)."""
    frame = pd.DataFrame([{"name": r.get("name"), **{c: get(with_paper_numbers(r), p) for c, p in COLUMNS.items()}}
                          for r in runs], columns=["name", *COLUMNS])
    numeric = [c for c in frame.columns if c not in TEXT]
    frame[numeric] = frame[numeric].apply(pd.to_numeric, errors="coerce").astype(float)
    internal = frame.recall == "internal"
    frame["recall_form"] = frame.recall_maps.where(frame.recall_maps.notna(), "per_sublayer").where(internal, "—")
    frame["family"] = [family(*x) for x in zip(frame.recall, frame.norm, frame.blocks.fillna(1))]
    frame["grad_spread"] = frame.grad_max / frame.grad_median
    return frame.sort_values("name", kind="stable").reset_index(drop=True)


def _long(runs: list[dict[str, Any]], rows) -> pd.DataFrame:
    """A long-form table: a row per item of ``rows(run)`` (dicts), with the run's name and spec."""
    return pd.DataFrame([{"name": r.get("name"), **{k: get(r, f"spec.{k}") for k in SPEC}, **row}
                         for r in runs for row in rows(r)])


def curves_frame(runs: list[dict[str, Any]]) -> pd.DataFrame:
    """The accuracy curves in long form: one row per run, split and test-time count."""
    return _long(runs, lambda r: [{"split": split, "iters": t, "accuracy": a}
                                  for split, acc in (get(r, "eval.curves.accuracy") or {}).items()
                                  for t, a in zip(get(r, "eval.curves.iters") or [], acc)])


def traces_frame(runs: list[dict[str, Any]]) -> pd.DataFrame:
    """The stability monitor's records over training in long form (``fraction``: the probe's step over
    the run's steps), one row per run and probe; empty for runs trained without the monitor."""
    def rows(r):
        stab, steps = get(r, "traces.stability") or {}, get(r, "train.steps") or get(r, "train_config.steps")
        return [{"fraction": rec["step"] / steps, **rec} for rec in
                (dict(zip(stab.get("fields") or [], values)) for values in stab.get("rows") or [])]

    return _long(runs, rows)


def ordered(frame: pd.DataFrame, by: tuple[str, ...] = ("recall", "norm", "regime", "seed"),
            order: dict[str, tuple[str, ...]] = ROW_ORDER) -> pd.DataFrame:
    """Rows sorted by the columns ``by``: those named in ``order`` in its order (values it lacks after them,
    by name; default the paper's rows, :data:`ROW_ORDER`), the others by value."""
    def key(values: pd.Series) -> pd.Series:
        if values.name not in order:
            return values
        known = order[values.name]
        return values.map(lambda v: f"{known.index(v) if v in known else len(known):03d} {v}")

    return frame.sort_values(list(by), key=key, kind="stable")


def mean_pm(x: pd.Series) -> str:
    """Accuracies as ``mean ± s.e.`` in % (``± —`` for one value; ``(n of m)`` where only n of the m are
    numbers)."""
    mean, se, n = mean_se(x)
    return "—" if n == 0 else f"{pct(mean)} ± {pct(se)}" + (f" ({n} of {len(x)})" if n < len(x) else "")


def md(frame: pd.DataFrame) -> str:
    """``frame`` as a Markdown table, values as they are (— for a missing one)."""
    return frame.to_markdown(index=False, missingval="—", disable_numparse=True)


def fill(block: str, **values: Any) -> str:
    """Block ``block`` of RESULTS.md's template (:data:`TEMPLATE`) filled with ``values``: ``"document"``, the
    text before the first line ``<!-- block NAME -->``, or the text after such a line, trailing newlines cut."""
    parts = re.split(r"^<!-- block (\w+) -->\n", TEMPLATE.read_text(), flags=re.M)
    return Template(dict(zip(["document", *parts[1::2]], parts[::2]))[block].rstrip("\n")).substitute(values)


def paper_layout(frame: pd.DataFrame) -> pd.DataFrame:
    """The paper's table of ``frame``'s runs: a row per recall × norm in the paper's order, per learning rate
    the hard accuracy @:data:`AT` and, beside it, the best over counts, each :func:`mean_pm` over seeds."""
    table = frame.pivot_table(index=["recall", "norm"], columns="lr", values=["hard_at", "hard_best"], aggfunc=mean_pm)
    table.columns = [f"lr {lr:g} {'@' + str(AT) if v == 'hard_at' else 'best'}" for v, lr in table.columns]
    table = table.reset_index()
    return ordered(table, ("recall", "norm"))[["recall", "norm", *sorted(table.columns[2:], key=lambda c: (
        "best" in c, float(c.split()[1])))]].fillna("—")


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m experiments.table", description="Print the paper's table "
                                "(paper_layout) of the run summaries under a folder, for one task and regime.")
    p.add_argument("summaries", help="folder of run summaries (e.g. results/seed_cpu), or of a sweep")
    p.add_argument("--task", default="prefix_sums", help="the task whose runs to tabulate (default prefix_sums)")
    p.add_argument("--regime", default="paper", help="the training regime (default paper, the paper's)")
    a = p.parse_args(argv)
    if not Path(a.summaries).is_dir():
        p.error(f"no such folder: {a.summaries}")
    frame = runs_frame(load_results(Path(a.summaries)))
    frame = frame[(frame.task == a.task) & (frame.regime == a.regime)]
    if frame.empty:
        p.error(f"no runs of task {a.task!r} in regime {a.regime!r} under {a.summaries}")
    print(md(paper_layout(frame)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
