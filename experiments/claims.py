"""The paper's claims C1–C4 decided from the runs: each a rule stated next to its verdict, and the
evidence (numbers) it rests on."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from experiments.configs import Config, _m, _med
from experiments.markdown import _task_key, num, pct, pct_se
from experiments.presets import NORMS, REGIMES
from experiments.stats import binomial_se, mean_se, spearman, spearman_ci


@dataclass
class Verdict:
    claim: str
    verdict: str  # "supported" | "contradicted" | "inconclusive at this scale"
    rule: str
    evidence: str


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


C3_MIN_SEEDS = 3  # seeds each post-norm configuration needs for its task to count toward C3


def _recall_pair(configs: list[Config], task: str, norm: str) -> tuple[list[Config], list[Config], bool]:
    """The internal and external configurations of ``task`` with ``norm`` to compare, like with like:
    the progressive ones where both recalls were trained so (the paper's regime), else those of every
    regime both were trained in; and whether it fell back to the latter."""
    i = [c for c in configs if c.task == task and c.norm == norm and c.recall == "internal"]
    e = [c for c in configs if c.task == task and c.norm == norm and c.recall == "external"]
    both = {c.regime for c in i} & {c.regime for c in e}
    regimes = {"progressive"} if "progressive" in both else both

    def pick(cs: list[Config]) -> list[Config]:
        return sorted((c for c in cs if c.regime in regimes), key=lambda c: REGIMES.index(c.regime))
    return pick(i), pick(e), "progressive" not in both


def _seeds(n: int) -> str:
    return f"{n} seed{'' if n == 1 else 's'}"


def _accuracies(cs: list[Config]) -> str:
    """Each configuration's best hard accuracy as mean ± s.e. over its seeds, with the seed count
    (and the regime, where there are several)."""
    def one(c: Config) -> str:
        acc = pct_se(*mean_se(c.seed_best("hard")))
        return f"{acc} % ({_seeds(len(c.runs))})" + (f" {c.regime}" if len(cs) > 1 else "")
    return ", ".join(one(c) for c in cs)


def _comparison(configs: list[Config], task: str, norm: str) -> tuple[list[Config], list[Config], str]:
    """The configurations C3 compares for ``task`` and ``norm``, and the evidence text of the comparison."""
    i, e, fell_back = _recall_pair(configs, task, norm)
    if not i:
        return i, e, f"{norm} norm: no internal and external runs in a shared regime"
    where = ("progressive" if not fell_back else
             f"no progressive runs of both recalls, so the regimes both were trained in ({', '.join(c.regime for c in i)})")
    text = f"{norm} norm, {where}: internal {_accuracies(i)} vs external {_accuracies(e)}"
    if len(i) > 1:
        text += f", averaged over regimes {pct(_m([c.best('hard')[0] for c in i]))} % vs {pct(_m([c.best('hard')[0] for c in e]))} %"
    return i, e, text


def claim3(configs: list[Config]) -> Verdict:
    rule = ("with post norm, under the progressive regime (the paper's; where a task lacks progressive runs of both "
            "recalls, the regimes both were trained in, averaged), per task: internal recall's best hard accuracy "
            "(mean over seeds) ≥ external's − 2 points, and on sudoku ≥ external's + 5 points; a task counts only when "
            f"each of the two post-norm configurations has ≥ {C3_MIN_SEEDS} seeds (else it is not decided) and one of "
            "them learned; contradicted if internal trails by more than 5 points on a task that counts; supported "
            "needs sudoku to count; sandwich norm is reported beside post, not used by the rule")
    lines, ok, bad, decided = [], True, False, set()
    tasks = sorted({c.task for c in configs}, key=_task_key)
    for task in tasks:
        i, e, post = _comparison(configs, task, "post")
        if not i:
            lines.append(f"{task}: {post}")
            continue
        ai, ae = _m([c.best("hard")[0] for c in i]), _m([c.best("hard")[0] for c in e])
        ci, ce = _m([c.best_cells("hard") for c in i]), _m([c.best_cells("hard") for c in e])
        cells = "" if ci is None or ce is None else f", {pct(ci)} % vs {pct(ce)} % of cells right (not used by the rule)"
        ni, ne = min(len(c.runs) for c in i), min(len(c.runs) for c in e)
        learned = any(c.learned for c in i + e)
        if not learned:
            status = " (neither learned)"
        elif min(ni, ne) < C3_MIN_SEEDS:
            status = f" — not decided (internal {_seeds(ni)}, external {_seeds(ne)}; needs ≥ {C3_MIN_SEEDS} each)"
        else:
            status = " — counts toward the verdict"
            decided.add(task)
            ok &= ai >= ae - 0.02 and (task != "sudoku" or ai >= ae + 0.05)
            bad |= ai < ae - 0.05
        sandwich = _comparison(configs, task, "sandwich")
        beside = f" [beside it, not used by the rule: {sandwich[2]}]" if sandwich[0] else ""
        lines.append(f"{task}: {post}{cells}{status}{beside}")
    evidence = "best hard accuracy, mean ± s.e. over seeds — " + "; ".join(lines)
    if not decided:
        return Verdict("C3", "inconclusive at this scale", rule, evidence)
    if bad:
        return Verdict("C3", "contradicted", rule, evidence)
    if ok and "sudoku" in decided:
        return Verdict("C3", "supported", rule, evidence)
    if ok:
        evidence += "; sudoku not decided" + ("" if "sudoku" in tasks else " (no runs)")
    return Verdict("C3", "inconclusive at this scale", rule, evidence)


C4_AXES = (("converged_fraction", "converged fraction"), ("contractive_fraction", "contractive fraction"),
           ("spectral_radius_median", "ρ(J)"), ("local_smoothness_median", "local Lipschitz"),
           ("backward_converged_fraction", "backward converged"))
C4_DECIDING = ("converged_fraction", "contractive_fraction")  # the axes the verdict rests on
C4_NOISE_FACTOR = 2  # a task's accuracy spread must exceed this many single-configuration s.e.


def config_se(cs: list[Config]) -> tuple[float | None, str]:
    """The standard error of one configuration's best hard accuracy, and how it was had: the median
    seed s.e. over the configurations with ≥ 2 seeds; where none has, the binomial s.e. at the
    median accuracy over the configurations and the number of hard examples evaluated."""
    seeded = [mean_se(c.seed_best("hard"))[1] for c in cs if len(c.runs) >= 2]
    if seeded:
        return statistics.median(seeded), f"seed s.e., median over {len(seeded)} configurations with ≥ 2 seeds"
    n = min(int((r["eval"].get("n") or {}).get("hard", 0) or 0) for c in cs for r in c.runs)
    if not n:
        return None, "no configuration with ≥ 2 seeds and no count of hard examples"
    p = statistics.median(c.best("hard")[0] for c in cs)
    return binomial_se(p, n), f"binomial s.e. at the median accuracy {pct(p)} % on {n} hard examples"


def claim4(configs: list[Config]) -> Verdict:
    rule = ("Spearman rank correlation, across configurations of a task, between each stability number and best "
            "hard accuracy, with a bootstrap 95 % confidence interval (configurations resampled 2,000 times, fixed "
            "seed); a task gives a verdict only with ≥ 6 configurations and an accuracy spread (max − min) above "
            f"{C4_NOISE_FACTOR} standard errors of one configuration (the median seed s.e. over configurations with "
            "≥ 2 seeds, else the binomial s.e. at the median accuracy); supported if converged fraction and "
            "contractive fraction both correlate positively (p < 0.05 and the interval above 0) on every such task; "
            "contradicted if either correlates negatively (p < 0.05 and the interval below 0) on some such task")
    lines, decided, support, against = [], 0, True, False
    for task in sorted({c.task for c in configs}, key=_task_key):
        cs = [c for c in configs if c.task == task]
        acc = [c.best("hard")[0] for c in cs]
        spread = max(acc) - min(acc)
        if len(cs) < 6 or spread < 0.01:
            lines.append(f"{task}: {len(cs)} configurations, accuracy range {pct(spread)} points — not enough to rank")
            continue
        se, how = config_se(cs)
        noise = (f"spread {pct(spread)} points vs {C4_NOISE_FACTOR} s.e. = {pct(None if se is None else C4_NOISE_FACTOR * se)} "
                 f"points ({how})")
        counts = se is not None and spread > C4_NOISE_FACTOR * se
        parts, signs = [], {key: 0 for key in C4_DECIDING}
        for key, label in C4_AXES:
            pairs = [(c.stab(key), a) for c, a in zip(cs, acc) if c.stab(key) is not None]
            if len(pairs) < 6 or len({x for x, _ in pairs}) < 2:
                parts.append(f"{label} n/a")
                continue
            xs, ys = [x for x, _ in pairs], [a for _, a in pairs]
            rho, p = spearman(xs, ys)
            ci = spearman_ci(xs, ys)
            interval = "[n/a]" if ci is None else f"[{ci[0]:+.2f}, {ci[1]:+.2f}]"
            parts.append(f"{label} ρ_s = {rho:+.2f} {interval} (p = {p:.2g})")
            if key in signs and ci is not None and p < 0.05:
                signs[key] = 1 if rho > 0 and ci[0] > 0 else -1 if rho < 0 and ci[1] < 0 else 0
        head = f"{task} ({len(cs)} configurations, hard accuracy {pct(min(acc))}–{pct(max(acc))} %; {noise}"
        if not counts:
            why = "the noise cannot be estimated" if se is None else "the spread is within the noise"
            lines.append(f"{head} — no verdict, {why}): " + ", ".join(parts))
            continue
        decided += 1
        support &= all(s > 0 for s in signs.values())
        against |= any(s < 0 for s in signs.values())
        lines.append(f"{head}): " + ", ".join(parts))
    evidence = "; ".join(lines)
    if decided == 0:
        return Verdict("C4", "inconclusive at this scale", rule, evidence)
    if against:
        return Verdict("C4", "contradicted", rule, evidence)
    return Verdict("C4", "supported" if support else "inconclusive at this scale", rule, evidence)
