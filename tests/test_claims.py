"""Claims C3 and C4 and the statistics under them, on small constructed run summaries whose figures
are worked out by hand."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from scipy.stats import spearmanr

from experiments import claims
from experiments.configs import group
from experiments.markdown import pct_se
from experiments.stats import _rank_corr, binomial_se, mean_se, spearman, spearman_ci


def run(task, recall, norm, regime, hard, *, seed=0, conv=None, n_hard=256):
    """A run summary with what the claims read: a hard curve over counts 1 and 10 whose best is
    ``hard`` (at 10), a learned val curve, stability numbers (both deciding C4 axes = ``conv``)."""
    conv = hard if conv is None else conv
    curves = {"iters": [1, 10], "train_depth": 10, "accuracy": {"val": [0.5, 0.9], "hard": [hard / 2, hard]}}
    return {"spec": {"task": task, "recall": recall, "norm": norm, "regime": regime, "seed": seed},
            "train_depth": 10, "eval": {"n": {"val": 256, "hard": n_hard}, "curves": curves},
            "analysis": {"hard": {"converged_fraction": conv, "contractive_fraction": conv}}, "train": {}}


def seeds(task, recall, norm, regime, accs, **kw):
    return [run(task, recall, norm, regime, a, seed=s, **kw) for s, a in enumerate(accs)]


def configs(runs):
    return list(group(runs).values())


# -- statistics ------------------------------------------------------------------------------------


def test_mean_and_standard_error_by_hand():
    # 0.9, 1.0, 0.8: mean 0.9, sample std (ddof 1) 0.1, s.e. 0.1 / √3 = 0.0577 (ddof 0 would give 0.0471)
    mean, se = mean_se([0.9, 1.0, 0.8])
    assert mean == pytest.approx(0.9) and se == pytest.approx(0.057735, abs=1e-6)
    assert pct_se(mean, se) == "90.0 ± 5.8"
    assert mean_se([0.4]) == (0.4, None) and pct_se(0.4, None) == "40.0 ± —"
    assert mean_se([0.5, 0.5])[1] == 0.0
    assert binomial_se(0.5, 100) == pytest.approx(0.05) and binomial_se(0.1, 900) == pytest.approx(0.01)
    with pytest.raises(ValueError):
        mean_se([])


def test_a_configuration_gives_each_seed_at_the_count_where_the_seed_mean_is_best():
    rs = seeds("prefix_sums", "internal", "post", "progressive", [0.9, 1.0, 0.8])
    rs[2]["eval"]["curves"]["accuracy"]["hard"] = [0.95, 0.8]  # this seed alone is best at count 1
    (c,) = configs(rs)
    # mean curve [0.7, 0.9]: best at 10, where the seeds scored 0.9, 1.0, 0.8
    assert c.seed_best("hard") == [0.9, 1.0, 0.8] and c.best("hard") == (pytest.approx(0.9), 10)


def test_rank_correlation_of_rows_matches_scipy_with_ties():
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 4, size=(5, 9)).astype(float), rng.normal(size=(5, 9))
    x[:, 0] = 9.0  # no row constant
    ours = _rank_corr(x, y)
    for row in range(5):
        assert ours[row] == pytest.approx(spearmanr(x[row], y[row]).statistic, abs=1e-12)


def test_the_bootstrap_interval_holds_the_estimate_and_is_reproducible():
    rng = np.random.default_rng(2)
    xs = list(range(20))
    ys = list(np.arange(20) + rng.normal(scale=6.0, size=20))
    rho, _ = spearman(xs, ys)
    lo, hi = spearman_ci(xs, ys)
    assert -1 < lo < rho < hi < 1
    assert spearman_ci(xs, ys) == (lo, hi)  # the fixed seed: the same numbers each time
    assert spearman_ci(xs, ys, seed=1) != (lo, hi)
    assert spearman_ci(xs, ys, level=0.5)[0] > lo  # a narrower level, a narrower interval
    assert spearman_ci([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) is None  # every resample constant: no interval


def test_the_bootstrap_interval_is_the_percentiles_of_resampled_correlations():
    # written out: 2,000 resamples of the pairs from default_rng(0), constant ones skipped, 2.5 and 97.5 percentiles
    xs, ys = np.array([0, 0, 0, 1, 2.0]), np.array([2, 1, 4, 3, 3.0])
    idx = np.random.default_rng(0).integers(0, 5, size=(2000, 5))
    rhos = [spearmanr(xs[i], ys[i]).statistic for i in idx if np.ptp(xs[i]) > 0 and np.ptp(ys[i]) > 0]
    assert 1500 < len(rhos) < 2000  # some resamples were skipped
    assert spearman_ci(list(xs), list(ys)) == pytest.approx(tuple(np.percentile(rhos, [2.5, 97.5])), abs=1e-12)


# -- C3 --------------------------------------------------------------------------------------------


def c3(internal, external, *, task="prefix_sums", regime="progressive", norm="post"):
    return seeds(task, "internal", norm, regime, internal) + seeds(task, "external", norm, regime, external)


def test_c3_gives_mean_and_standard_error_per_configuration():
    v = claims.claim3(configs(c3([0.9, 1.0, 0.8], [0.85, 0.85, 0.85])))
    assert "post norm, progressive: internal 90.0 ± 5.8 % (3 seeds) vs external 85.0 ± 0.0 % (3 seeds)" in v.evidence
    assert "(3 seeds) — counts toward the verdict" in v.evidence
    assert v.verdict == "inconclusive at this scale" and "sudoku not decided (no runs)" in v.evidence
    assert "each of the two post-norm configurations has ≥ 3 seeds" in v.rule


def test_c3_verdict_turns_when_internal_trails_by_more_than_five_points():
    assert claims.claim3(configs(c3([0.50] * 3, [0.54] * 3))).verdict == "inconclusive at this scale"  # 4 points
    assert claims.claim3(configs(c3([0.50] * 3, [0.56] * 3))).verdict == "contradicted"  # 6 points
    # sudoku: internal must lead by 5 points
    assert claims.claim3(configs(c3([0.60] * 3, [0.54] * 3, task="sudoku"))).verdict == "supported"
    assert claims.claim3(configs(c3([0.58] * 3, [0.54] * 3, task="sudoku"))).verdict == "inconclusive at this scale"


def test_c3_a_task_with_fewer_than_three_seeds_is_not_decided():
    rs = c3([0.1, 0.1, 0.1], [0.9, 0.9])  # internal trails by 80 points, but external has 2 seeds
    v = claims.claim3(configs(rs))
    assert v.verdict == "inconclusive at this scale"
    assert "not decided (internal 3 seeds, external 2 seeds; needs ≥ 3 each)" in v.evidence
    assert "external 90.0 ± 0.0 % (2 seeds)" in v.evidence
    v = claims.claim3(configs(rs + [run("prefix_sums", "external", "post", "progressive", 0.9, seed=2)]))
    assert v.verdict == "contradicted"


def test_c3_compares_progressive_runs_and_reports_sandwich_beside():
    rs = c3([0.6] * 3, [0.6] * 3) + c3([0.0], [0.9], regime="implicit")  # implicit: internal far behind, not used
    rs += c3([0.1] * 3, [0.9] * 3, norm="sandwich")  # sandwich: far behind, reported only
    v = claims.claim3(configs(rs))
    assert v.verdict == "inconclusive at this scale", v.evidence
    assert "[beside it, not used by the rule: sandwich norm, progressive: internal 10.0 ± 0.0 % (3 seeds)" in v.evidence
    assert "implicit" not in v.evidence
    # without progressive runs of both, the regimes both were trained in, said so
    rs = c3([0.6] * 3, [0.6] * 3, regime="implicit") + c3([0.4] * 3, [0.6] * 3, regime="phantom")
    rs += seeds("prefix_sums", "internal", "post", "progressive", [0.9] * 3)
    v = claims.claim3(configs(rs))
    assert "no progressive runs of both recalls, so the regimes both were trained in (implicit, phantom)" in v.evidence
    assert "averaged over regimes 50.0 % vs 60.0 %" in v.evidence and v.verdict == "contradicted"


# -- C4 --------------------------------------------------------------------------------------------

C4_KEYS = [(r, n) for r in ("external", "internal") for n in ("pre", "peri", "post")]


def c4(accs, *, n_seeds=1, n_hard=100):
    """Six configurations of prefix sums with these mean accuracies, converged and contractive
    fractions rising with accuracy; with two seeds, each at mean ± 0.05 (seed s.e. 0.05)."""
    rs = []
    for (recall, norm), a in zip(C4_KEYS, accs):
        spread = [0.0] if n_seeds == 1 else [-0.05, 0.05]
        rs += seeds("prefix_sums", recall, norm, "progressive", [a + d for d in spread], conv=a, n_hard=n_hard)
    return configs(rs)


@pytest.mark.parametrize("n_seeds, n_hard, how", [
    (1, 100, "binomial s.e. at the median accuracy 50.0 % on 100 hard examples"),
    (2, 10_000, "seed s.e., median over 6 configurations with ≥ 2 seeds"),  # seeds first; binomial would be 0.5 points
])
def test_c4_refuses_a_task_whose_spread_is_within_two_standard_errors(n_seeds, n_hard, how):
    # single-configuration s.e. 5 points (binomial √(0.5·0.5/100), or seeds ± 5 points: std 0.0707 / √2)
    narrow = c4([0.45, 0.47, 0.49, 0.51, 0.53, 0.54], n_seeds=n_seeds, n_hard=n_hard)  # spread 9 < 10 points
    se, text = claims.config_se(narrow)
    assert se == pytest.approx(0.05) and text == how
    v = claims.claim4(narrow)
    assert v.verdict == "inconclusive at this scale"
    assert f"spread 9.0 points vs 2 s.e. = 10.0 points ({how}) — no verdict, the spread is within the noise" in v.evidence
    wide = c4([0.44, 0.47, 0.49, 0.51, 0.53, 0.56], n_seeds=n_seeds, n_hard=n_hard)  # spread 12 > 10 (< 3 s.e.)
    v = claims.claim4(wide)
    assert v.verdict == "supported", v.evidence
    assert "spread 12.0 points vs 2 s.e. = 10.0 points" in v.evidence and "no verdict" not in v.evidence
    assert "converged fraction ρ_s = +1.00 [+1.00, +1.00] (p = " in v.evidence


def test_c4_single_configuration_se_is_the_median_over_seeded_configurations():
    cs = c4([0.44, 0.47, 0.49, 0.51, 0.53, 0.56], n_seeds=2)  # seed s.e. 0.05 each
    for r, acc in zip(cs[0].runs, [0.24, 0.64]):  # this one's seed s.e. 0.2: the median stays 0.05 (the mean would be 0.075)
        r["eval"]["curves"]["accuracy"]["hard"] = [acc / 2, acc]
    assert claims.config_se(cs)[0] == pytest.approx(0.05)


def test_c4_without_seeds_or_an_example_count_gives_no_verdict():
    v = claims.claim4(c4([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], n_hard=0))
    assert v.verdict == "inconclusive at this scale"
    assert "2 s.e. = — points (no configuration with ≥ 2 seeds and no count of hard examples) — no verdict, " \
           "the noise cannot be estimated" in v.evidence


def test_c4_needs_the_interval_to_exclude_zero(monkeypatch):
    wide = c4([0.44, 0.47, 0.49, 0.51, 0.53, 0.56])
    monkeypatch.setattr(claims, "spearman_ci", lambda xs, ys: (-0.1, 0.9))
    v = claims.claim4(wide)
    assert v.verdict == "inconclusive at this scale"  # p < 0.05, but the interval holds 0
    assert "converged fraction ρ_s = +1.00 [-0.10, +0.90]" in v.evidence
    falling = c4([0.56, 0.53, 0.51, 0.49, 0.47, 0.44])
    for c in falling:  # accuracy falls as the fractions rise
        for r in c.runs:
            r["analysis"]["hard"].update({k: 1 - r["analysis"]["hard"][k] for k in claims.C4_DECIDING})
    monkeypatch.setattr(claims, "spearman_ci", lambda xs, ys: (-0.9, -0.2))
    assert claims.claim4(falling).verdict == "contradicted"
    monkeypatch.setattr(claims, "spearman_ci", lambda xs, ys: (-0.9, 0.2))
    assert claims.claim4(falling).verdict == "inconclusive at this scale"


def test_c4_interval_is_printed_with_the_estimate():
    v = claims.claim4(c4([0.44, 0.47, 0.49, 0.51, 0.53, 0.56]))
    m = re.search(r"converged fraction ρ_s = ([+-]\d\.\d\d) \[([+-]\d\.\d\d), ([+-]\d\.\d\d)\] \(p = ([\d.e-]+)\)", v.evidence)
    assert m and float(m[2]) <= float(m[1]) <= float(m[3]) and not math.isnan(float(m[4]))
    assert claims.claim4(c4([0.44, 0.47, 0.49, 0.51, 0.53, 0.56])).evidence == v.evidence
