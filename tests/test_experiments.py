"""The sweep driver and the RESULTS.md generator, end to end on the tiny preset."""

from __future__ import annotations

import json
import re

import pytest

from experiments import report, runlog, summary, sweep
from experiments.presets import NORMS, PRESETS, RECALLS, REGIMES, Preset, get_preset
from deqloop.train import TrainConfig


def test_every_preset_run_is_a_valid_training_config(tmp_path):
    for preset in PRESETS.values():
        runs = preset.runs()
        assert len(runs) == len(set(r.name for r in runs))
        for spec in runs:
            TrainConfig(**preset.train_fields(spec), out=str(tmp_path))


def test_preset_filters_and_errors():
    cpu = get_preset("cpu")
    runs = cpu.runs(task=("sudoku",), recall=("internal",), norm=None, regime=("implicit",))
    assert {(r.task, r.recall, r.regime) for r in runs} == {("sudoku", "internal", "implicit")}
    assert sorted(r.norm for r in runs) == sorted(cpu.grid("sudoku")["norm"])
    # the default grid is per task: the whole grid for prefix sums, a cheaper one for sudoku ...
    assert cpu.regimes == ("progressive", "implicit", "phantom")
    assert len(cpu.runs(task=("prefix_sums",))) == len(RECALLS) * len(NORMS) * 3
    assert {(r.norm, r.regime) for r in cpu.runs(task=("sudoku",))} == {("post", "progressive"),
                                                                        ("sandwich", "progressive")}
    # ... and a filter replaces an axis, also with values outside the default grid
    runs = cpu.runs(task=("sudoku", "chess"), norm=("pre",), seed=(0, 3))
    assert {(r.task, r.norm, r.seed) for r in runs} == {(t, "pre", s) for t in ("sudoku", "chess") for s in (0, 3)}
    with pytest.raises(ValueError, match=r"seed \['x'\]; allowed: non-negative integers"):
        cpu.runs(seed=("x",))
    with pytest.raises(ValueError, match=r"task_grid\['sudoku'\]\['norm'\] = \['outer'\]"):
        cpu.with_(task_grid={"sudoku": {"norm": ("outer",)}})
    with pytest.raises(ValueError, match="unknown axis 'width'"):
        cpu.with_(task_grid={"sudoku": {"width": (8,)}})
    with pytest.raises(ValueError, match="names task 'maze'"):
        cpu.with_(task_grid={"maze": {"norm": ("post",)}})
    with pytest.raises(ValueError, match="unknown preset 'huge'; known: tiny, cpu, recipes, paper, chess, gpu"):
        get_preset("huge")
    with pytest.raises(ValueError, match="unknown filter 'width'"):
        cpu.runs(width=("8",))
    with pytest.raises(ValueError, match="allowed: none, external, internal"):
        Preset(name="x", tasks=("sudoku",), seeds=(0,), train={"sudoku": {}}, recalls=("outer",))
    with pytest.raises(SystemExit):
        sweep.main(["--preset", "tiny", "--norms", "layer", "--dry-run"])


def test_the_recipes_preset_runs_each_recipe_alone_with_both_gradients():
    recipes = get_preset("recipes")
    assert {(r.recall, r.norm) for r in recipes.runs()} == {("internal", "post")}
    assert len(recipes.runs()) == 3 * len(REGIMES)
    fields = {r.regime: recipes.train_fields(r) for r in recipes.runs(seed=(0,))}
    assert fields["implicit+warm"]["pretrain_steps"] == 400 and fields["implicit+warm"]["depth_offset"] == 2
    assert fields["phantom+jac"]["jac_reg"] == 0.1 and fields["phantom+jac"]["backward"] == "phantom"
    assert fields["implicit+budget"]["max_iter"] == 40 and "depth_offset" not in fields["implicit+budget"]
    assert fields["implicit+mixed"]["train_init"] == "mixed" and fields["implicit+fp"]["fp_states"] == 3
    assert fields["neumann+budget"]["backward"] == "neumann"
    both = fields["implicit+fallback+warm+budget"]
    assert both["backward_options"] == {"fallback": "jfb"} and both["pretrain_steps"] == 400 and both["max_iter"] == 40
    TrainConfig(**both, out="unused")


@pytest.mark.slow
def test_tiny_sweep_and_report_end_to_end(tmp_path):
    root = tmp_path / "runs"
    summaries = tmp_path / "results"
    assert sweep.main(["--preset", "tiny", "--out", str(root), "--recalls", "none,internal",
                       "--results", str(summaries)]) == 0
    results = report.load_results(root)
    assert len(results) == 6  # recall none, internal × post × progressive, implicit, phantom
    # the sweep wrote each run's summary (compared as JSON text: a NaN is not equal to itself)
    assert [json.dumps(x) for x in summary.load_summaries(summaries)] == [json.dumps(x) for x in results]
    assert {x["train_config"]["backward"] for x in results} == {None, "implicit", "phantom"}
    r = results[0]
    assert set(r["analysis"]["hard"]) >= {"converged_fraction", "spectral_radius_median", "from_zeros", "weights"}
    assert set(r["analysis"]["hard"]["weights"]) >= {"qk_norm_product", "attn_out_norm", "mlp_norm_product"}
    assert r["eval"]["curves"]["iters"] == list(PRESETS["tiny"].eval_iters)
    assert r["eval"]["paper"] == {"iterations": 500, "accuracy": {"val": None, "hard": None}}  # counts end at 16
    assert r["eval"]["best"]["hard"][1] == max(r["eval"]["curves"]["accuracy"]["hard"])
    assert r["train"]["steps"] == PRESETS["tiny"].train["prefix_sums"]["steps"]
    # a finished run is not redone
    mtime = (root / r["name"] / "result.json").stat().st_mtime
    sweep.main(["--preset", "tiny", "--out", str(root), "--recalls", "none", "--norms", "post", "--results", str(summaries)])
    assert (root / r["name"] / "result.json").stat().st_mtime == mtime
    # recall "none": the loop map ignores the input, so from z0 = 0 all inputs share one fixed point
    none = [x for x in results if x["spec"]["recall"] == "none"]
    for x in none:
        z = x["analysis"]["hard"]["from_zeros"]
        if z["converged_fraction"] == 1.0:
            assert z["distinct_fixed_points"] == 1
        assert x["analysis"]["hard"]["input_sensitivity_median"] == 0.0
    out = tmp_path / "RESULTS.md"
    assert report.main([str(root), "--out", str(out), "--plots", str(tmp_path / "plots")]) == 0
    text = out.read_text()
    for claim in ("C1", "C2", "C3", "C4"):
        assert re.search(rf"\*\*{claim} — .*: (supported|contradicted|inconclusive at this scale)\.\*\*", text), claim
    assert "| none | post | progressive | 1 |" in text
    # beyond the paper: a table of plain iteration's best, then one of each regime's Anderson solve
    by = {(x["spec"]["recall"], x["spec"]["regime"]): x["eval"]["solver"]["hard"] for x in results}
    solved = [f"{100 * by['internal', g]['accuracy']:.1f} / {by['internal', g]['iterations_mean']:.3g}"
              for g in ("progressive", "implicit", "phantom")]
    assert "| recall | norm | progressive | implicit | phantom |" in text
    assert f"| internal | post | {' | '.join(solved)} |" in text
    assert (tmp_path / "plots" / "prefix_sums_iterations.png").stat().st_size > 1000
    assert "python -m experiments.sweep" in text


def _fake(task, recall, norm, regime, hard, conv, contr, zeros_fp=1, spread=0.0, sens=0.5):
    curves = {"iters": [1, 10], "train_depth": 10, "accuracy": {"val": [0.5, 0.9], "hard": [hard / 2, hard]}}
    stab = {"converged_fraction": conv, "contractive_fraction": contr, "spectral_radius_median": 1.2 - contr,
            "local_smoothness_median": 1.0, "backward_converged_fraction": conv, "input_sensitivity_median": sens,
            "from_zeros": {"converged_fraction": 1.0, "distinct_fixed_points": zeros_fp, "fixed_point_spread": spread}}
    return {"spec": {"task": task, "recall": recall, "norm": norm, "regime": regime, "seed": 0},
            "train_depth": 10, "eval": {"n": {"val": 256, "hard": 256}, "curves": curves, "settling": {}, "solver": {}},
            "analysis": {"hard": stab}, "train": {"grad_norm_median": 1.0}}


def test_claim_rules_on_constructed_results():
    # C1: recall-free configurations with one fixed point from zeros, recall ones with many
    rs = [_fake("prefix_sums", "none", "post", "implicit", 0.0, 1.0, 1.0, sens=0.0),
          _fake("prefix_sums", "internal", "post", "implicit", 0.9, 1.0, 1.0, zeros_fp=5, spread=0.4)]
    configs = list(report.group(rs).values())
    assert report.claim1(configs).verdict == "supported"
    rs[0]["analysis"]["hard"]["from_zeros"]["distinct_fixed_points"] = 3
    assert report.claim1(list(report.group(rs).values())).verdict == "contradicted"
    # C4: accuracy rising with converged and contractive fractions across 8 configurations
    rs = [_fake("sudoku", recall, norm, "implicit", a, a, a)
          for (recall, norm), a in zip([(r, n) for r in ("external", "internal") for n in ("pre", "peri", "post", "sandwich")],
                                       [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])]
    assert report.claim4(list(report.group(rs).values())).verdict == "supported"
    rs = [_fake("sudoku", x["spec"]["recall"], x["spec"]["norm"], "implicit", 0.9 - a, a, a)
          for x, a in zip(rs, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])]
    assert report.claim4(list(report.group(rs).values())).verdict == "contradicted"
    # C3: internal far above external on sudoku with post norm, three seeds each
    rs = [_fake("sudoku", recall, "post", "implicit", acc, 1, 1) for recall, acc in (("internal", 0.6), ("external", 0.2))
          for _ in range(3)]
    assert report.claim3(list(report.group(rs).values())).verdict == "supported"
    for r in rs[:3]:
        r["eval"]["curves"]["accuracy"]["hard"] = [0.0, 0.05]
    assert report.claim3(list(report.group(rs).values())).verdict == "contradicted"


@pytest.mark.slow
def test_gpu_script_runs_on_cpu_with_the_tiny_preset(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PRESET": "tiny", "DEVICE": "cpu", "STEPS": "2", "BUDGET": "600", "OUT": str(tmp_path / "gpu"),
           "PYTHON": sys.executable, "REGIMES": "progressive,phantom"}
    done = subprocess.run(["bash", str(root / "benchmarks" / "gpu.sh")], cwd=root, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "token·iterations/s" in done.stdout
    assert "## Verdicts" in (tmp_path / "gpu" / "RESULTS.md").read_text()
    assert len(list((tmp_path / "gpu").rglob("result.json"))) == 4


def test_mfu_flop_count():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("mfu", Path(__file__).resolve().parents[1] / "benchmarks" / "mfu.py")
    mfu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mfu)
    # N=2 tokens, D=4, hidden 16: qkvo 2·2·4·16, scores 4·4·4, mlp 4·2·4·16, internal recall 4·2·2·4·4
    assert mfu.step_flops(2, 4, 4.0, "internal") == 256 + 64 + 512 + 256
    assert mfu.step_flops(2, 4, 4.0, "none") == 256 + 64 + 512


def test_cell_accuracy_is_reported_beside_exact_match():
    rs = [_fake("sudoku", "internal", "post", "progressive", 0.0, 1, 1), _fake("sudoku", "external", "post", "progressive", 0.0, 1, 1)]
    rs[0]["eval"]["cells"] = {"iters": [1, 10], "accuracy": {"val": [0.1, 0.4], "hard": [0.1, 0.3]}}
    rs[1]["eval"]["cells"] = {"iters": [1, 10], "accuracy": {"val": [0.1, 0.2], "hard": [0.15, 0.12]}}
    configs = list(report.group(rs).values())
    assert configs[0].best_cells("hard") == pytest.approx(0.15) and configs[1].best_cells("hard") == pytest.approx(0.3)
    verdict = report.claim3(configs)
    assert verdict.verdict == "inconclusive at this scale"  # exact match decides; cells are evidence only
    assert "30.0 % vs 15.0 % of cells right" in verdict.evidence
    del rs[1]["eval"]["cells"]
    assert list(report.group(rs).values())[0].best_cells("hard") is None


def test_claim2_compares_norms_on_matched_cells_only():
    # post beats pre where both ran; an implicit post run with no pre counterpart must not weigh in
    rs = [_fake("prefix_sums", "internal", "post", "progressive", 0.9, 1.0, 1.0),
          _fake("prefix_sums", "internal", "pre", "progressive", 0.5, 0.6, 0.6),
          _fake("prefix_sums", "internal", "post", "implicit", 0.0, 0.0, 0.0)]
    verdict = report.claim2(list(report.group(rs).values()))
    assert verdict.verdict == "supported", verdict.evidence
    assert "pre vs post, medians over 1 matched cells" in verdict.evidence
    rs[0]["analysis"]["hard"].update(converged_fraction=0.3, contractive_fraction=0.3, backward_converged_fraction=0.3)
    assert report.claim2(list(report.group(rs).values())).verdict == "contradicted"
    only_post = [rs[0], rs[2]]
    assert report.claim2(list(report.group(only_post).values())).verdict == "inconclusive at this scale"


def test_fixed_points_where_the_loop_does_nothing_are_counted_per_norm_and_regime():
    rs = [_fake("prefix_sums", "internal", "pre", "implicit", 0.0, 1.0, 0.0),
          _fake("prefix_sums", "none", "pre", "implicit", 0.0, 1.0, 0.0),
          _fake("prefix_sums", "internal", "post", "implicit", 0.0, 1.0, 1.0)]
    assert report.identity_fixed_points(list(report.group(rs).values())) is None  # ρ = 1.2 - contr: none near 1
    rs[0]["analysis"]["hard"].update(spectral_radius_median=1.00001, sigma_max_median=1.00002,
                                     resolvent_norm_median=2e6, backward_converged_fraction=0.0)
    rs[0]["train"]["late_loss"] = 0.64
    rs[1]["analysis"]["hard"].update(spectral_radius_median=1.00001, sigma_max_median=1.5)  # σ_max too far from 1
    section = report.identity_fixed_points(list(report.group(rs).values()))
    assert "| pre | implicit | 1 of 2 | internal | 2e+06 | 0 | 0.64 |" in section
    assert "| post | implicit | 0 of 1 | — |" in section


def test_training_numbers_average_the_last_quarter_and_the_report_rereads_them(tmp_path):
    run = tmp_path / "prefix_sums" / "internal-post-implicit-s0"
    run.mkdir(parents=True)
    lines = [{"step": 10 * (i + 1), "loss": 1.0 - 0.1 * i, "accuracy": 0.1 * i, "grad_norm": 1.0,
              "converged": 1.0 if i >= 6 else 0.0, "backward_converged": 0.5} for i in range(8)]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(m) for m in lines) + "\n{not json\n")
    numbers = runlog.training_numbers(run / "metrics.jsonl")
    assert numbers["late_loss"] == pytest.approx((0.4 + 0.3) / 2)  # last 2 of 8 logged steps
    assert numbers["late_forward_converged"] == 1.0 and numbers["late_backward_converged"] == 0.5
    assert numbers["final_loss"] == pytest.approx(0.3)
    result = _fake("prefix_sums", "internal", "post", "implicit", 0.0, 1.0, 1.0)
    (run / "result.json").write_text(json.dumps(result))
    loaded = report.load_results(tmp_path)
    assert loaded[0]["train"]["late_loss"] == pytest.approx(0.35)
    assert loaded[0]["train"]["grad_norm_median"] == 1.0
    row = report._regime_row("implicit", list(report.group(loaded).values()))
    assert row[:6] == ["implicit", "1", "0.35", "65.0", "1", "0.5"]


def test_sweep_refuses_finished_runs_trained_with_other_settings(tmp_path, capsys):
    tiny = get_preset("tiny")
    spec = tiny.runs(recall=("internal",), regime=("progressive",))[0]
    run = tmp_path / spec.name
    run.mkdir(parents=True)
    # where and how it ran is not compared, the stability monitor included (it measures, never trains)
    fields = {**tiny.train_fields(spec), "data": ["elsewhere.csv"], "threads": 4, "stability_every": 7,
              "stability_size": 3}
    (run / "result.json").write_text(json.dumps({"train_config": fields}))
    assert sweep.stale_fields(json.loads((run / "result.json").read_text()), tiny, spec) == []
    cpu = get_preset("cpu")  # it runs the monitor; a run trained without it still belongs to the grid
    cpu_spec = cpu.runs(task=("prefix_sums",))[0]
    assert cpu.train_fields(cpu_spec)["stability_every"] == 25
    assert sweep.stale_fields({"train_config": {**cpu.train_fields(cpu_spec), "stability_every": 0}}, cpu, cpu_spec) == []
    args = ["--preset", "tiny", "--out", str(tmp_path), "--recalls", "internal", "--regimes", "progressive", "--dry-run"]
    assert sweep.main(args) == 0
    assert "(done)" in capsys.readouterr().out
    fields["lr"] = 0.5
    (run / "result.json").write_text(json.dumps({"train_config": fields}))
    before = (run / "result.json").read_text()
    with pytest.raises(SystemExit):
        sweep.main(args)
    err = capsys.readouterr().err
    assert f"{run / 'result.json'}: lr: 0.5 → {tiny.train['prefix_sums']['lr']!r}" in err
    with pytest.raises(SystemExit):
        sweep.main(args[:-1] + ["--steps", "3"])  # an override that changes what the run would train
    assert "steps: 8 → 3" in capsys.readouterr().err
    assert (run / "result.json").read_text() == before


def test_paper_preset_trains_the_papers_split_apart_from_the_cpu_grid():
    from deqloop.tasks.prefix_sums import PrefixSums
    from deqloop.train import TrainConfig
    from experiments.presets import get_preset

    paper = get_preset("paper")
    specs = paper.runs()
    assert [(s.recall, s.norm, s.regime, s.seed) for s in specs] == [("internal", "post", "progressive", s)
                                                                     for s in (0, 1, 2)]
    fields = paper.train_fields(specs[0])
    # plain backpropagation through length + 2 iterations, lengths 4-8 bits growing to 8-32, tested at 512
    assert fields["alpha"] == 0.0 and fields["loss"] == "progressive" and fields["depth_offset"] == 2
    assert fields["task_options"] == dict(length=32, min_length=8, start_length=8, start_min_length=4,
                                          ramp_steps=900, hard_length=512)
    task = PrefixSums(**fields["task_options"])
    assert task.length_range(0) == (4, 8) and task.length_range(450) == (6, 20) and task.length_range(900) == (8, 32)
    TrainConfig(**fields, out="unused")  # valid as a whole
    # the same run names as the cpu grid, so the summaries go elsewhere
    assert paper.results == "results/paper_split" and get_preset("cpu").results == "results/runs"
    assert max(paper.eval_iters) >= 512


def test_the_chess_preset_is_the_cpu_cell_trained_longer():
    chess, cpu = get_preset("chess"), get_preset("cpu")
    [spec] = chess.runs()
    assert spec.name == "chess/internal-post-progressive-s0"
    fields, base = chess.train_fields(spec), cpu.train_fields(spec)
    changed = {k for k in fields if fields[k] != base.get(k)}
    assert changed == {"attention", "max_iter", "steps", "stability_every"}
    assert fields["steps"] == 3000 and fields["max_iter"] == 12 and fields["attention"] == "full"
    TrainConfig(**fields, out="unused")
    assert chess.results == "results/chess_long" and chess.eval_n == 1024


def test_a_presets_extra_test_sets_are_evaluated_and_drawn_as_panels(tmp_path):
    import matplotlib.image

    tiny = get_preset("tiny").with_(extra_sets={"prefix_sums": ("16",)}, regimes=("progressive",))
    spec = tiny.runs(recall=("internal",))[0]
    result = sweep.run_one(tiny, spec, tmp_path / "runs", data={}, results=None)
    curves = result["eval"]["curves"]["accuracy"]
    assert set(curves) == {"val", "hard", "16 bits"} and len(curves["16 bits"]) == len(tiny.eval_iters)
    assert result["eval"]["n"]["16 bits"] == tiny.eval_n
    configs = list(report.group([result]).values())
    path = report.plot_iterations(configs, "prefix_sums", tmp_path / "it.png")
    assert matplotlib.image.imread(path).shape[1] == 3 * 6 * 110  # a panel per test set, 6 inches each at 110 dpi
