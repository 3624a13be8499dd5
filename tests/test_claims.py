"""The claims' rules (experiments/claims.py) on hand-made run summaries: each rule reaches supported,
contradicted and inconclusive, and its figures are worked out by hand."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from scipy.stats import spearmanr

from experiments import claims
from experiments.table import mean_se, runs_frame

ANALYSIS = ("converged_fraction", "distinct_fixed_points", "resolvent_norm_median", "input_sensitivity_median",
            "input_fd_median", "backward_converged_fraction", "spectral_radius_median")


def run(task="prefix_sums", recall="internal", norm="post", regime="paper", seed=0, *, hard=0.5, iters=(1, 10, 500),
        steps=600, preset="seed-cpu", lr=1e-3, **fields):
    """A run summary: a hard curve ending at ``hard`` at the last count (500), the analysis and training
    numbers given in ``fields`` under their summary names, the rest into the training configuration."""
    analysis = {k: fields.pop(k) for k in list(fields) if k in ANALYSIS}
    train = {k: fields.pop(k) for k in list(fields) if k.startswith("grad_norm")}
    analysis["weights"] = {k: fields.pop(k) for k in list(fields) if k.startswith("injection")}
    settling = {"converged": fields.pop("plain_reach")} if "plain_reach" in fields else {}
    cfg = {"steps": steps, "lr": lr, "recall_maps": "shared", **fields}
    curve = [hard / 4, hard / 2, hard][-len(iters):]
    return {"name": f"{task}/{recall}-{norm}-{regime}-lr{lr:g}-s{seed}", "preset": preset,
            "spec": {"task": task, "recall": recall, "norm": norm, "regime": regime, "seed": seed},
            "train_config": cfg, "eval": {"curves": {"iters": list(iters), "accuracy": {"hard": curve, "val": curve}},
                                          "settling": {"hard": settling}},
            "analysis": {"hard": analysis}, "analysis_options": {"n": 16}, "train": train}


def frame(runs):
    return runs_frame(runs)


# -- the table and the comparison of cells ---------------------------------------------------------------


def test_the_table_reads_accuracy_at_500_and_never_invents_it():
    f = frame([run(hard=0.75), run(seed=1, hard=0.75, iters=(1, 10, 300))])
    assert f.hard_at.tolist()[0] == 0.75 and math.isnan(f.hard_at.tolist()[1])  # no count 500: NaN
    assert f.hard_best.tolist() == [0.75, 0.75] and f.hard_best_at.tolist() == [500.0, 300.0]
    r = run(hard=0.75)  # a summary's own @500 field wins over the curve
    r["eval"]["paper"] = {"iterations": 500, "accuracy": {"hard": 0.5, "val": None}}
    assert frame([r]).hard_at.tolist() == [0.5] and math.isnan(frame([r]).val_at.tolist()[0])
    # the untied baseline's paper number is at one iteration (its curve: 0.1875 at 1)
    assert frame([run(recall="fixed", blocks=15, hard=0.75)]).hard_at.tolist() == [0.1875]
    # the internal recall's form: the per-sublayer one where the configuration predates the option
    assert frame([run(recall_maps=None), run(seed=1), run(recall="external")]).recall_form.tolist() == \
        ["—", "per_sublayer", "shared"]
    # families: the GRU row (peri norm) with the inner norms, several untied blocks the baseline
    f = frame([run(norm=n, recall=r) for r, n in (("internal", "gru"), ("external", "sandwich"), ("none", "post"))]
              + [run(recall="fixed", blocks=15)])  # rows sorted by name: external, fixed, internal, none
    assert f.family.tolist() == ["recall + outer", "untied", "recall + inner", "no recall"]


def test_mean_se_and_the_cells_seed_error_by_hand():
    m, se, n = mean_se(pd.Series([0.2, 0.4, 0.6, float("nan")]))
    assert (m, n) == (pytest.approx(0.4), 3) and se == pytest.approx(0.2 / math.sqrt(3))
    # two cells: post 0.2/0.4/0.6 (mean 0.4, var 0.04), sandwich 0.1/0.1/0.4 (mean 0.2, var 0.03)
    hi = frame([run(norm="post", seed=s, hard=h) for s, h in enumerate((0.2, 0.4, 0.6))]
               + [run(norm="sandwich", seed=s, hard=h) for s, h in enumerate((0.1, 0.1, 0.4))])
    mean, se, seeds = claims.side(hi, "hard_at")
    assert mean == pytest.approx(0.3) and seeds == 3
    assert se == pytest.approx(math.sqrt(0.04 / 3 + 0.03 / 3) / 2)
    # against one cell 0.0/0.1/0.2 (mean 0.1, var 0.01): gap 0.2, s.e. √(se_hi² + 0.01/3)
    lo = frame([run(norm="pre", seed=s, hard=h) for s, h in enumerate((0.0, 0.1, 0.2))])
    gap = claims.compare(hi, lo, "hard_at")
    assert gap.gap == pytest.approx(0.2) and gap.se == pytest.approx(math.sqrt(se ** 2 + 0.01 / 3))
    assert gap.sign == 1 and gap.why() == ""  # 0.2 > 2 · 0.0764
    # one cell with a single seed: no seed s.e., nothing decided, and the text says so
    one = claims.compare(hi, frame([run(norm="pre", hard=0.0)]), "hard_at")
    assert math.isnan(one.se) and one.sign == 0 and one.why().startswith("1 seed a cell: no seed s.e.")
    # within 2 s.e.: the seeds a cell at which the gap would be 2 s.e., ⌈3 · (2 · s.e. / gap)²⌉
    near = claims.compare(hi, frame([run(norm="pre", seed=s, hard=h) for s, h in enumerate((0.1, 0.3, 0.5))]),
                          "hard_at")
    assert near.sign == 0
    # post/sandwich 0.3 against 0.3 ± 0.2: gap 0, so "no gap"; against 0.1/0.3/0.4 (mean 0.2667, var 0.02333)
    assert near.why() == "no gap"
    near = claims.compare(hi, frame([run(norm="pre", seed=s, hard=h) for s, h in enumerate((0.1, 0.3, 0.4))]),
                          "hard_at")
    se = math.sqrt(0.04 / 3 / 4 + 0.03 / 3 / 4 + (0.07 / 3) / 3)
    assert near.se == pytest.approx(se) and near.gap == pytest.approx(0.3 - 0.8 / 3)
    assert near.why() == f"within 2 s.e.: ≈ {math.ceil(round(3 * (2 * se / (0.3 - 0.8 / 3)) ** 2, 6))} seeds a cell would make it 2 s.e."


def test_the_verdicts_read_one_seed_preset_in_the_papers_regime():
    rs = [run(seed=0), run(seed=1, regime="progressive"), run(seed=2, preset="cpu"), run(seed=3, preset="paper")]
    assert claims.paper_runs(frame(rs)).name.tolist() == ["prefix_sums/internal-post-paper-lr0.001-s0"]
    # a seed-gpu run wins over the seed-cpu ones: presets are never pooled
    assert claims.paper_runs(frame(rs + [run(seed=4, preset="seed-gpu")])).preset.unique().tolist() == ["seed-gpu"]
    assert claims.paper_runs(frame([run(regime="phantom")])).empty


# -- C1 ------------------------------------------------------------------------------------------------


def c1_runs(fd, hard=0.0, n=3, reach=1.0):
    free = [run(recall="none", norm=nm, hard=hard, converged_fraction=1.0, plain_reach=reach, input_fd_median=fd,
                distinct_fixed_points=1, resolvent_norm_median=3.0, spectral_radius_median=0.5)
            for nm in ("pre", "peri", "gru", "post")[:n]]
    return free + [run(recall="internal", hard=0.9, input_sensitivity_median=0.5)]


def test_c1_supported_contradicted_inconclusive():
    v = claims.claim1(frame(c1_runs(fd=1e-3)))
    assert v.verdict == claims.SUPPORTED, v.evidence
    assert "3 recall-free runs (600 steps (seed-cpu preset)), 3 at fixed points" in v.evidence
    assert "clusters over the probe 1 of 16, 1 of 16, 1 of 16" in v.evidence and "recall runs up to 90.0 %" in v.evidence
    v = claims.claim1(frame(c1_runs(fd=0.9)))  # z* follows e: a continuum of fixed points
    assert v.verdict == claims.CONTRADICTED and "; against it: " in v.evidence
    assert "prefix_sums/none-pre-paper-lr0.001-s0" in v.evidence.split("; against it: ")[1]
    # a recall-free loop passing the hard split contradicts, reached or not
    assert claims.claim1(frame(c1_runs(fd=1e-3, hard=0.25, reach=0.0))).verdict == claims.CONTRADICTED
    v = claims.claim1(frame(c1_runs(fd=1e-3, n=2)))
    assert v.verdict == claims.INCONCLUSIVE and "2 recall-free runs at fixed points, the rule needs 3" in v.evidence
    v = claims.claim1(frame(c1_runs(fd=None)))
    assert v.verdict == claims.INCONCLUSIVE and "3 lack the finite difference from z₀ = e" in v.evidence
    assert claims.claim1(frame(c1_runs(fd=0.2))).verdict == claims.INCONCLUSIVE  # between the thresholds
    rs = c1_runs(fd=1e-3)
    rs[0]["eval"]["curves"]["iters"] = [1, 10, 300]  # accuracy @500 missing: said, not invented
    v = claims.claim1(frame(rs))
    assert v.verdict == claims.INCONCLUSIVE and "1 summaries lack accuracy @500" in v.evidence


def test_c1_counts_no_drift_as_a_fixed_point():
    # Anderson "converges" but plain iteration never settles: ρ(J) ≈ 1, the state drifts; its huge
    # finite difference neither counts for nor against the claim, and the evidence names it
    rs = c1_runs(fd=1e-3)
    rs[0]["eval"]["settling"]["hard"]["converged"] = 0.0
    rs[0]["analysis"]["hard"].update(input_fd_median=1e8, spectral_radius_median=1.00002)
    v = claims.claim1(frame(rs))
    assert v.verdict == claims.INCONCLUSIVE and "2 recall-free runs at fixed points" in v.evidence
    assert "not counted, Anderson converging where plain iteration does not settle: " \
           "prefix_sums/none-pre-paper-lr0.001-s0 (ρ(J) 1, ‖(I − J)⁻¹‖ 3, finite difference 1e+08)" in v.evidence


def test_the_untied_baseline_is_placed_not_counted():
    untied = run(recall="fixed", norm="post", blocks=15, hard=0.75, converged_fraction=1.0, input_fd_median=0.9)
    assert claims.claim1(frame(c1_runs(fd=1e-3) + [untied])).verdict == claims.SUPPORTED
    v = claims.claim4(frame(c4_runs([0.9, 0.8, 0.85], [0.5, 0.4, 0.45], [0.0, 0.01, 0.0]) + [untied]))
    assert v.verdict == claims.SUPPORTED and "untied 18.8 %" in v.evidence  # its number at 1 iteration


# -- C2 ------------------------------------------------------------------------------------------------


def c2_runs(outer, inner, spread_outer=2.0, spread_inner=2.0, seeds=3):
    """Both recall families, each with a post (outer) and a pre and a peri (inner) cell over ``seeds``:
    reach and backward convergence ``outer`` / ``inner`` plus 0.01 · seed."""
    rs = []
    for recall in ("internal", "external"):
        for norm in ("post", "pre", "peri"):
            out = norm == "post"
            for s in range(seeds):
                v = (outer if out else inner) + 0.01 * s
                rs.append(run(recall=recall, norm=norm, seed=s, plain_reach=v, backward_converged_fraction=v,
                              converged_fraction=1.0,
                              grad_norm_median=1.0, grad_norm_max=(spread_outer if out else spread_inner) * (1 + 0.01 * s)))
    return rs


def test_c2_supported_contradicted_inconclusive():
    v = claims.claim2(frame(c2_runs(0.8, 0.2, spread_outer=2.0, spread_inner=20.0)))
    assert v.verdict == claims.SUPPORTED, v.evidence
    # each side's seeds 0.8/0.81/0.82: s.d. 0.01, s.e. 0.01/√3 a cell; inner's two cells: √(2 · 0.01²/3)/2
    se = math.sqrt(0.01 ** 2 / 3 + 2 * 0.01 ** 2 / 3 / 4)
    assert (f"internal recall (post against peri/pre; 600 steps (seed-cpu preset)): reachable by plain iteration "
            f"(hard split, 500 iterations) 0.81 vs 0.21, gap 0.6, 2-s.e. interval [{0.6 - 2 * se:.3g}, {0.6 + 2 * se:.3g}]"
            ) in v.evidence
    # outer reaches more, but its gradients spike ten times higher: backprop stability reversed
    v = claims.claim2(frame(c2_runs(0.8, 0.2, spread_outer=20.0, spread_inner=2.0)))
    assert v.verdict == claims.CONTRADICTED and "it rests on −log₁₀ gradient-norm spread" in v.change
    # one seed a cell: nothing decided, however large the gaps, and the evidence says why
    v = claims.claim2(frame(c2_runs(0.8, 0.2, spread_inner=20.0, seeds=1)))
    assert v.verdict == claims.INCONCLUSIVE and "1 seed a cell: no seed s.e." in v.evidence
    assert claims.claim2(frame(c2_runs(0.5, 0.5, spread_inner=20.0))).verdict == claims.INCONCLUSIVE  # no gap
    # no fixed point on the probe: the backward solve says nothing of conditioning, so (b) is not measured
    rs = c2_runs(0.8, 0.2, spread_inner=20.0)
    for r in rs:
        r["analysis"]["hard"]["converged_fraction"] = 0.0
    v = claims.claim2(frame(rs))
    assert v.verdict == claims.INCONCLUSIVE
    assert "implicit backward solve converged (probe, runs with fixed points on it) — vs —, gap — (not measured" in v.evidence
    only_outer = [r for r in c2_runs(0.8, 0.2) if r["spec"]["norm"] == "post"]
    assert claims.claim2(frame(only_outer)).evidence.startswith("no recall family has both")


# -- C3 ------------------------------------------------------------------------------------------------


def c3_runs(internal, external, task="sudoku", form="shared", lr=1e-3):
    return ([run(task=task, recall="internal", seed=s, hard=a, recall_maps=form, lr=lr) for s, a in enumerate(internal)]
            + [run(task=task, recall="external", seed=s, hard=a, lr=lr) for s, a in enumerate(external)])


def test_c3_supported_contradicted_inconclusive():
    assert claims.claim3(frame(c3_runs([0.6, 0.7, 0.65], [0.2, 0.3, 0.25]))).verdict == claims.SUPPORTED
    assert claims.claim3(frame(c3_runs([0.2, 0.3, 0.25], [0.6, 0.7, 0.65]))).verdict == claims.CONTRADICTED
    # prefix sums decided for internal is not enough: the claim is about sudoku
    assert claims.claim3(frame(c3_runs([0.6, 0.7, 0.65], [0.2, 0.3, 0.25], task="prefix_sums"))).verdict == \
        claims.INCONCLUSIVE
    v = claims.claim3(frame(c3_runs([0.0, 0.01, 0.0], [0.05, 0.1, 0.02])))  # both under the floor
    assert v.verdict == claims.INCONCLUSIVE and "neither reaches 20% @500 at 600 steps (seed-cpu preset)" in v.evidence
    v = claims.claim3(frame(c3_runs([0.6], [0.2])))  # one seed a side
    assert v.verdict == claims.INCONCLUSIVE and "cannot decide: 1 seed a cell: no seed s.e." in v.evidence


def test_c3_noise_gate_and_power_by_hand():
    # gap 0.1; s.e. √(0.01/3 + 0.01/3) = 0.0816: within 2 s.e.; seeds for 2 s.e. = ⌈3·(2·0.0816/0.1)²⌉ = 8
    v = claims.claim3(frame(c3_runs([0.3, 0.4, 0.5], [0.2, 0.3, 0.4])))
    assert v.verdict == claims.INCONCLUSIVE
    assert "cannot decide: within 2 s.e.: ≈ 8 seeds a cell would make it 2 s.e." in v.evidence
    assert "internal vs external @500 40.0 vs 30.0 %, gap 10.0 %, 2-s.e. interval [-6.3, 26.3] % (best" in v.evidence


def test_c3_compares_within_a_learning_rate_and_only_the_papers_recall():
    rs = c3_runs([0.6, 0.7, 0.65], [0.2, 0.3, 0.25]) + c3_runs([0.2, 0.3, 0.25], [0.6, 0.7, 0.65], lr=3e-4)
    v = claims.claim3(frame(rs))  # far ahead at 1e-3, far behind at 3e-4: apart, 3e-4 contradicts
    assert v.verdict == claims.CONTRADICTED and "sudoku, post, lr 0.0003" in v.evidence
    v = claims.claim3(frame(c3_runs([0.6, 0.7, 0.65], [0.2, 0.3, 0.25], form="per_sublayer")))
    assert v.verdict == claims.INCONCLUSIVE and "the internal runs use the per-sublayer recall" in v.evidence
    rs = c3_runs([0.6, 0.7, 0.65], [0.2, 0.3, 0.25])
    rs[0]["eval"]["curves"]["iters"] = [1, 10, 300]
    v = claims.claim3(frame(rs))
    assert v.verdict == claims.INCONCLUSIVE and "cannot decide: no accuracy @500 in 1 summaries" in v.evidence


# -- C4 ------------------------------------------------------------------------------------------------


def c4_runs(outer, inner, none, regime="paper"):
    rs = [run(recall="internal", norm="post", seed=s, hard=a, regime=regime) for s, a in enumerate(outer)]
    rs += [run(recall="internal", norm="pre", seed=s, hard=a, regime=regime) for s, a in enumerate(inner)]
    return rs + [run(recall="none", norm="post", seed=s, hard=a, regime=regime) for s, a in enumerate(none)]


def test_c4_supported_contradicted_inconclusive():
    assert claims.claim4(frame(c4_runs([0.9, 0.8, 0.85], [0.5, 0.4, 0.45], [0.0, 0.01, 0.0]))).verdict == \
        claims.SUPPORTED
    v = claims.claim4(frame(c4_runs([0.5, 0.4, 0.45], [0.9, 0.8, 0.85], [0.0, 0.01, 0.0])))  # a reversal
    # gap −0.4, s.e. √(2 · 0.0025/3) = 0.0408
    assert v.verdict == claims.CONTRADICTED
    assert "recall + outer − recall + inner: 45.0 vs 85.0 %, gap -40.0 %, 2-s.e. interval [-48.2, -31.8] %" \
        in v.evidence
    # the order holds but outer and inner are within noise: inconclusive, not contradicted
    assert claims.claim4(frame(c4_runs([0.5, 0.9, 0.7], [0.4, 0.8, 0.6], [0.0, 0.01, 0.0]))).verdict == \
        claims.INCONCLUSIVE
    # a learning rate without all three families neither helps nor hinders
    extra = [run(recall="internal", norm="post", seed=s, hard=0.3, lr=3e-4) for s in range(3)]
    assert claims.claim4(frame(c4_runs([0.9, 0.8, 0.85], [0.5, 0.4, 0.45], [0.0, 0.01, 0.0]) + extra)).verdict == \
        claims.SUPPORTED
    assert claims.claim4(frame(extra)).verdict == claims.INCONCLUSIVE
    v = claims.claim4(frame(c4_runs([0.1], [0.9], [0.0])))  # one seed: a large reversal decides nothing
    assert v.verdict == claims.INCONCLUSIVE and "1 seed a cell: no seed s.e." in v.evidence
    # regimes the paper never used do not count
    assert claims.claim4(frame(c4_runs([0.5, 0.4, 0.45], [0.9, 0.8, 0.85], [0.0, 0.0, 0.0], regime="phantom"))
                         ).verdict == claims.INCONCLUSIVE


def test_c4_compares_outer_with_inner_over_the_recalls_with_cells_on_both_sides():
    # internal post 0 % (3 seeds) against internal pre 0 / 30 / 15 % and external gru 90 / 80 / 85 %: over both
    # recalls the inner family would be (15 + 85) / 2 = 50 % and "contradict"; over internal alone the gap is
    # −15 %, s.e. √(0.0225/3) = 0.0866, 2-s.e. interval [−32.3, 2.3] %: within noise
    rs = c4_runs([0.0, 0.0, 0.0], [0.0, 0.3, 0.15], [0.0, 0.0, 0.0])
    rs += [run(recall="external", norm="gru", seed=s, hard=a) for s, a in enumerate([0.9, 0.8, 0.85])]
    v = claims.claim4(frame(rs))
    assert v.verdict == claims.INCONCLUSIVE
    assert ("recall + outer − recall + inner (over internal recall alone, the only one with cells on both sides): "
            "0.0 vs 15.0 %, gap -15.0 %, 2-s.e. interval [-32.3, 2.3] %") in v.evidence
    assert "recall + outer 0.0 %, recall + inner 50.0 %" in v.evidence  # the families themselves, every cell
    # no recall on both sides: outer and inner are not compared, and nothing is supported
    rs = [run(recall="external", norm="post", seed=s, hard=0.9) for s in range(3)]
    rs += [run(recall="internal", norm="pre", seed=s, hard=a) for s, a in enumerate([0.1, 0.2, 0.15])]
    rs += [run(recall="none", norm="post", seed=s, hard=0.0) for s in range(3)]
    v = claims.claim4(frame(rs))
    assert v.verdict == claims.INCONCLUSIVE and "recall + outer − recall + inner: no recall with cells on both sides" \
        in v.evidence


def test_c4_families_weigh_cells_not_runs():
    # recall + inner: pre at 0.2 (3 seeds) and gru at 0.8 (1 seed... and 2 more): the family is (0.2 + 0.8) / 2
    rs = [run(recall="external", norm=n, seed=s, hard=h) for n, h in (("pre", 0.2), ("gru", 0.8)) for s in range(3)]
    rows = claims.c4_rows(frame(rs + [run(recall="external", norm="pre", seed=3, hard=0.2)]))
    row = rows.iloc[0]
    assert (row.family, row["mean"], row.cells, row.runs) == ("recall + inner", pytest.approx(0.5), 2, 7)


def test_c4_reports_the_correlations_within_recall_families():
    rs = [run(recall="internal", norm=n, seed=s, hard=0.1 * (i + s), spectral_radius_median=0.5 + 0.1 * i,
              injection_spectral_radius=0.9 - 0.05 * (i + s))
          for i, n in enumerate(("pre", "peri", "post", "sandwich")) for s in range(2)]
    f = frame(rs)
    ref = spearmanr(f.rho, f.hard_at)
    v = claims.claim4(f)
    assert f"internal ρ(J): ρ_s = {ref.statistic:+.2f} (p = {ref.pvalue:.2g}, 8 runs)" in v.evidence
    assert "internal ρ(W_x): ρ_s = -1.00" in v.evidence and "external ρ(J): not recorded" in v.evidence


# -- the thresholds, at their boundaries as the rules state them ---------------------------------------------


def test_a_gap_decides_only_beyond_two_standard_errors_and_from_two_seeds_a_cell():
    at = claims.Gap(hi=0.75, lo=0.25, se=0.25, seeds=2)  # gap 0.5 = 2 s.e. exactly: not beyond
    assert at.sign == 0 and at.why() == "within 2 s.e.: ≈ 2 seeds a cell would make it 2 s.e."
    # 3 × (2 × 0.4 / 0.005)² = 76,800 seeds, written with a thousands separator
    assert claims.Gap(hi=0.505, lo=0.5, se=0.4, seeds=3).why() == "within 2 s.e.: ≈ 76,800 seeds a cell would make it 2 s.e."
    assert claims.Gap(hi=0.75, lo=0.25, se=0.24, seeds=2).sign == 1
    assert claims.Gap(hi=0.25, lo=0.75, se=0.24, seeds=2).sign == -1
    assert claims.Gap(hi=0.75, lo=0.25, se=0.24, seeds=2).why() == ""  # two seeds a cell decide
    # a side's seeds are its fewest a cell: post has 3, sandwich 2
    f = frame([run(norm="post", seed=s, hard=h) for s, h in enumerate((0.2, 0.4, 0.6))]
              + [run(norm="sandwich", seed=s, hard=h) for s, h in enumerate((0.1, 0.3))])
    assert claims.side(f, "hard_at")[2] == 2


def test_c1_thresholds_are_inclusive():
    def free(fd=1e-3, hard=0.0, anderson=1.0, reach=1.0):
        return [run(recall="none", norm=nm, hard=hard, converged_fraction=anderson, plain_reach=reach,
                    input_fd_median=fd, distinct_fixed_points=1, resolvent_norm_median=3.0,
                    spectral_radius_median=0.5) for nm in ("pre", "peri", "gru")] + [run(recall="internal", hard=0.9)]

    # "at fixed points": Anderson and plain iteration each ≥ REACHED; "locally constant": FD ≤ FD_CONSTANT
    at = free(fd=claims.FD_CONSTANT, anderson=claims.REACHED, reach=claims.REACHED)
    assert claims.claim1(frame(at)).verdict == claims.SUPPORTED
    # following the input: FD ≥ FD_MOVES; passing the hard split: ≥ the floor (20 %)
    assert claims.claim1(frame(free(fd=claims.FD_MOVES))).verdict == claims.CONTRADICTED
    assert claims.claim1(frame(free(hard=0.2))).verdict == claims.CONTRADICTED


def test_c3_needs_both_recalls_in_a_task():
    only_internal = [run(recall="internal", seed=s, hard=0.9) for s in range(3)]
    assert claims.c3_rows(frame(only_internal)).empty
    assert claims.claim3(frame(only_internal)).verdict == claims.INCONCLUSIVE
    # one side reaching the floor exactly (20 % @500) is enough to decide
    at_floor = [run(recall="internal", seed=s, hard=0.2) for s in range(2)] + \
        [run(recall="external", seed=s, hard=0.0) for s in range(2)]  # (0.2 + 0.2) / 2 is 0.2 exactly
    assert claims.c3_rows(frame(at_floor)).status.tolist() == ["internal ahead"]
