"""The paper's claims C1–C4 (Labovich 2026, "Stability and Generalization in Looped Transformers"), each a
rule over the results table (:func:`experiments.table.runs_frame`) that returns a :class:`Verdict`: the
verdict, the evidence it rests on and what in particular would change it. Each rule's statement is written
beside its verdict in RESULTS.md's template (``experiments/results_template.md``) with the thresholds of
this module. A rule never fills in a number a summary lacks: it says which and stays inconclusive.

The rules read the runs of the paper's regime of one seed preset (:func:`paper_runs`). Accuracies
and stability numbers are compared between groups of cells (a cell: one recall × residual at one
task and learning rate, its seeds), each group the mean of its cells' means, its standard error
from the seeds alone (:func:`compare`): a gap decides only beyond 2 s.e., and a cell with one seed
has none, so that one seed a cell is "inconclusive", with the seeds it needs. The paper's ``gru`` row
(a GRU-cell merge with its peri norm, ``deepthinking/models/attention.py:360-366`` and
``experiments/run_all.bash:17-19`` of the authors' code) counts with the inner norms: no norm acts on
the stream after the merge, though the cell's gate keeps each coordinate within max(|h|, 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from experiments.table import AT, FLOOR, OUTER, num, pct

SUPPORTED, CONTRADICTED, INCONCLUSIVE = "supported", "contradicted", "inconclusive at this budget"
PAPER_REGIME = "paper"  # α = 1 progressive loss with z0's gradient, the paper's schedule (experiments/presets.py)
PRESETS = ("seed-gpu", "seed-cpu")  # the verdicts read the first of these that has runs in the paper's regime
MIN_RUNS = 3  # recall-free runs at fixed points C1 needs
REACHED = 0.5  # a probe counts as at fixed points when at least this fraction converged (Anderson and plain iteration)
FD_CONSTANT, FD_MOVES = 0.05, 0.5  # ‖Δz*‖/‖Δe‖ from z0 = e: locally constant below, following the input above
ORDER = ("recall + outer", "recall + inner", "no recall")
RECALL_FAMILIES = ("internal", "external")


@dataclass(frozen=True)
class Verdict:
    """A claim's verdict on the runs; its rule and what would change it in general are RESULTS.md's prose
    (``experiments/results_template.md``), beside the thresholds of this module."""

    claim: str
    verdict: str  # SUPPORTED | CONTRADICTED | INCONCLUSIVE
    evidence: str
    change: str = ""  # what would change this verdict in particular, after the template's text


def budget(runs: pd.DataFrame) -> str:
    """The training budget of ``runs`` in words: steps and presets."""
    steps = "/".join(str(int(s)) for s in sorted(runs["steps"].dropna().unique()))
    return f"{steps} steps ({', '.join(sorted(runs['preset'].dropna().unique()))} preset)"


def paper_runs(frame: pd.DataFrame) -> pd.DataFrame:
    """The runs the verdicts read: the paper's regime, of the first of :data:`PRESETS` that has any."""
    paper = frame[frame.regime == PAPER_REGIME]
    for preset in PRESETS:
        if (paper.preset == preset).any():
            return paper[paper.preset == preset]
    return paper.iloc[:0]


@dataclass(frozen=True)
class Gap:
    """Two groups of cells compared on one column: each side the mean of its cells' means over seeds,
    its s.e. √(Σ s_c²/n_c)/k over its k cells (NaN where a cell has fewer than two seeds)."""

    hi: float
    lo: float
    se: float
    seeds: int  # the fewest seeds of a cell on either side

    @property
    def gap(self) -> float:
        return self.hi - self.lo

    @property
    def sign(self) -> int:
        """+1 or −1 where the gap exceeds 2 s.e., else 0."""
        return 0 if not (math.isfinite(self.se) and abs(self.gap) > 2 * self.se) else 1 if self.gap > 0 else -1

    def why(self) -> str:
        """Why the gap decides nothing (empty when it does): too few seeds, or within 2 s.e. with the
        seeds a cell at which it would be 2 s.e. (the s.e. shrinking as 1/√n)."""
        if self.seeds == 0:
            return "not measured on at least one side"
        if self.seeds < 2:
            return NEEDS_SEEDS.format(self.seeds)
        if self.sign or not math.isfinite(self.gap):
            return ""
        if self.gap == 0:
            return "no gap"
        return f"within 2 s.e.: ≈ {math.ceil(round(self.seeds * (2 * self.se / abs(self.gap)) ** 2, 6)):,} seeds a cell would make it 2 s.e."

    def text(self, fmt=pct, unit: str = "", why: bool = True) -> str:
        """``hi vs lo, gap g, 2-s.e. interval [a, b]`` and, with ``why`` and two seeds a cell or more, why it
        decides nothing."""
        interval = (f", 2-s.e. interval [{fmt(self.gap - 2 * self.se)}, {fmt(self.gap + 2 * self.se)}]{unit}"
                    if math.isfinite(self.se) else "")
        why = self.why() if why and self.seeds != 1 else ""
        return f"{fmt(self.hi)} vs {fmt(self.lo)}{unit}, gap {fmt(self.gap)}{unit}{interval}" + (f" ({why})" if why else "")


NEEDS_SEEDS = "{} seed a cell: no seed s.e., so nothing is decided; needs ≥ 2 seeds a cell (the preset runs 3)"


def side(runs: pd.DataFrame, col: str) -> tuple[float, float, int]:
    """``col`` over the cells (recall × norm) of ``runs``: the mean of the cells' means over seeds, its s.e.
    √(Σ s_c²/n_c)/k over the k cells (NaN where a cell has fewer than two seeds), and the fewest seeds of a cell."""
    s = runs.dropna(subset=[col]).groupby(["recall", "norm"])[col].agg(["mean", "var", "count"])
    if s.empty:
        return math.nan, math.nan, 0
    return s["mean"].mean(), math.sqrt((s["var"] / s["count"]).sum(min_count=len(s))) / len(s), int(s["count"].min())


def compare(hi: pd.DataFrame, lo: pd.DataFrame, col: str) -> Gap:
    """:class:`Gap` of ``col`` between the runs ``hi`` and ``lo`` (:func:`side`)."""
    (mh, sh, nh), (ml, sl, nl) = side(hi, col), side(lo, col)
    return Gap(mh, ml, math.sqrt(sh ** 2 + sl ** 2), min(nh, nl))


def claim1(frame: pd.DataFrame) -> Verdict:
    runs = paper_runs(frame)
    none, rec = runs[runs.family == "no recall"], runs[runs.family.isin(ORDER[:2])]
    usable = none[(none.anderson_reach >= REACHED) & (none.plain_reach >= REACHED)]
    drift = none[(none.anderson_reach >= REACHED) & ~(none.plain_reach >= REACHED)]
    measured = usable.dropna(subset=["fd_input"])
    evidence = (f"{len(none)} recall-free runs ({budget(none) if len(none) else 'none'}), {len(usable)} at fixed "
                f"points ({', '.join(usable.name) or 'none'}): clusters over the probe "
                f"{', '.join(f'{num(c)} of {num(n)}' for c, n in zip(usable.clusters, usable.probe_n)) or '—'}, "
                f"finite difference from z₀ = e {', '.join(num(v) for v in measured.fd_input) or '—'}, "
                f"‖(I − J)⁻¹‖ {', '.join(num(v) for v in usable.resolvent) or '—'}"
                + (f"; not counted, Anderson converging where plain iteration does not settle: "
                   + ", ".join(f"{n} (ρ(J) {num(r)}, ‖(I − J)⁻¹‖ {num(s)}, finite difference {num(f)})"
                               for n, r, s, f in zip(drift.name, drift.rho, drift.resolvent, drift.fd_input))
                   if len(drift) else "")
                + f"; hard @{AT}: recall-free at most {pct(none.hard_at.max())} %, recall runs up to "
                f"{pct(rec.hard_at.max())} %; IFT sensitivity, recall runs: median {num(rec.ift.median())} "
                "(0 by construction without recall: the block never sees e)")
    passes = none[none.hard_at >= FLOOR]
    moves = measured[measured.fd_input >= FD_MOVES]
    if not passes.empty or not moves.empty:
        return Verdict("C1", CONTRADICTED, evidence + f"; against it: {', '.join([*passes.name, *moves.name])}")
    missing = [f"{none.hard_at.isna().sum()} summaries lack accuracy @{AT}"] * bool(none.hard_at.isna().any())
    missing += [f"{len(usable) - len(measured)} lack the finite difference from z₀ = e"] * (len(measured) < len(usable))
    missing += [f"{len(usable)} recall-free runs at fixed points, the rule needs {MIN_RUNS}"] * (len(usable) < MIN_RUNS)
    if missing:
        return Verdict("C1", INCONCLUSIVE, evidence + "; " + "; ".join(missing))
    if (measured.fd_input <= FD_CONSTANT).all():
        return Verdict("C1", SUPPORTED, evidence)
    return Verdict("C1", INCONCLUSIVE, evidence + f"; finite differences between {FD_CONSTANT} and {FD_MOVES}")


C2_AXES = {"plain_reach": "reachable by plain iteration (hard split, 500 iterations)",
           "bwd": "implicit backward solve converged (probe, runs with fixed points on it)",
           "stability": "−log₁₀ gradient-norm spread (max/median over training)"}
C2_BESIDE = {"anderson_reach": "Anderson converged", "resolvent": "‖(I − J)⁻¹‖", "rho": "ρ(J)"}


def c2_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Per task, learning rate and recall family of the paper's runs, each C2 axis and the measures beside
    them: outer {post, sandwich} against inner (every other norm, the GRU row with its peri norm), :class:`Gap`s."""
    runs = paper_runs(frame)
    rec = runs[runs.family.isin(ORDER[:2])].assign(  # the backward solve speaks of conditioning only at fixed points
        stability=lambda f: -np.log10(f.grad_spread), bwd=lambda f: f.bwd.where(f.anderson_reach > 0))
    rows = []
    for (task, lr, recall), g in rec.groupby(["task", "lr", "recall"]):
        outer, inner = g[g.family == ORDER[0]], g[g.family == ORDER[1]]
        if len(outer) and len(inner):
            gaps = {axis: compare(outer, inner, axis) for axis in (*C2_AXES, *C2_BESIDE)}
            rows += [{"task": task, "lr": lr, "recall": recall, "axis": axis, "gap": gap,
                      "outer": "/".join(sorted(set(outer.norm))), "inner": "/".join(sorted(set(inner.norm)))}
                     for axis, gap in gaps.items() if axis in C2_AXES or gap.seeds]
    return pd.DataFrame(rows, columns=["task", "lr", "recall", "axis", "gap", "outer", "inner"])


def claim2(frame: pd.DataFrame) -> Verdict:
    rows = c2_rows(frame)
    if rows.empty:
        return Verdict("C2", INCONCLUSIVE, "no recall family has both outer- and inner-norm runs in the "
                       "paper's regime")
    parts, spent = [], budget(paper_runs(frame))
    for (task, lr, recall), g in rows.groupby(["task", "lr", "recall"], sort=False):
        r0 = g.iloc[0]
        axes = "; ".join(f"{C2_AXES.get(r.axis) or C2_BESIDE[r.axis]} {r.gap.text(num)}" for r in g.itertuples())
        seeds = min((r.gap.seeds for r in g.itertuples() if r.axis in C2_AXES and r.gap.seeds), default=0)
        parts.append(f"{task}, lr {lr:g}, {recall} recall ({r0.outer} against {r0.inner}; {spent}): " + axes
                     + (f" — {NEEDS_SEEDS.format(seeds)}" if seeds == 1 else ""))
    decided = rows[rows.axis.isin(list(C2_AXES))]
    signs = decided.gap.map(lambda x: x.sign)
    evidence = "; ".join(parts)
    if (signs < 0).any():
        against = decided[signs < 0]
        return Verdict("C2", CONTRADICTED, evidence, "; it rests on " + ", ".join(
            f"{C2_AXES[a]} ({r})" for a, r in zip(against.axis, against.recall)))
    return Verdict("C2", SUPPORTED if (signs > 0).all() else INCONCLUSIVE, evidence)


def c3_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Per task and learning rate of the paper's runs: internal against external recall with an outer norm,
    hard accuracy @500 (:class:`Gap`; the best over counts beside it), and the status."""
    runs = paper_runs(frame)
    runs = runs[runs.norm.isin(OUTER) & runs.recall.isin(RECALL_FAMILIES)]
    rows = []
    for (task, lr), g in runs.groupby(["task", "lr"]):
        i, e = g[g.recall == "internal"], g[g.recall == "external"]
        if i.empty or e.empty:
            continue
        gap, best = compare(i, e, "hard_at"), compare(i, e, "hard_best")
        missing = int(g.hard_at.isna().sum())
        reasons = [f"no accuracy @{AT} in {missing} summaries"] if missing else [
            *(["the internal runs use the per-sublayer recall, not the paper's shared pair"]
              if set(i.recall_form) != {"shared"} else []),
            *([f"neither reaches {FLOOR:.0%} @{AT} at {budget(g)}"] if max(gap.hi, gap.lo) < FLOOR else []),
            *([gap.why()] if gap.why() else [])]
        status = "cannot decide: " + "; ".join(reasons) if reasons else "internal ahead" if gap.sign > 0 else \
            "external ahead"
        rows.append({"task": task, "lr": f"{lr:g}", "norm": "/".join(sorted(set(g.norm))), "gap": gap,
                     "best": best, "budget": budget(g), "status": status})
    return pd.DataFrame(rows, columns=["task", "lr", "norm", "gap", "best", "budget", "status"])


def claim3(frame: pd.DataFrame) -> Verdict:
    rows = c3_rows(frame)
    if rows.empty:
        return Verdict("C3", INCONCLUSIVE, "no task has internal and external runs with an outer norm in the "
                       "paper's regime")
    evidence = "; ".join(f"{r.task}, {r.norm}, lr {r.lr} ({r.budget}): internal vs external @{AT} "
                         f"{r.gap.text(unit=' %', why=False)} "
                         f"(best over counts {pct(r.best.hi)} vs {pct(r.best.lo)}) — {r.status}"
                         for r in rows.itertuples())
    if (rows.status == "external ahead").any():
        return Verdict("C3", CONTRADICTED, evidence)
    if ((rows.task == "sudoku") & (rows.status == "internal ahead")).any():
        return Verdict("C3", SUPPORTED, evidence)
    return Verdict("C3", INCONCLUSIVE, evidence)


def c4_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Per task, learning rate and family of the paper's runs: hard accuracy @500, mean of the family's cells'
    means (``mean``), its seed s.e. (``se``), its cells and runs."""
    rows = []
    for (task, lr, fam), g in paper_runs(frame).groupby(["task", "lr", "family"]):
        m, se, _ = side(g, "hard_at")
        rows.append({"task": task, "lr": lr, "family": fam, "mean": m, "se": se,
                     "cells": g.groupby(["recall", "norm"]).ngroups, "runs": int(g.hard_at.notna().sum())})
    return pd.DataFrame(rows, columns=["task", "lr", "family", "mean", "se", "cells", "runs"])


def _correlations(runs: pd.DataFrame) -> str:
    parts = []
    for recall in RECALL_FAMILIES:
        g = runs[runs.recall == recall]
        for col, label in (("rho", "ρ(J)"), ("rho_wx", "ρ(W_x)")):
            pair = g[[col, "hard_at"]].dropna()
            if len(pair) < 4 or pair[col].nunique() < 2 or pair.hard_at.nunique() < 2:
                parts.append(f"{recall} {label}: {'not recorded' if pair.empty else f'{len(pair)} runs, too few'}")
                continue
            res = spearmanr(pair[col], pair.hard_at)
            parts.append(f"{recall} {label}: ρ_s = {res.statistic:+.2f} (p = {res.pvalue:.2g}, {len(pair)} runs)")
    return ", ".join(parts)


def matched(hi: pd.DataFrame, lo: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """``hi`` and ``lo`` over the recalls with cells on both sides, and those recalls: recall + outer
    against recall + inner compares like with like (a grid that has run only internal recall's outer
    cell so far is compared over internal recall alone, not against the external inner cells as well)."""
    common = sorted(set(hi.recall) & set(lo.recall))
    return hi[hi.recall.isin(common)], lo[lo.recall.isin(common)], common


def claim4(frame: pd.DataFrame) -> Verdict:
    runs = paper_runs(frame)
    if runs.empty or runs.hard_at.isna().all():
        return Verdict("C4", INCONCLUSIVE, f"no runs in the paper's regime with accuracy @{AT}")
    parts, signs, complete = [], [], []
    for (task, lr), g in runs.groupby(["task", "lr"]):
        fam = {f: g[g.family == f] for f in (*ORDER, "untied") if (g.family == f).any()}
        text = ", ".join(f"{f} {pct(side(x, 'hard_at')[0])} %" for f, x in fam.items())
        mine, seeds = [], 2
        for hi, lo in zip(ORDER, ORDER[1:]):
            if hi in fam and lo in fam:
                a, b, over = fam[hi], fam[lo], ""
                if lo != "no recall":
                    a, b, common = matched(a, b)
                    if not common:
                        text += f"; {hi} − {lo}: no recall with cells on both sides"
                        continue
                    if len(a) < len(fam[hi]) or len(b) < len(fam[lo]):
                        only = "the only one" if len(common) == 1 else "those"
                        over = f" (over {' and '.join(common)} recall alone, {only} with cells on both sides)"
                gap = compare(a, b, "hard_at")
                mine.append(gap.sign)
                seeds = min(seeds, gap.seeds)
                text += f"; {hi} − {lo}{over}: {gap.text(unit=' %')}"
        text += f" — {NEEDS_SEEDS.format(seeds)}" if seeds < 2 else ""
        signs += mine
        if all(f in fam for f in ORDER):
            complete.append(mine == [1, 1])
        parts.append(f"{task}, lr {lr:g} ({budget(g)}): {text}")
    evidence = "; ".join(parts) + f". Within recall families: {_correlations(runs)}"
    if -1 in signs:
        return Verdict("C4", CONTRADICTED, evidence)
    return Verdict("C4", SUPPORTED if complete and all(complete) else INCONCLUSIVE, evidence)


def verdicts(frame: pd.DataFrame) -> list[Verdict]:
    """The four verdicts on the runs of ``frame`` (read through :func:`paper_runs`)."""
    return [claim1(frame), claim2(frame), claim3(frame), claim4(frame)]
