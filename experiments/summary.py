"""Run summaries: the kilobytes of a finished run that RESULTS.md is built from, kept in git.

A sweep's runs (``runs/sweep/<task>/<run>/``: checkpoints, metrics logs, ``result.json``) are
not committed, so on a fresh clone they are gone. What the report reads of a run is small:
its ``result.json`` with the training numbers re-read from the run's ``metrics.jsonl``. This
module writes that, one file per run, to ``results/runs/<task>/<run>.json`` (committed), and
reads it back::

    python -m experiments.summary import runs/sweep [--to results/runs]   # summaries of an older sweep
    python -m experiments.report results/runs                              # RESULTS.md from them

The sweep writes each finished run's summary itself (``--results``, default ``results/runs``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from deqloop.eval.report import PAPER_ITERATIONS, IterationCurves
from deqloop.files import atomic_write
from experiments.runlog import traces, training_numbers

SUMMARY_FORMAT = 1

# the fields of a run's result.json, in the order a summary stores them
KEYS = ("spec", "name", "preset", "train_config", "train_depth", "train", "eval", "analysis", "analysis_options",
        "seconds", "commit", "command", "machine", "traces")
# the fields a summary must have: what the report reads of every run
REQUIRED = ("spec", "name", "preset", "train_config", "train_depth", "train", "eval", "analysis", "commit", "machine")


class SummaryError(ValueError):
    """A summary or result file that cannot be read; the message names the file."""


def curves_of(evaluation: dict[str, Any]) -> IterationCurves | None:
    """An evaluation's accuracy curves (``deqloop.eval.EvalReport.to_dict()["curves"]``) as deqloop's
    :class:`~deqloop.eval.report.IterationCurves` (its ``at``: the paper's number, ``best``: the best over
    counts, the fewest iterations on ties); None for an evaluation without curves."""
    c = evaluation.get("curves") or {}
    return IterationCurves(c["iters"], c.get("train_depth"), dict(c["accuracy"])) if c.get("iters") else None


def paper_iterations(train_config: dict[str, Any] | None) -> int:
    """The test-time count of a run's paper number: 500, or 1 for the untied baseline (more than one
    block per iteration), which the paper trains and tests at one iteration (its ``fixed`` recall,
    ``experiments/run_all.bash:71-77`` of the authors' code)."""
    blocks = (train_config or {}).get("blocks") or 1
    return 1 if blocks > 1 else PAPER_ITERATIONS


def paper_numbers(evaluation: dict[str, Any], iterations: int = PAPER_ITERATIONS) -> dict[str, Any]:
    """``{"paper": {"iterations": 500, "accuracy": {split: acc@500 or None}}, "best": {split:
    [iterations, accuracy]}}`` of an evaluation (``deqloop.eval.EvalReport.to_dict()``), from its
    curves (:func:`curves_of`): what ``deqloop eval`` records itself since it reports the paper's number.
    ``iterations``: the count of the paper's number (:func:`paper_iterations`)."""
    c = curves_of(evaluation)
    splits = c.curves if c is not None else {}
    return {"paper": {"iterations": iterations, "accuracy": {k: c.at(k, iterations) for k in splits}},
            "best": {k: list(c.best(k)) for k in splits}}


def with_paper_numbers(run: dict[str, Any]) -> dict[str, Any]:
    """``run`` with its evaluation's paper number and best over counts (:func:`paper_numbers`) where its
    summary predates them: the run's own fields win."""
    ev, iterations = run.get("eval") or {}, paper_iterations(run.get("train_config"))
    own = {k: ev[k] for k in ("paper", "best") if k in ev and (k == "best" or ev[k].get("iterations") == iterations)}
    return run if len(own) == 2 else {**run, "eval": {**ev, **paper_numbers(ev, iterations), **own}}


def summarize(result: dict[str, Any], metrics_path: Path | None) -> dict[str, Any]:
    """The summary of one finished run: its ``result.json`` (the fields of ``KEYS`` first, in that
    order, then any others) with the training numbers re-read from its metrics log where that
    exists, its stability and loss traces (:func:`experiments.runlog.traces`) from the same log, and
    ``summary_format``. Its ``eval`` holds the paper's number, accuracy at :data:`PAPER_ITERATIONS`
    per split, and the best over counts (:func:`paper_numbers`; filled in for a result from before
    ``deqloop eval`` recorded them). JSON values only: what ``json.loads`` of the written file gives."""
    if not isinstance(result, dict):
        raise TypeError(f"a run's result is a dict, not {type(result).__name__}")
    out: dict[str, Any] = {"summary_format": SUMMARY_FORMAT}
    out.update((k, result[k]) for k in KEYS if k in result)
    out.update((k, v) for k, v in result.items() if k not in out)
    if isinstance(out.get("eval"), dict):
        out = with_paper_numbers(out)
    if metrics_path is not None and Path(metrics_path).exists():
        out["train"] = {**result.get("train", {}), **training_numbers(Path(metrics_path))}
        out["traces"] = traces(Path(metrics_path))
    # tuples become lists and numeric scalars floats, as in the file
    return json.loads(json.dumps(out, default=float))


def summary_path(root: Path, name: str) -> Path:
    """Where the summary of run ``name`` (``"<task>/<recall>-<norm>-<regime>-s<seed>"``) lies under ``root``."""
    parts = Path(name).parts
    if not name or Path(name).is_absolute() or ".." in parts or "." in parts or name != Path(name).as_posix():
        raise ValueError(f"not a run name: {name!r}")
    return Path(root) / f"{name}.json"


def _missing(summary: dict[str, Any]) -> list[str]:
    return [k for k in ("summary_format", *REQUIRED) if k not in summary]


def write_summary(summary: dict[str, Any], root: Path, *, verbose: bool = False) -> Path:
    """Write ``summary`` to ``summary_path(root, summary["name"])`` atomically and return the path;
    a file that already holds the same bytes is left alone (``verbose`` prints which: wrote or unchanged)."""
    missing = _missing(summary)
    if missing:
        raise ValueError(f"summary of {summary.get('name', '?')!r} lacks {', '.join(missing)}")
    path = summary_path(root, summary["name"])
    text = json.dumps(summary, indent=1, default=float) + "\n"  # one-space indentation, the summary's key order
    changed = not (path.exists() and path.read_text() == text)
    if changed:
        atomic_write(path, text)
    if verbose:
        print(f"{'wrote' if changed else 'unchanged'} {path}")
    return path


def read_json(path: Path, what: str = "JSON object") -> dict[str, Any]:
    """The JSON object in ``path``; :class:`SummaryError` naming the file where it is none."""
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SummaryError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(value, dict):
        raise SummaryError(f"{path}: not a {what} (a JSON {type(value).__name__}, not an object)")
    return value


def summarize_sweep(sweep_root: Path) -> list[dict[str, Any]]:
    """The summaries of every ``result.json`` under ``sweep_root`` (each with the ``metrics.jsonl``
    beside it), sorted by run name; a result without a name is named by its folder under the root."""
    found = []
    for path in Path(sweep_root).rglob("result.json"):
        s = summarize(read_json(path), path.parent / "metrics.jsonl")
        s.setdefault("name", path.parent.relative_to(sweep_root).as_posix())
        found.append((s["name"], str(path), s))
    return [s for _, _, s in sorted(found, key=lambda t: t[:2])]


def import_runs(sweep_root: Path, root: Path, *, verbose: bool = False) -> list[Path]:
    """Write the summary of every finished run under ``sweep_root`` to ``root`` and return their
    paths; ``verbose`` prints each (``wrote`` or ``unchanged``)."""
    summaries = summarize_sweep(sweep_root)
    names = [s["name"] for s in summaries]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise SummaryError(f"{sweep_root}: several result.json files name the run(s) {', '.join(twice)}; "
                           "import one sweep at a time")
    return [write_summary(s, root, verbose=verbose) for s in summaries]


def load_summaries(root: Path) -> list[dict[str, Any]]:
    """Every summary under ``root``, sorted by run name. A file that is not a summary, or lies
    elsewhere than its run name says, raises :class:`SummaryError` naming the file."""
    root = Path(root)
    summaries = []
    for path in root.rglob("*.json"):
        s = read_json(path, "run summary")
        if s.get("summary_format") != SUMMARY_FORMAT:
            raise SummaryError(f"{path}: summary_format is {s.get('summary_format')!r}, this code reads {SUMMARY_FORMAT}")
        missing = _missing(s)
        if missing:
            raise SummaryError(f"{path}: the summary lacks {', '.join(missing)}")
        where = path.relative_to(root).with_suffix("").as_posix()
        if s["name"] != where:
            raise SummaryError(f"{path}: holds the summary of run {s['name']!r}, which belongs in "
                               f"{summary_path(root, str(s['name']))}")
        summaries.append(s)
    return sorted(summaries, key=lambda s: s["name"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.summary", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="write the summaries of a sweep's finished runs")
    imp.add_argument("sweep", help="root folder of a sweep (holds <task>/<run>/result.json)")
    imp.add_argument("--to", default="results/runs", help="folder of the summaries (default results/runs)")
    a = p.parse_args(argv)
    sweep_root, root = Path(a.sweep), Path(a.to)
    if not sweep_root.is_dir():
        p.error(f"no such folder: {sweep_root}")
    try:
        paths = import_runs(sweep_root, root, verbose=True)
    except SummaryError as err:
        p.error(str(err))
    print(f"{len(paths)} run summaries from {sweep_root} in {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
