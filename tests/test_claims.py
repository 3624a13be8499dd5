"""The claims' rules (experiments/claims.py) on hand-made run summaries: each rule reaches supported,
contradicted and inconclusive, and its figures are worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import bootstrap, spearmanr

from experiments import claims
from experiments.table import runs_frame


def run(task="prefix_sums", recall="internal", norm="post", regime="progressive", seed=0, *, hard=0.5,
        iters=(1, 10, 500), steps=600, **fields):
    """A run summary: a hard curve ending at ``hard`` at the last count (500), the analysis and
    training numbers given in ``fields`` under the names of :data:`experiments.table.COLUMNS`."""
    analysis = {k: fields.pop(k) for k in list(fields) if k in (
        "converged_fraction", "distinct_fixed_points", "fixed_point_spread", "resolvent_norm_median",
        "input_sensitivity_median", "local_smoothness_median", "input_fd_median", "backward_converged_fraction",
        "spectral_radius_median")}
    train = {k: fields.pop(k) for k in list(fields) if k.startswith("grad_norm")}
    analysis["weights"] = {k: fields.pop(k) for k in list(fields) if k.startswith("injection")}
    settling = {"converged": fields.pop("plain_reach")} if "plain_reach" in fields else {}
    cfg = {"steps": steps, "lr": 1e-3, **fields}
    curve = [hard / 4, hard / 2, hard][-len(iters):]
    return {"name": f"{task}/{recall}-{norm}-{regime}-s{seed}", "preset": "cpu",
            "spec": {"task": task, "recall": recall, "norm": norm, "regime": regime, "seed": seed},
            "train_config": cfg, "eval": {"curves": {"iters": list(iters), "accuracy": {"hard": curve, "val": curve}},
                                          "settling": {"hard": settling}},
            "analysis": {"hard": analysis}, "analysis_options": {"n": 16}, "train": train}


def frame(runs):
    return runs_frame(runs)


# -- the table ---------------------------------------------------------------------------------------


def test_the_table_reads_accuracy_at_500_and_never_invents_it():
    f = frame([run(hard=0.75), run(seed=1, hard=0.75, iters=(1, 10, 300))])
    assert f.hard_at.tolist()[0] == 0.75 and math.isnan(f.hard_at.tolist()[1])  # no count 500: NaN
    assert f.hard_best.tolist() == [0.75, 0.75] and f.hard_best_at.tolist() == [500.0, 300.0]
    # a summary's own @500 field wins over the curve
    r = run(hard=0.75)
    r["eval"]["paper"] = {"iterations": 500, "accuracy": {"hard": 0.5, "val": None}}
    assert frame([r]).hard_at.tolist() == [0.5] and math.isnan(frame([r]).val_at.tolist()[0])
    # the untied baseline's paper number is at one iteration (its curve: 0.1875 at 1)
    assert frame([run(recall="none", blocks=15, hard=0.75)]).hard_at.tolist() == [0.1875]
    # the internal recall's form: the paper's shared pair only where the configuration says so
    # (rows sorted by run name)
    assert frame([run(seed=0), run(seed=1, recall_maps="shared"), run(recall="external")]).recall_form.tolist() == \
        ["—", "per_sublayer", "shared"]
    assert frame([run(norm=n, recall=r) for r, n in (("internal", "post"), ("external", "peri"), ("none", "post"))]
                 + [run(recall="none", seed=1, blocks=15)]).family.tolist() == \
        ["recall + inner", "recall + outer", "no recall", "untied"]


def test_mean_se_and_welch_by_hand():
    import pandas as pd

    m, se, n = claims.mean_se(pd.Series([0.2, 0.4, 0.6, float("nan")]))
    assert (m, n) == (pytest.approx(0.4), 3) and se == pytest.approx(0.2 / math.sqrt(3))
    gap, se = claims.welch(pd.Series([0.2, 0.4, 0.6]), pd.Series([0.1, 0.1, 0.4]))
    # s.d.² of the second: mean 0.2, squares 0.01 + 0.01 + 0.04 = 0.06, / 2 = 0.03
    assert gap == pytest.approx(0.2) and se == pytest.approx(math.sqrt(0.04 / 3 + 0.03 / 3))


# -- C1 ------------------------------------------------------------------------------------------------


def c1_runs(fd, hard=0.0, n=3):
    free = [run(recall="none", norm=nm, seed=0, hard=hard, converged_fraction=1.0, input_fd_median=fd,
                distinct_fixed_points=2, resolvent_norm_median=3.0) for nm in ("pre", "peri", "post", "sandwich")[:n]]
    recall = [run(recall="internal", hard=0.9, input_sensitivity_median=0.5, input_fd_median=0.4)]
    return free + recall


def test_c1_supported_contradicted_inconclusive():
    assert claims.claim1(frame(c1_runs(fd=1e-3))).verdict == claims.SUPPORTED
    v = claims.claim1(frame(c1_runs(fd=0.9)))  # z* follows e: a continuum of fixed points
    assert v.verdict == claims.CONTRADICTED and "prefix_sums/none-pre-progressive-s0" in v.evidence
    assert claims.claim1(frame(c1_runs(fd=1e-3, hard=0.25))).verdict == claims.CONTRADICTED  # passes the hard split
    v = claims.claim1(frame(c1_runs(fd=None)))  # old summaries: no finite difference from z0 = e
    assert v.verdict == claims.INCONCLUSIVE and "3 of 3 summaries lack the finite difference" in v.evidence
    assert claims.claim1(frame(c1_runs(fd=1e-3, n=2))).verdict == claims.INCONCLUSIVE  # fewer than 3 runs
    assert claims.claim1(frame(c1_runs(fd=0.2))).verdict == claims.INCONCLUSIVE  # between the thresholds
    # runs that do not converge from z0 = e do not count
    rs = c1_runs(fd=0.9)
    for r in rs[:3]:
        r["analysis"]["hard"]["converged_fraction"] = 0.25
    v = claims.claim1(frame(rs))
    assert v.verdict == claims.INCONCLUSIVE and "no recall-free run converges" in v.evidence
    # accuracy @500 missing from a summary: said, not invented
    rs = c1_runs(fd=1e-3)
    rs[0]["eval"]["curves"]["iters"] = [1, 10, 300]
    v = claims.claim1(frame(rs))
    assert v.verdict == claims.INCONCLUSIVE and "1 summaries lack accuracy @500" in v.evidence


def test_the_untied_baseline_is_placed_not_counted():
    # 15 untied blocks and no recall (the spec's recall "fixed"): neither a recall-free loop (C1) nor a recall run
    untied = run(recall="fixed", norm="post", blocks=15, hard=0.75, converged_fraction=1.0, input_fd_median=0.9)
    assert claims.claim1(frame(c1_runs(fd=1e-3) + [untied])).verdict == claims.SUPPORTED
    v = claims.claim4(frame(c4_runs([0.9, 0.8, 0.85], [0.5, 0.4, 0.45], [0.0, 0.01, 0.0]) + [untied]))
    assert v.verdict == claims.SUPPORTED and "untied 18.8 ± — % (n = 1)" in v.evidence  # its number at 1 iteration


def test_c1_evidence_gives_the_contrast_by_hand():
    v = claims.claim1(frame(c1_runs(fd=1e-3)))
    assert "hard @500: recall-free 0.0 ± 0.0 % (n = 3), recall 90.0 ± — % (n = 1)" in v.evidence
    assert "median 2 of 16 examples" in v.evidence and "recall 0.5;" in v.evidence


# -- C2 ------------------------------------------------------------------------------------------------


def c2_runs(outer, inner, spread_outer=2.0, spread_inner=2.0):
    """Four matched cells (2 recalls × 2 regimes), each with a post and a sandwich (outer) and a pre and
    a peri (inner) run: reach and backward convergence ``outer`` / ``inner`` plus a per-cell offset."""
    rs = []
    for k, (recall, regime) in enumerate((("internal", "progressive"), ("internal", "phantom"),
                                          ("external", "progressive"), ("external", "phantom"))):
        for norm in ("post", "sandwich", "pre", "peri"):
            out = norm in ("post", "sandwich")
            v = (outer if out else inner) + 0.01 * k
            rs.append(run(recall=recall, norm=norm, regime=regime, plain_reach=v, backward_converged_fraction=v,
                          grad_norm_median=1.0, grad_norm_max=(spread_outer if out else spread_inner) * (1 + 0.01 * k)))
    return rs


def test_c2_pairs_outer_and_inner_within_each_cell():
    cells = claims.c2_cells(frame(c2_runs(0.8, 0.2)))
    assert len(cells) == 4
    # cells sorted by (task, recall, regime): external phantom (k = 3), external progressive (2), internal ...
    assert cells[("plain_reach", "outer")].tolist() == pytest.approx([0.83, 0.82, 0.81, 0.8])
    assert cells[("stability", "inner")].tolist() == pytest.approx(
        [-math.log10(2 * 1.03), -math.log10(2 * 1.02), -math.log10(2 * 1.01), -math.log10(2.0)])


def test_c2_supported_contradicted_inconclusive():
    v = claims.claim2(frame(c2_runs(0.8, 0.2, spread_outer=2.0, spread_inner=20.0)))
    assert v.verdict == claims.SUPPORTED, v.evidence
    assert "reachable by plain iteration: outer 0.815 vs inner 0.215, difference 0.6 [0.6, 0.6]" in v.evidence
    # outer reaches more, but its gradients spike ten times higher: backprop stability reversed
    assert claims.claim2(frame(c2_runs(0.8, 0.2, spread_outer=20.0, spread_inner=2.0))).verdict == claims.CONTRADICTED
    # no difference on reach and backward: inconclusive
    assert claims.claim2(frame(c2_runs(0.5, 0.5, spread_outer=2.0, spread_inner=20.0))).verdict == claims.INCONCLUSIVE
    # outer runs with no inner counterpart do not weigh in
    only_outer = [r for r in c2_runs(0.8, 0.2) if r["spec"]["norm"] in ("post", "sandwich")]
    v = claims.claim2(frame(only_outer))
    assert v.verdict == claims.INCONCLUSIVE and v.evidence == "0 matched outer/inner cells"


def test_c2_interval_is_scipys_percentile_bootstrap():
    rs = c2_runs(0.8, 0.2, spread_inner=20.0)
    for i, r in enumerate(rs):  # uneven differences, so the interval has width
        r["eval"]["settling"]["hard"]["converged"] += 0.05 * (i % 3)
    cells = claims.c2_cells(frame(rs))
    d = (cells[("plain_reach", "outer")] - cells[("plain_reach", "inner")]).to_numpy()
    ci = bootstrap((d,), np.mean, n_resamples=2000, confidence_level=0.95, method="percentile",
                   random_state=0).confidence_interval
    v = claims.claim2(frame(rs))
    assert f"difference {d.mean():.3g} [{ci.low:.3g}, {ci.high:.3g}]" in v.evidence
    assert claims.claim2(frame(rs)).evidence == v.evidence  # the same on every build


# -- C3 ------------------------------------------------------------------------------------------------


def c3_runs(internal, external, task="sudoku", form="shared"):
    return ([run(task=task, recall="internal", seed=s, hard=a, recall_maps=form) for s, a in enumerate(internal)]
            + [run(task=task, recall="external", seed=s, hard=a) for s, a in enumerate(external)])


def test_c3_supported_contradicted_inconclusive():
    assert claims.claim3(frame(c3_runs([0.6, 0.7, 0.65], [0.2, 0.3, 0.25]))).verdict == claims.SUPPORTED
    assert claims.claim3(frame(c3_runs([0.2, 0.3, 0.25], [0.6, 0.7, 0.65]))).verdict == claims.CONTRADICTED
    # prefix sums decided for internal is not enough: the claim is about sudoku
    assert claims.claim3(frame(c3_runs([0.6, 0.7, 0.65], [0.2, 0.3, 0.25], task="prefix_sums"))).verdict == \
        claims.INCONCLUSIVE
    # both under the floor: inconclusive at this budget, the budget named
    v = claims.claim3(frame(c3_runs([0.0, 0.01, 0.0], [0.05, 0.1, 0.02])))
    assert v.verdict == claims.INCONCLUSIVE and "cannot decide: neither reaches 20% @500 at 600 steps (cpu preset)" in v.evidence


def test_c3_noise_gate_and_power_by_hand():
    # gap 0.1; s.e. √(0.01/3 + 0.01/3) = 0.0816: within 2 s.e.; seeds for 2 s.e. = ⌈3·(2·0.0816/0.1)²⌉ = 8
    v = claims.claim3(frame(c3_runs([0.3, 0.4, 0.5], [0.2, 0.3, 0.4])))
    assert v.verdict == claims.INCONCLUSIVE
    assert "cannot decide: the gap is within 2 s.e. (≈ 8 seeds per side would make this gap 2 s.e.)" in v.evidence
    assert "internal 40.0 ± 5.8 (3) vs external 30.0 ± 5.8 (3) % @500" in v.evidence


def test_c3_compares_within_a_learning_rate():
    # internal far ahead at 1e-3, far behind at 3e-4: pooled they would be within noise; apart, 3e-4 contradicts
    rs = c3_runs([0.6, 0.7, 0.65], [0.2, 0.3, 0.25])
    for seed, (i, e) in enumerate(zip([0.2, 0.3, 0.25], [0.6, 0.7, 0.65])):
        rs += [run(task="sudoku", recall="internal", seed=seed, hard=i, recall_maps="shared", lr=3e-4),
               run(task="sudoku", recall="external", seed=seed, hard=e, lr=3e-4)]
    for r in rs:
        r["name"] += f"-lr{r['train_config']['lr']:g}"
    v = claims.claim3(frame(rs))
    assert v.verdict == claims.CONTRADICTED
    assert "sudoku, post, lr 0.001: internal 65.0 ± 2.9 (3)" in v.evidence and "lr 0.0003" in v.evidence


def test_c3_the_per_sublayer_recall_cannot_decide():
    v = claims.claim3(frame(c3_runs([0.6, 0.7, 0.65], [0.2, 0.3, 0.25], form=None)))
    assert v.verdict == claims.INCONCLUSIVE and "cannot decide: the internal runs use the per-sublayer recall" in v.evidence
    rs = c3_runs([0.6, 0.7, 0.65], [0.2, 0.3, 0.25])
    rs[0]["eval"]["curves"]["iters"] = [1, 10, 300]  # one summary without accuracy @500
    v = claims.claim3(frame(rs))
    assert v.verdict == claims.INCONCLUSIVE and "cannot decide: no accuracy @500 in 1 summaries" in v.evidence


# -- C4 ------------------------------------------------------------------------------------------------


def c4_runs(outer, inner, none, regime="progressive"):
    rs = [run(recall="internal", norm="post", seed=s, hard=a, regime=regime) for s, a in enumerate(outer)]
    rs += [run(recall="external", norm="pre", seed=s, hard=a, regime=regime) for s, a in enumerate(inner)]
    return rs + [run(recall="none", norm="post", seed=s, hard=a, regime=regime) for s, a in enumerate(none)]


def test_c4_supported_contradicted_inconclusive():
    assert claims.claim4(frame(c4_runs([0.9, 0.8, 0.85], [0.5, 0.4, 0.45], [0.0, 0.01, 0.0]))).verdict == \
        claims.SUPPORTED
    # inner significantly above outer: a reversal of a predicted pair
    v = claims.claim4(frame(c4_runs([0.5, 0.4, 0.45], [0.9, 0.8, 0.85], [0.0, 0.01, 0.0])))
    assert v.verdict == claims.CONTRADICTED
    assert "recall + outer − recall + inner = -40.0 ± 4.1 points" in v.evidence
    # the order holds but outer and inner are within noise: inconclusive, not contradicted
    assert claims.claim4(frame(c4_runs([0.5, 0.9, 0.7], [0.4, 0.8, 0.6], [0.0, 0.01, 0.0]))).verdict == \
        claims.INCONCLUSIVE
    # regimes the paper never used do not count
    assert claims.claim4(frame(c4_runs([0.5, 0.4, 0.45], [0.9, 0.8, 0.85], [0.0, 0.0, 0.0], regime="phantom"))
                         ).verdict == claims.INCONCLUSIVE


def test_c4_reports_the_correlations_within_recall_families():
    rs = [run(recall="internal", norm=n, seed=s, hard=0.1 * (i + s), spectral_radius_median=0.5 + 0.1 * i,
              injection_spectral_radius=0.9 - 0.05 * (i + s))
          for i, n in enumerate(("pre", "peri", "post", "sandwich")) for s in range(2)]
    f = frame(rs)
    ref = spearmanr(f.rho, f.hard_at)
    v = claims.claim4(f)
    assert f"internal ρ(J): ρ_s = {ref.statistic:+.2f} (p = {ref.pvalue:.2g}, 8 runs)" in v.evidence
    assert "internal ρ(W_x): ρ_s = -1.00" in v.evidence and "external ρ(J): not recorded" in v.evidence
