"""The paper's claims C1–C4, each a rule over the results table (:func:`experiments.table.runs_frame`)
that returns a :class:`Verdict`: the verdict, the rule, the evidence it rests on and what would
change it. A rule never fills in a number a summary lacks: it says which and stays inconclusive.

The paper (Labovich 2026, "Stability and Generalization in Looped Transformers") claims:

* C1 — without recall, the loop has countable fixed points and no strong input dependence;
* C2 — recall with an outer norm (post, sandwich) gives fixed points that are reachable by plain
  iteration, locally smooth (well conditioned) and stable to backpropagate through;
* C3 — with an outer norm, internal recall is at least as good as external, much better on sudoku;
* C4 — performance follows the framework: recall + outer > recall + inner > no recall.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import bootstrap, spearmanr

from experiments.table import AT, FLOOR, OUTER

SUPPORTED, CONTRADICTED, INCONCLUSIVE = "supported", "contradicted", "inconclusive at this budget"
PAPER_REGIME = "progressive"  # the paper trains by the progressive loss only
MIN_RUNS = 3  # recall-free runs C1 needs
CONVERGED = 0.5  # a run's probe counts as converged from z0 = e when at least this fraction converged
FD_CONSTANT, FD_MOVES = 0.05, 0.5  # ‖Δz*‖/‖Δe‖ from z0 = e: locally constant below, following the input above
MIN_CELLS = 4  # matched (task, recall, regime) cells C2 needs
BOOTSTRAP = dict(n_resamples=2000, confidence_level=0.95, method="percentile", random_state=0)


@dataclass(frozen=True)
class Verdict:
    claim: str
    verdict: str  # SUPPORTED | CONTRADICTED | INCONCLUSIVE
    rule: str
    evidence: str
    change: str  # what would change the verdict


def pct(v: float) -> str:
    return "—" if v is None or not math.isfinite(v) else f"{100 * v:.1f}"


def num(v: float, digits: int = 3) -> str:
    return "—" if v is None or not math.isfinite(v) else f"{v:.{digits}g}"


def mean_se(x: pd.Series) -> tuple[float, float, int]:
    """The mean, its standard error (sample s.d. / √n; NaN for fewer than two values) and n, of the finite values."""
    x = x.dropna()
    n = len(x)
    return (float(x.mean()) if n else math.nan, float(x.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan, n)


def welch(a: pd.Series, b: pd.Series) -> tuple[float, float]:
    """The gap mean(a) − mean(b) and its Welch standard error √(s_a²/n_a + s_b²/n_b)."""
    (ma, sa, _), (mb, sb, _) = mean_se(a), mean_se(b)
    return ma - mb, math.sqrt(sa ** 2 + sb ** 2)


def _ms(x: pd.Series) -> str:
    m, s, n = mean_se(x)
    return f"{pct(m)} ± {pct(s)} % (n = {n})"


def budget(runs: pd.DataFrame) -> str:
    """The training budget of ``runs`` in words: steps and presets."""
    steps = "/".join(str(int(s)) for s in sorted(runs["steps"].dropna().unique()))
    return f"{steps} steps ({', '.join(sorted(runs['preset'].dropna().unique()))} preset)"


def claim1(frame: pd.DataFrame) -> Verdict:
    rule = (f"recall-free runs whose probe converges from z₀ = e (Anderson, ≥ {CONVERGED:.0%} of examples; the paper's "
            "models start there): supported when ≥ 3 of them are all locally constant in e — the finite difference "
            f"‖z*(e + εu) − z*(e)‖/‖εu‖ with each solve started at its own z₀ = e is ≤ {FD_CONSTANT} (the implicit "
            "function theorem gives the same at an isolated fixed point, finite ‖(I − J)⁻¹‖) — and all fail the hard "
            f"split (@{AT} < {FLOOR:.0%}); contradicted by one whose z* follows e (finite difference ≥ {FD_MOVES}) or "
            "that passes the hard split; the number of clusters over the probe and the recall runs' IFT sensitivity "
            "are reported as the contrast")
    none, rec = frame[frame.family == "no recall"], frame[frame.family.isin(["recall + outer", "recall + inner"])]
    usable = none[none.anderson_reach >= CONVERGED]
    measured = usable.dropna(subset=["fd_input"])
    evidence = (f"{len(none)} recall-free runs ({budget(none) if len(none) else 'none'}), {len(usable)} converge "
                f"from z₀ = e on the probe; clusters of their fixed "
                f"points over the probe: median {num(usable.clusters.median())} of {num(usable.probe_n.median())} "
                f"examples (spread {num(usable.spread.median())}); ‖(I − J)⁻¹‖ median {num(usable.resolvent.median())}; "
                f"finite difference from z₀ = e measured in {len(measured)} (median {num(measured.fd_input.median())}); "
                f"hard @{AT}: recall-free {_ms(none.hard_at)}, recall {_ms(rec.hard_at)}; IFT sensitivity "
                f"‖∂z*/∂e·v‖ median: recall-free {num(none.ift.median())} (0 by construction: the block never sees e), "
                f"recall {num(rec.ift.median())}; finite difference from z₀ = e, recall runs: "
                f"{num(rec.fd_input.median())}")
    change = (f"runs of the paper's recall-free models analysed with the finite difference from z₀ = e "
              f"(`deqloop.analysis.analyze` measure `input_fd`, stored by the sweep as `input_fd_median`); one that "
              f"reaches {FLOOR:.0%} @{AT} on the hard split would contradict the claim")
    if usable.empty:
        return Verdict("C1", INCONCLUSIVE, rule, evidence + "; no recall-free run converges from z₀ = e", change)
    passes = usable[usable.hard_at >= FLOOR]
    moves = measured[measured.fd_input >= FD_MOVES]
    if not passes.empty or not moves.empty:
        return Verdict("C1", CONTRADICTED, rule, evidence + f"; against it: {', '.join([*passes.name, *moves.name])}",
                       change)
    if usable.hard_at.isna().any():
        return Verdict("C1", INCONCLUSIVE, rule, evidence + f"; {usable.hard_at.isna().sum()} summaries lack "
                       f"accuracy @{AT}", change)
    if len(measured) < len(usable) or len(usable) < MIN_RUNS:
        why = (f"{len(usable) - len(measured)} of {len(usable)} summaries lack the finite difference from z₀ = e "
               "(made before the analysis measured it)" if len(measured) < len(usable) else f"fewer than {MIN_RUNS} runs")
        return Verdict("C1", INCONCLUSIVE, rule, evidence + f"; {why}", change)
    if (measured.fd_input <= FD_CONSTANT).all():
        return Verdict("C1", SUPPORTED, rule, evidence, change)
    return Verdict("C1", INCONCLUSIVE, rule, evidence + f"; finite differences between {FD_CONSTANT} and {FD_MOVES}",
                   change)


C2_AXES = {"plain_reach": "reachable by plain iteration", "bwd": "implicit backward solve converged",
           "stability": "−log₁₀ gradient-norm spread (max/median over training)"}


def c2_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (task, recall, regime, learning rate) cell with both an outer-norm and an inner-norm run (recall runs only):
    the mean of each C2 axis and of the measures reported beside them, for outer and inner."""
    rec = frame[frame.family.isin(["recall + outer", "recall + inner"])].assign(
        side=lambda f: np.where(f.norm.isin(OUTER), "outer", "inner"),
        stability=lambda f: -np.log10(f.grad_spread),
        fd_ift=lambda f: (np.log(f.fd / f.ift).abs() <= math.log(2)).where(f.fd.notna() & f.ift.notna()))
    cols = [*C2_AXES, "anderson_reach", "resolvent", "fd_ift"]
    cells = rec.pivot_table(index=["task", "recall", "regime", "lr"], columns="side", values=cols, aggfunc="mean",
                            dropna=False)
    have = cells.columns.get_level_values(1)
    if "outer" not in have or "inner" not in have:
        return pd.DataFrame()
    return cells.dropna(subset=[(c, s) for c in C2_AXES for s in ("outer", "inner")], how="any")


def _ci(d: np.ndarray) -> tuple[float, float]:
    if len(d) < 2 or np.ptp(d) == 0:
        return float(d.mean()), float(d.mean())
    ci = bootstrap((d,), np.mean, **BOOTSTRAP).confidence_interval
    return float(ci.low), float(ci.high)


def claim2(frame: pd.DataFrame) -> Verdict:
    rule = ("outer norm {post, sandwich} against inner {pre, peri}, paired within each (task, recall family, regime, "
            "learning rate) cell where both were run: per cell the outer mean minus the inner mean of (a) the fraction of hard "
            "examples whose plain iteration settles (the paper's reachability; Anderson's converged fraction beside "
            "it), (b) the implicit backward solve's converged fraction (smoothness as conditioning: it converges "
            "when I − J is well conditioned; ‖(I − J)⁻¹‖ and whether finite differences agree with the IFT within "
            "2× beside it), (c) −log₁₀ of the gradient-norm spread over training (backprop stability); a 95 % "
            f"bootstrap interval of the mean difference over ≥ {MIN_CELLS} cells; supported when every axis's "
            "interval lies above 0, contradicted when one lies below 0; a lower Lipschitz constant is not scored")
    cells = c2_cells(frame)
    change = "more matched outer/inner cells (each recall family, regime and task), seeds to narrow the intervals"
    if len(cells) < MIN_CELLS:
        return Verdict("C2", INCONCLUSIVE, rule, f"{len(cells)} matched outer/inner cells", change)
    parts, above, below = [], [], []
    for axis, label in C2_AXES.items():
        d = (cells[(axis, "outer")] - cells[(axis, "inner")]).to_numpy()
        lo, hi = _ci(d)
        above.append(lo > 0)
        below.append(hi < 0)
        parts.append(f"{label}: outer {num(cells[(axis, 'outer')].mean())} vs inner {num(cells[(axis, 'inner')].mean())}, "
                     f"difference {num(d.mean())} [{num(lo)}, {num(hi)}]")
    beside = ", ".join(f"{label} outer {num(cells[(c, 'outer')].mean())} vs inner {num(cells[(c, 'inner')].mean())}"
                       for c, label in (("anderson_reach", "Anderson converged"), ("resolvent", "‖(I − J)⁻¹‖"),
                                        ("fd_ift", "FD agrees with IFT")))
    matched = frame.set_index(["task", "recall", "regime", "lr"]).index.isin(cells.index) & frame.family.str.startswith("recall")
    evidence = f"{len(cells)} matched cells ({budget(frame[matched])}) — " + "; ".join(parts) + f"; beside it: {beside}"
    verdict = SUPPORTED if all(above) else CONTRADICTED if any(below) else INCONCLUSIVE
    if verdict == CONTRADICTED:
        against = [label for (axis, label), b in zip(C2_AXES.items(), below) if b]
        change = (f"the verdict rests on {', '.join(against)} alone"
                  + (" (the other axes favour the outer norm)" if sum(above) == len(above) - len(against) else "")
                  + "; it would turn with matched runs in the paper's regime and recall (most of these cells are "
                  "fixed-point regimes, and their internal recall is the per-sublayer form) in which it favours the "
                  "outer norm, or if a spread measured on per-step gradient norms (the summaries keep only the median "
                  "and largest) told spikes apart from a run's loss falling")
    return Verdict("C2", verdict, rule, evidence, change)


def _power(gap: float, se: float, n: int) -> str:
    """Seeds per side at which the observed gap would be 2 s.e. (the s.e. shrinking as 1/√n)."""
    if not (math.isfinite(gap) and math.isfinite(se)) or gap == 0:
        return "the seed spread cannot be estimated"
    return f"≈ {math.ceil(round(n * (2 * se / abs(gap)) ** 2, 6))} seeds per side would make this gap 2 s.e."


def c3_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Per task and outer norm in the paper's regime: internal and external hard accuracy @500 (mean,
    s.e., n; best over counts beside it), the Welch gap, the internal recall form, and the decision."""
    rows = []
    paper = frame[(frame.regime == PAPER_REGIME) & frame.norm.isin(OUTER)]
    for (task, norm, lr), g in paper.groupby(["task", "norm", "lr"], sort=False):
        i, e = g[g.recall == "internal"], g[g.recall == "external"]
        if i.empty or e.empty:
            continue
        gap, se = welch(i.hard_at, e.hard_at)
        (mi, si, ni), (me, sx, ne) = mean_se(i.hard_at), mean_se(e.hard_at)
        forms = sorted(set(i.recall_form))
        significant = abs(gap) > 2 * se
        missing = int(i.hard_at.isna().sum() + e.hard_at.isna().sum())
        reasons = [f"no accuracy @{AT} in {missing} summaries"] if missing else [
            *(["the internal runs use the per-sublayer recall, not the paper's shared pair"] if forms != ["shared"] else []),
            *([f"neither reaches {FLOOR:.0%} @{AT} at {budget(g)}"] if max(mi, me) < FLOOR else []),
            *([f"the gap is within 2 s.e. ({_power(gap, se, min(ni, ne))})"] if not significant else [])]
        status = "cannot decide: " + "; ".join(reasons) if reasons else "internal ahead" if gap > 0 else "external ahead"
        rows.append({"task": task, "norm": norm, "lr": f"{lr:g}", "internal": f"{pct(mi)} ± {pct(si)} ({ni})",
                     "external": f"{pct(me)} ± {pct(sx)} ({ne})", "gap": pct(gap), "2 s.e.": pct(2 * se),
                     "internal best": pct(i.hard_best.mean()), "external best": pct(e.hard_best.mean()),
                     "recall form": "/".join(forms), "budget": budget(g), "status": status})
    return pd.DataFrame(rows)


def claim3(frame: pd.DataFrame) -> Verdict:
    rule = (f"in the paper's regime with an outer norm, per task and learning rate: internal against external recall by hard accuracy "
            f"@{AT} at the last step (best over counts beside it), decided only where one of them reaches {FLOOR:.0%} "
            "and the gap exceeds 2 standard errors (Welch, over seeds) and the internal runs use the paper's shared "
            "injection pair; supported when sudoku is decided for internal and no task for external; contradicted when "
            "a task is decided for external; otherwise inconclusive at this budget")
    rows = c3_rows(frame)
    change = ("runs of the paper's shared internal recall against external, 3 seeds a side, at budgets where one side "
              f"reaches {FLOOR:.0%} on the hard split (sudoku by blanks at ≥ 1,500 steps)")
    if rows.empty:
        return Verdict("C3", INCONCLUSIVE, rule, "no task has internal and external runs with an outer norm", change)
    evidence = "; ".join(f"{r.task}, {r.norm}, lr {r.lr}: internal {r.internal} vs external {r.external} % @{AT} (best "
                         f"{r['internal best']} vs {r['external best']}; {r.budget}) — {r.status}"
                         for _, r in rows.iterrows())
    if (rows.status == "external ahead").any():
        return Verdict("C3", CONTRADICTED, rule, evidence, change)
    if ((rows.task == "sudoku") & (rows.status == "internal ahead")).any():
        return Verdict("C3", SUPPORTED, rule, evidence, change)
    return Verdict("C3", INCONCLUSIVE, rule, evidence, change)


ORDER = ("recall + outer", "recall + inner", "no recall")


def c4_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Per task and learning rate in the paper's regime: each family's hard accuracy @500 (mean, s.e., runs)."""
    paper = frame[frame.regime == PAPER_REGIME]
    agg = paper.groupby(["task", "lr", "family"], sort=False)["hard_at"].agg(
        mean="mean", se=lambda x: mean_se(x)[1], n="count")
    return agg.reset_index()


def _correlations(paper: pd.DataFrame) -> str:
    parts = []
    for recall in ("internal", "external"):
        g = paper[paper.recall == recall]
        for col, label in (("rho", "ρ(J)"), ("rho_wx", "ρ(W_x)")):
            pair = g[[col, "hard_at"]].dropna()
            if len(pair) < 4 or pair[col].nunique() < 2 or pair.hard_at.nunique() < 2:
                parts.append(f"{recall} {label}: {'not recorded' if pair.empty else f'{len(pair)} runs, too few'}")
                continue
            res = spearmanr(pair[col], pair.hard_at)
            parts.append(f"{recall} {label}: ρ_s = {res.statistic:+.2f} (p = {res.pvalue:.2g}, {len(pair)} runs)")
    return ", ".join(parts)


def claim4(frame: pd.DataFrame) -> Verdict:
    rule = (f"in the paper's regime, per task and learning rate, hard accuracy @{AT} by family (mean ± s.e. over the family's runs): "
            "the framework predicts recall + outer > recall + inner > no recall (the untied baseline is placed by its "
            "accuracy); contradicted when a predicted pair is reversed by more than 2 s.e. (Welch) on some task; "
            "supported when on every task and learning rate with all three families both pairs are in the predicted order by more than "
            "2 s.e.; the Spearman correlation of ρ(J) and of ρ(W_x) with accuracy within each recall family is "
            "reported beside it")
    rows = c4_rows(frame)
    paper = frame[frame.regime == PAPER_REGIME]
    parts, reversed_, complete, ordered = [], False, 0, True
    for (task, lr), g in paper.groupby(["task", "lr"], sort=False):
        fam = {f: g[g.family == f].hard_at for f in (*ORDER, "untied") if (g.family == f).any()}
        text, signs = ", ".join(f"{f} {_ms(x)}" for f, x in fam.items()), []
        for hi, lo in zip(ORDER, ORDER[1:]):
            if hi in fam and lo in fam:
                gap, se = welch(fam[hi], fam[lo])
                signs.append(0 if not (math.isfinite(se) and abs(gap) > 2 * se) else 1 if gap > 0 else -1)
                text += f"; {hi} − {lo} = {pct(gap)} ± {pct(se)} points"
                if signs[-1] == 0:
                    n = min(len(fam[hi].dropna()), len(fam[lo].dropna()))
                    text += f" (within 2 s.e.: {_power(gap, se, n).replace('seeds per side', 'runs a family')})"
        reversed_ |= -1 in signs
        if all(f in fam for f in ORDER):
            complete += 1
            ordered &= signs == [1, 1]
        parts.append(f"{task}, lr {lr:g} ({budget(g)}): {text}")
    evidence = "; ".join(parts) + f". Within recall families: {_correlations(paper)}"
    change = ("3 seeds a cell of the paper's grid (recall × residual) at a budget where the recall models learn; a "
              "significant reversal of a predicted pair would contradict the claim")
    if rows.empty or rows["mean"].isna().all():
        return Verdict("C4", INCONCLUSIVE, rule, (evidence if len(paper) else "no runs in the paper's regime")
                       + f"; no accuracy @{AT}" * (not rows.empty), change)
    if reversed_:
        return Verdict("C4", CONTRADICTED, rule, evidence, change)
    return Verdict("C4", SUPPORTED if complete and ordered else INCONCLUSIVE, rule, evidence, change)


def verdicts(frame: pd.DataFrame) -> list[Verdict]:
    """The four verdicts on the runs of ``frame``."""
    return [claim1(frame), claim2(frame), claim3(frame), claim4(frame)]
