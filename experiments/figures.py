"""The report's figures, each answering one question: lines of a long-form table drawn in facets, the
seeds of a line as a band (their minimum to maximum) around its mean, the legend outside the axes."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pandas as pd


ITERS = dict(x="iters", y="accuracy", xlog=True, xlabel="test-time iterations", ylabel="exact match (%)")
"""The keywords of :func:`facets` for accuracy against test-time iterations."""


def figure(data: pd.DataFrame, name: str, plots: Path, out: Path, alt: str, **kw: Any) -> str:
    """:func:`facets` of ``data`` to ``plots/name.png``, as a Markdown image line for the document ``out``."""
    return f"![{alt}]({os.path.relpath(facets(data, plots / f'{name}.png', **kw), out.parent)})"


def facets(data: pd.DataFrame, path: Path, *, x: str, y: str, facet: str, hue: str, title: str, xlabel: str,
           ylabel: str, cols: int = 4, xlog: bool = False, percent: bool = True, hline: float | None = None,
           vline: float | None = None) -> Path:
    """One panel per value of ``facet`` (rows of ``cols``), in each a line per value of ``hue``: the mean
    of ``y`` over the rows sharing (``facet``, ``hue``, ``x``) — the seeds — with their range as a band.
    ``percent`` draws ``y`` × 100 on 0–100; ``hline``/``vline`` a grey reference line. Writes ``path``."""
    import matplotlib

    matplotlib.use("Agg", force=False)  # no display needed, unless a backend was chosen already
    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys(data[facet]))
    hues = list(dict.fromkeys(data[hue]))
    cols = min(cols, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols + 1.5, 2.6 * rows + 0.6), squeeze=False,
                             sharex=True, sharey=True)
    scale = 100 if percent else 1
    for ax, panel in zip(axes.flat, panels):
        sub = data[data[facet] == panel]
        for i, h in enumerate(hues):
            g = sub[sub[hue] == h].groupby(x)[y].agg(["mean", "min", "max", "count"]).reset_index()
            if g.empty:
                continue
            ax.plot(g[x], scale * g["mean"], color=f"C{i}", marker="o", ms=2.5, lw=1.3, label=str(h))
            if (g["count"] > 1).any():
                ax.fill_between(g[x], scale * g["min"], scale * g["max"], color=f"C{i}", alpha=0.2, lw=0)
        seeds = sub.groupby([hue, x])[y].count().max()
        ax.set_title(f"{panel}" + (f" ({seeds} seeds)" if seeds > 1 else ""), fontsize=9)
        if xlog:
            ax.set_xscale("log")
        if percent:
            ax.set_ylim(-3, 103)
        for ref, draw in ((hline, ax.axhline), (vline, ax.axvline)):
            if ref is not None:
                draw(ref, color="grey", ls=":", lw=1)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8, labelbottom=True)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel(xlabel, fontsize=9)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel, fontsize=9)
    found: dict[str, Any] = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            found.setdefault(label, handle)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1 - 1.5 / fig.get_figwidth(), 1))
    fig.legend(list(found.values()), list(found), loc="center right", fontsize=8, frameon=False, title=hue, title_fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
