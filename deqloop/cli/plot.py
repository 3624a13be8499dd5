"""``deqloop plot``: the stability traces of several training runs on one figure.

    deqloop plot runs/a runs/b runs/c --out stability.png

Six panels over training steps, one line per run (labelled by its folder name): ρ(∂f/∂z) (the
median over the monitor's probe), the reachable fraction (plain iteration converged), the
implicit backward solve's converged fraction, the training loss, and two of the paper's weight
diagnostics, ρ(W_x) of the state injection and ‖W_Q‖₂‖W_K‖₂ (:mod:`deqloop.analysis.weights`).
The stability records come from runs trained with ``--stability-every N`` (see
:mod:`deqloop.train.monitor`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from deqloop.cli.flags import nonempty
from deqloop.files import OutputError

__all__ = ["PANELS", "add", "figure_path", "plot_stability", "read_run", "run"]

# (record kind, field, panel title): "train" is a training step's line, "stability" the monitor's.
PANELS = (
    ("stability", "rho", "ρ(∂f/∂z) at the fixed point (probe median)"),
    ("stability", "plain_converged", "reachable: plain iteration converged"),
    ("stability", "backward_converged", "implicit backward solve converged"),
    ("train", "loss", "training loss"),
    ("stability", "injection_spectral_radius", "ρ(W_x): the state injection's weight"),
    ("stability", "qk_norm_product", "‖W_Q‖₂ ‖W_K‖₂"),
)
FRACTIONS = ("plain_converged", "backward_converged")  # panels drawn on [0, 1]


def add(sub: Any) -> None:
    p = sub.add_parser(
        "plot", help="stability traces of training runs on one figure",
        description="Draw, for one or more run folders (written by deqloop train --stability-every N), the stability "
        "monitor's traces over training steps: spectral radius of the loop's Jacobian, reachable fraction, backward "
        "convergence, the training loss, and the paper's rho(W_x) and ‖W_Q‖‖W_K‖; one panel each, one line per run. "
        "Writes a PNG.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders (each holds a metrics.jsonl)")
    p.add_argument("--out", default="stability.png", type=nonempty, help="the PNG to write [default: stability.png]")
    p.add_argument("--dpi", type=int, default=120, help="resolution [default: 120]")
    p.set_defaults(func=run)


def read_run(folder: str | Path) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """``{"train": {field: [(step, value), ...]}, "stability": {...}}`` from ``folder/metrics.jsonl``;
    a last line torn by a kill is skipped. A folder without metrics is a :class:`ConfigError`, a
    malformed log a :class:`~deqloop.train.metrics.MetricsError` naming the file and line."""
    from deqloop.errors import ConfigError
    from deqloop.train.metrics import read_metrics

    path = Path(folder) / "metrics.jsonl"
    if not path.exists():
        raise ConfigError(f"{folder}: no metrics.jsonl there (not a training run folder)")
    traces: dict[str, dict[str, list[tuple[int, float]]]] = {"train": {}, "stability": {}}
    for record in read_metrics(path):
        kind = record.get("kind", "train")
        if kind not in traces:
            continue
        for key, value in record.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step":
                traces[kind].setdefault(key, []).append((record["step"], float(value)))
    return traces


def figure_path(out: str | Path) -> Path:
    """Where ``--out`` puts the figure: ``out/stability.png`` for an existing folder, ``out.png``
    for a name without a suffix, else ``out``; its folder is created and checked writable."""
    from deqloop.files import writable_folder

    if not isinstance(out, (str, Path)) or not str(out):
        raise OutputError(f"--out must name a PNG file, got {out!r}")
    out = Path(out)
    if out.is_dir():
        out = out / "stability.png"
    elif not out.suffix:
        out = out.with_name(out.name + ".png")
    writable_folder(out.parent, "the folder of --out")
    return out


def _labels(folders: list[Path]) -> list[str]:
    """Folder names; where two runs share one, their parent folder's name too."""
    names = [f.resolve().name for f in folders]
    return [f"{f.resolve().parent.name}/{n}" if names.count(n) > 1 else n for f, n in zip(folders, names)]


def plot_stability(runs: list[str | Path], out: str | Path, *, dpi: int = 120) -> Path:
    """Write the figure of :data:`PANELS` for the run folders ``runs`` to ``out`` (a PNG; see
    :func:`figure_path`) atomically; returns the path written."""
    from matplotlib.figure import Figure

    from deqloop.files import save_figure

    from deqloop.validate import integer

    integer("dpi", dpi)
    out = figure_path(out)
    folders = [Path(r) for r in runs]
    data = [read_run(f) for f in folders]  # every folder checked before anything is drawn
    fig = Figure(figsize=(14, 7), layout="constrained")
    axes = fig.subplots(2, 3).reshape(-1)
    for label, traces in zip(_labels(folders), data):
        for ax, (kind, field, _) in zip(axes, PANELS):
            points = traces[kind].get(field, [])
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, marker="." if kind == "stability" else None, label=label)
    for ax, (kind, field, title) in zip(axes, PANELS):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        if field in ("rho", "injection_spectral_radius"):
            ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        elif field in FRACTIONS:
            ax.set_ylim(-0.05, 1.05)
        if ax.lines:
            ax.legend(fontsize=8)
    return save_figure(fig, out, dpi=dpi)


def run(args: argparse.Namespace) -> int:
    for folder in args.runs:
        traces = read_run(folder)
        if not traces["stability"]:
            print(f"note: {folder} has no stability records (train it with --stability-every N)", file=sys.stderr)
    print(plot_stability(args.runs, args.out, dpi=args.dpi))
    return 0
