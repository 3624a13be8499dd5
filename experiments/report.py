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
import math
import os
import statistics
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from experiments import chess_baselines, recipes_report, stability_report
from experiments.presets import NORMS, RECALLS, REGIMES, TASK_ORDER
from experiments.summary import SummaryError, load_summaries, summarize_sweep

LEARNED_MARGIN = 0.02  # a configuration "learned" if its best val accuracy exceeds this


# -- loading and aggregation -------------------------------------------------------------------


def load_results(root: Path) -> list[dict[str, Any]]:
    """The runs under ``root``, sorted by name: a sweep's runs summarized from their
    ``result.json`` and ``metrics.jsonl`` where ``root`` holds any ``result.json``, else the run
    summaries under it. A file that cannot be read raises :class:`SummaryError` naming it."""
    root = Path(root)
    if next(root.rglob("result.json"), None) is not None:
        return summarize_sweep(root)
    return load_summaries(root)


def _finite(values: list[float | None]) -> list[float]:
    return [x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]


def _m(values: list[float | None]) -> float | None:
    v = _finite(values)
    return sum(v) / len(v) if v else None


def _med(values: list[float | None]) -> float | None:
    """Median across configurations: sensitivities and Lipschitz constants are heavy-tailed
    (one diverging configuration would dominate a mean)."""
    v = _finite(values)
    return statistics.median(v) if v else None


def _seed_mean(rows: list[list[float]]) -> list[float]:
    """The mean over seeds of per-iteration-count curves."""
    return [statistics.fmean(col) for col in zip(*rows)]


@dataclass
class Config:
    """One configuration (task, recall, norm, regime), averaged over its seeds."""

    task: str
    recall: str
    norm: str
    regime: str
    runs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.recall}/{self.norm}/{self.regime}"

    @property
    def iters(self) -> list[int]:
        return self.runs[0]["eval"]["curves"]["iters"]

    @property
    def train_depth(self) -> int:
        return int(self.runs[0]["train_depth"])

    def curve(self, split: str) -> list[float]:
        return _seed_mean([r["eval"]["curves"]["accuracy"][split] for r in self.runs])

    def best(self, split: str) -> tuple[float, int]:
        curve = self.curve(split)
        i = max(range(len(curve)), key=lambda j: (curve[j], -j))
        return curve[i], self.iters[i]

    def cell_curve(self, split: str) -> list[float] | None:
        """Mean fraction of cells right after each count (None when a run did not score cells)."""
        rows = [((r["eval"].get("cells") or {}).get("accuracy") or {}).get(split) for r in self.runs]
        return None if any(row is None for row in rows) else _seed_mean(rows)

    def best_cells(self, split: str) -> float | None:
        """The best mean fraction of cells right over the test-time iteration counts."""
        curve = self.cell_curve(split)
        return max(curve) if curve else None

    def at(self, split: str, iters: int) -> float | None:
        if iters not in self.iters:
            return None
        return self.curve(split)[self.iters.index(iters)]

    def settle(self, split: str, key: str) -> float | None:
        return _m([r["eval"]["settling"][split][key] for r in self.runs])

    def solver(self, split: str, key: str) -> float | None:
        return _m([r["eval"]["solver"].get(split, {}).get(key) for r in self.runs])

    def stab(self, key: str, band: str = "hard") -> float | None:
        return _m([r["analysis"][band].get(key) for r in self.runs])

    def zeros(self, key: str, band: str = "hard") -> float | None:
        return _m([r["analysis"][band]["from_zeros"].get(key) for r in self.runs])

    def train(self, key: str) -> float | None:
        return _m([r["train"].get(key) for r in self.runs])

    @property
    def learned(self) -> bool:
        return self.best("val")[0] > LEARNED_MARGIN


def group(results: list[dict[str, Any]]) -> dict[tuple[str, str, str, str], Config]:
    configs: dict[tuple[str, str, str, str], Config] = {}
    for r in results:
        s = r["spec"]
        key = (s["task"], s["recall"], s["norm"], s["regime"])
        configs.setdefault(key, Config(*key)).runs.append(r)
    order = {t: i for i, t in enumerate(TASK_ORDER)}
    return dict(sorted(configs.items(), key=lambda kv: (order.get(kv[0][0], 9), RECALLS.index(kv[0][1]),
                                                         NORMS.index(kv[0][2]), REGIMES.index(kv[0][3]))))


# -- formatting --------------------------------------------------------------------------------


def _task_key(task: str) -> tuple[int, str]:
    """Tasks in the presets' order, any other after them by name."""
    return (TASK_ORDER.index(task) if task in TASK_ORDER else len(TASK_ORDER), task)


def pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f}"


def num(v: float | None, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{v:.{digits}g}"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


# -- the claims --------------------------------------------------------------------------------


@dataclass
class Verdict:
    claim: str
    verdict: str  # "supported" | "contradicted" | "inconclusive at this scale"
    rule: str
    evidence: str


def spearman(xs: list[float], ys: list[float]) -> tuple[float, float]:
    from scipy.stats import spearmanr

    res = spearmanr(xs, ys)
    return float(res.statistic), float(res.pvalue)


def claim1(configs: list[Config]) -> Verdict:
    rule = ("supported if every recall-free configuration that converges from z₀ = 0 (≥ 90 % of examples) reaches "
            "one fixed point for all inputs (1 cluster, spread < 1e-3) while every configuration with recall "
            "reaches several; contradicted if a recall-free one reaches several")
    none = [c for c in configs if c.recall == "none"]
    rec = [c for c in configs if c.recall != "none"]
    usable = [c for c in none if (c.zeros("converged_fraction") or 0) >= 0.9]
    if not usable or not rec:
        return Verdict("C1", "inconclusive at this scale", rule,
                       f"{len(none)} recall-free configurations, {len(usable)} of them converged from z₀ = 0")
    single = [c for c in usable if (c.zeros("distinct_fixed_points") or 0) <= 1 and (c.zeros("fixed_point_spread") or 0) < 1e-3]
    many = [c for c in rec if (c.zeros("distinct_fixed_points") or 0) > 1]
    evidence = (f"{len(single)}/{len(usable)} recall-free configurations reach a single fixed point from z₀ = 0 "
                f"(spread {num(_med([c.zeros('fixed_point_spread') for c in usable]))}); "
                f"{len(many)}/{len(rec)} configurations with recall reach several "
                f"(spread {num(_med([c.zeros('fixed_point_spread') for c in rec]))}); "
                f"IFT input sensitivity ‖∂z*/∂e·v‖ (median over configurations): none {num(_med([c.stab('input_sensitivity_median') for c in none]))} vs "
                f"recall {num(_med([c.stab('input_sensitivity_median') for c in rec]))}; hard accuracy (best): none "
                f"{pct(_m([c.best('hard')[0] for c in none]))} % vs recall {pct(_m([c.best('hard')[0] for c in rec]))} %")
    if len(single) == len(usable) and len(many) == len(rec):
        return Verdict("C1", "supported", rule, evidence)
    if len(single) < len(usable):
        return Verdict("C1", "contradicted", rule, evidence)
    return Verdict("C1", "inconclusive at this scale", rule, evidence)


C2_AXES = (("converged_fraction", +1, "converged fraction"), ("contractive_fraction", +1, "contractive (ρ < 0.95) fraction"),
           ("backward_converged_fraction", +1, "backward solve converged"), ("local_smoothness_median", -1, "local Lipschitz ‖Δz*‖/‖Δe‖"))


def claim2(configs: list[Config]) -> Verdict:
    rule = ("among configurations with recall, compare post norm with each other norm by the median over the "
            "(task, recall, regime) cells both were run in, on four axes (converged "
            "fraction, contractive fraction, backward-solve convergence, local Lipschitz constant; ties within "
            "0.02 count for post): supported if post is at least as good on ≥ 3 axes against every other norm, "
            "contradicted if on ≤ 1 axis against some norm")
    rec = [c for c in configs if c.recall != "none"]
    by_key = {(c.task, c.recall, c.norm, c.regime): c for c in rec}
    post = {(t, r, g) for t, r, n, g in by_key if n == "post"}

    def medians(cs: list[Config]) -> dict[str, float | None]:
        vals = {key: _med([c.stab(key) for c in cs]) for key, _, _ in C2_AXES}
        vals["grad_norm_max"] = _med([c.train("grad_norm_max") for c in cs])
        return vals

    # each norm is compared with post on the (task, recall, regime) cells both were run in
    matched: dict[str, tuple[dict[str, float | None], dict[str, float | None], int]] = {}
    for norm in NORMS:
        shared = sorted(post & {(t, r, g) for t, r, n, g in by_key if n == norm})
        if norm != "post" and shared:
            matched[norm] = (medians([by_key[(t, r, norm, g)] for t, r, g in shared]),
                             medians([by_key[(t, r, "post", g)] for t, r, g in shared]), len(shared))
    if not matched:
        return Verdict("C2", "inconclusive at this scale", rule,
                       f"no norm measured in the same cells as post (norms: {sorted({c.norm for c in rec})})")
    wins = {}
    for norm, (vals, p_vals, _) in matched.items():
        n = 0
        for key, sign, _ in C2_AXES:
            p, o = p_vals[key], vals[key]
            if p is None or o is None:
                continue
            tol = 0.02 * max(1.0, abs(o)) if sign < 0 else 0.02
            n += sign * (p - o) >= -tol
        wins[norm] = n
    evidence = "; ".join(
        f"{norm} vs post, medians over {k} matched cells: " + ", ".join(f"{label} {num(v[key])} vs {num(pv[key])}" for key, _, label in C2_AXES)
        + f", max grad norm {num(v['grad_norm_max'])} vs {num(pv['grad_norm_max'])}"
        for norm, (v, pv, k) in matched.items()) + f". Axes where post is at least as good: {wins}"
    if all(n >= 3 for n in wins.values()):
        return Verdict("C2", "supported", rule, evidence)
    if any(n <= 1 for n in wins.values()):
        return Verdict("C2", "contradicted", rule, evidence)
    return Verdict("C2", "inconclusive at this scale", rule, evidence)


def claim3(configs: list[Config]) -> Verdict:
    rule = ("with post norm, per task: internal recall's best hard accuracy ≥ external's − 2 points (averaged over "
            "the regimes both were trained in, and seeds), and on sudoku ≥ external's + 5 points; tasks where neither learned are "
            "inconclusive; contradicted if internal trails by more than 5 points on a task where one learned")
    lines, ok, bad, decided = [], True, False, 0
    tasks = sorted({c.task for c in configs}, key=_task_key)
    for task in tasks:
        i = [c for c in configs if c.task == task and c.norm == "post" and c.recall == "internal"]
        e = [c for c in configs if c.task == task and c.norm == "post" and c.recall == "external"]
        both = {c.regime for c in i} & {c.regime for c in e}  # compare like with like
        i, e = [c for c in i if c.regime in both], [c for c in e if c.regime in both]
        if not i or not e:
            lines.append(f"{task}: missing internal or external runs")
            continue
        ai, ae = _m([c.best("hard")[0] for c in i]), _m([c.best("hard")[0] for c in e])
        learned = any(c.learned for c in i + e)
        ci, ce = _m([c.best_cells("hard") for c in i]), _m([c.best_cells("hard") for c in e])
        cells = "" if ci is None or ce is None else f", {pct(ci)} % vs {pct(ce)} % of cells right (not used by the rule)"
        lines.append(f"{task}: internal {pct(ai)} % vs external {pct(ae)} % hard accuracy{cells}"
                     + ("" if learned else " (neither learned)"))
        if not learned:
            continue
        decided += 1
        ok &= ai >= ae - 0.02 and (task != "sudoku" or ai >= ae + 0.05)
        bad |= ai < ae - 0.05
    if decided == 0:
        return Verdict("C3", "inconclusive at this scale", rule, "; ".join(lines))
    if bad:
        return Verdict("C3", "contradicted", rule, "; ".join(lines))
    if ok and "sudoku" in tasks and any(c.task == "sudoku" and c.learned for c in configs):
        return Verdict("C3", "supported", rule, "; ".join(lines))
    return Verdict("C3", "inconclusive at this scale", rule, "; ".join(lines) + "; sudoku not decided" if ok else "; ".join(lines))


C4_AXES = (("converged_fraction", "converged fraction"), ("contractive_fraction", "contractive fraction"),
           ("spectral_radius_median", "ρ(J)"), ("local_smoothness_median", "local Lipschitz"),
           ("backward_converged_fraction", "backward converged"))


def claim4(configs: list[Config]) -> Verdict:
    rule = ("Spearman rank correlation, across configurations of a task, between each stability number and best "
            "hard accuracy: supported if converged fraction and contractive fraction both correlate positively "
            "(p < 0.05) on every task with ≥ 6 configurations whose accuracies differ; contradicted if either "
            "correlates negatively (p < 0.05) on some task")
    lines, decided, support, against = [], 0, True, False
    for task in sorted({c.task for c in configs}, key=_task_key):
        cs = [c for c in configs if c.task == task]
        acc = [c.best("hard")[0] for c in cs]
        if len(cs) < 6 or max(acc) - min(acc) < 0.01:
            lines.append(f"{task}: {len(cs)} configurations, accuracy range {pct(max(acc) - min(acc))} points — not enough to rank")
            continue
        decided += 1
        parts = []
        for key, label in C4_AXES:
            pairs = [(c.stab(key), a) for c, a in zip(cs, acc) if c.stab(key) is not None]
            if len(pairs) < 6 or len({p for p, _ in pairs}) < 2:
                parts.append(f"{label} n/a")
                continue
            rho, p = spearman([p for p, _ in pairs], [a for _, a in pairs])
            parts.append(f"{label} ρ_s = {rho:+.2f} (p = {p:.2g})")
            if key in ("converged_fraction", "contractive_fraction"):
                support &= rho > 0 and p < 0.05
                against |= rho < 0 and p < 0.05
        n = min(int(r["eval"].get("n", {}).get("hard", 0) or 0) for c in cs for r in c.runs)
        spread = f"{len(cs)} configurations, hard accuracy {pct(min(acc))}–{pct(max(acc))} %" + (f" on {n} examples" if n else "")
        lines.append(f"{task} ({spread}): " + ", ".join(parts))
    if decided == 0:
        return Verdict("C4", "inconclusive at this scale", rule, "; ".join(lines))
    if against:
        return Verdict("C4", "contradicted", rule, "; ".join(lines))
    return Verdict("C4", "supported" if support else "inconclusive at this scale", rule, "; ".join(lines))


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
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    cs = [c for c in configs if c.task == task]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, split in zip(axes, ("val", "hard")):
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
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_rho_vs_accuracy(configs: list[Config], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

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
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- the document ------------------------------------------------------------------------------


def _recipes_and_stability(cs: list[Config], task: str, plots: Path, out: Path) -> list[str]:
    """The recipe ablation table of each cell trained under more than the three base regimes, and the
    stability-over-training table and figure of the runs that carry monitor traces."""
    doc = []
    cells = sorted({(c.recall, c.norm) for c in cs})
    for recall, norm in cells:
        if sum(c.recall == recall and c.norm == norm for c in cs) <= 3:
            continue
        doc += ["", f"### Fixed-point training recipes ({recall} recall, {norm} norm)", "",
                "Every regime of this cell (`python -m experiments.sweep --preset recipes`; the regimes are "
                "defined in `experiments/presets.py` `REGIME_TRAIN`): the hard accuracy (best over the test-time "
                "counts) of each seed, then means over the seeds; *solver conv* the fraction of hard examples "
                "whose Anderson solve converged at evaluation; *train fwd/bwd conv* the converged fractions of the "
                "training solves over the last quarter of training; *ρ end* the median spectral radius at the "
                "end (hard examples); *train s* the mean training wall time and its ratio to the progressive "
                "loss's.", "",
                table(recipes_report.HEADER, recipes_report.recipe_rows(cs, recall, norm))]
    header, rows = stability_report.when_table(cs)
    if rows:
        doc += ["", "### Stability over training", "",
                "From the stability monitor (`stability_every`, a 16-example probe of the validation split): the "
                "median ρ(∂f/∂z) at the first and last probe, the fraction of training at which it first exceeded 1, "
                "the fraction at which plain iteration first reached fewer than 50 % of the probe's fixed points "
                "(*reachable*), and the reachable and implicit-backward converged fractions at the last probe; "
                "medians over seeds (*never*: in most seeds it did not happen).", "", table(header, rows)]
        plot = stability_report.plot_traces(cs, task, plots / f"{task}_stability.png")
        if plot is not None:
            doc += ["", f"![stability over training]({os.path.relpath(plot, out.parent)})"]
    return doc


def render(results: list[dict[str, Any]], plots: Path, out: Path, command: str,
           baselines: dict[str, Any] | None = None) -> str:
    """RESULTS.md's text. ``baselines``: the stored baselines file (:mod:`experiments.chess_baselines`),
    read for runs whose evaluation predates storing them."""
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
        pairs = []
        for recall in RECALLS:
            for norm in NORMS:
                by = {c.regime: c for c in cs if c.recall == recall and c.norm == norm}
                if len(by) < 2:
                    continue
                pairs.append([recall, norm]
                             + [f"{pct(by[g].best('hard')[0])} ({by[g].best('hard')[1]})" if g in by else "—" for g in regimes]
                             + [f"{pct(by[g].settle('hard', 'accuracy'))} / {num(by[g].settle('hard', 'iterations_mean'))}"
                                if g in by else "—" for g in regimes])
        if pairs:
            doc += ["", "Beyond the paper — the same grid trained by the progressive loss (the paper's), by exact "
                    "implicit differentiation and by the phantom gradient; hard-split accuracy at the best fixed "
                    "iteration count next to adaptive compute (accuracy / mean iterations):", "",
                    table(["recall", "norm"] + [f"{g} best" for g in regimes] + [f"{g} adaptive" for g in regimes], pairs)]
        if len(regimes) > 1:
            doc += ["", "Training by regime (medians over the runs; *late*: mean over the last quarter of the logged "
                    "training steps; the solver columns are the fraction of training examples whose forward solve, "
                    "and implicit backward solve, converged — the progressive loss runs no solver):", "",
                    table(["regime", "runs", "late loss", "late train acc", "forward conv", "backward conv",
                           "hard best"], [_regime_row(g, [c for c in cs if c.regime == g]) for g in regimes])]
        doc += _recipes_and_stability(cs, task, plots, out)
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
    out = Path(a.out).resolve()
    command = " ".join(["python -m experiments.report", *(argv if argv is not None else sys.argv[1:])])
    try:
        stored = chess_baselines.load(Path(__file__).resolve().parents[1] / chess_baselines.DEFAULT_PATH)
    except ValueError as err:
        p.error(str(err))
    text = render(results, Path(a.plots).resolve(), out, command, baselines=stored)
    out.write_text(text)
    print(f"wrote {out} ({len(results)} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
