"""The sweep driver and the RESULTS.md generator, end to end on the tiny preset."""

from __future__ import annotations

import json
import re

import pytest

from experiments import report, runlog, summary, sweep
from experiments.table import curves_frame, runs_frame
from experiments.presets import NORMS, PRESETS, RECALLS, REGIMES, Preset, get_preset
from deqloop.train import TrainConfig


def test_every_preset_run_is_a_valid_training_config(tmp_path):
    # the paper's sudoku split reads Sudoku-Extreme's two files (given to the sweep by --sudoku-extreme)
    for name in ("train.csv", "test.csv"):
        (tmp_path / name).write_text("source,question,answer,rating\n")
    data = sweep.default_data(None, tmp_path)
    for preset in PRESETS.values():
        runs = preset.runs()
        assert len(runs) == len(set(r.name for r in runs))
        for spec in runs:
            fields = preset.train_fields(spec)
            if fields["task_options"].get("split") == "paper":
                fields["task_options"].update(data["sudoku"])
            TrainConfig.from_flat(**fields, out=str(tmp_path))


def test_the_seed_presets_are_the_papers_grid_with_its_rows_as_model_settings(tmp_path):
    for name in ("seed-gpu", "seed-cpu"):
        preset = get_preset(name)
        # 4 recalls × 4 residual rows × 3 learning rates × 3 seeds (sudoku: 4 learning rates)
        assert len(preset.runs(task=("prefix_sums",))) == 4 * 4 * 3 * 3
        assert len(preset.runs(task=("sudoku",))) == 4 * 4 * 4 * 3
        assert {r.lr for r in preset.runs(task=("chess",))} == {1e-4, 3e-4, 1e-3}
        assert {r.regime for r in preset.runs()} == {"paper"}
    cpu = get_preset("seed-cpu")
    by_name = {r.name: r for r in cpu.runs(task=("prefix_sums",))}
    internal = by_name["prefix_sums/internal-post-paper-lr0.0003-s1"]
    fields = cpu.train_fields(internal)
    assert (fields["recall"], fields["norm"], fields["lr"], fields["seed"], fields["max_iter"]) == (
        "internal", "post", 3e-4, 1, 30)
    assert (fields["loss"], fields["alpha"], fields["detach_z0"], fields["schedule"]) == (
        "progressive", 1.0, False, "paper")
    assert "blocks" not in fields and "residual" not in fields  # the model's defaults: one block, add
    # the gru row is the GRU residual with peri norm; fixed is 15 untied blocks, no recall, one iteration
    gru = cpu.train_fields(by_name["prefix_sums/external-gru-paper-lr0.001-s0"])
    assert (gru["recall"], gru["residual"], gru["norm"]) == ("external", "gru", "peri")
    fixed_spec = by_name["prefix_sums/fixed-pre-paper-lr0.0001-s2"]
    fixed = cpu.train_fields(fixed_spec)
    assert (fixed["recall"], fixed["blocks"], fixed["max_iter"], fixed["norm"]) == ("none", 15, 1, "pre")
    assert cpu.eval_iters_for(fixed_spec) == (1,) and not cpu.solves(fixed_spec)
    assert cpu.eval_iters_for(internal)[-1] == 500 and cpu.solves(internal)
    config = TrainConfig.from_flat(**fixed, out=str(tmp_path))
    assert config.depth() == 1 and config.model_config().arch.blocks == 15
    # a preset without learning rates keeps its run names
    assert get_preset("cpu").runs(task=("prefix_sums",))[0].name == "prefix_sums/none-pre-progressive-s0"
    with pytest.raises(ValueError, match=r"lr \[0\.0\]; allowed: positive numbers"):
        cpu.runs(lr=(0.0,))


def test_the_sweep_refuses_the_papers_sudoku_split_without_its_files(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        sweep.main(["--preset", "seed-gpu", "--tasks", "sudoku", "--recalls", "internal", "--norms", "post",
                    "--lrs", "0.001", "--seeds", "0", "--out", str(tmp_path / "runs"), "--shared", str(tmp_path)])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "cannot run with the data given (nothing was started)" in err and "sudoku: Sudoku.split='paper'" in err
    assert not (tmp_path / "runs").exists()
    preset = get_preset("seed-gpu")
    assert sweep.missing_data(preset, {"prefix_sums"}, {}) == []
    bad = sweep.missing_data(preset, {"sudoku"}, {})
    assert len(bad) == 1 and bad[0].startswith("sudoku: Sudoku.split='paper' needs data")


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
    with pytest.raises(ValueError, match="unknown preset 'huge'; known: tiny, cpu, recipes, paper, chess, seed-gpu, seed-cpu, gpu"):
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
    TrainConfig.from_flat(**both, out="unused")


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
    assert set(r["analysis"]["hard"]) >= {"converged_fraction", "spectral_radius_median", "input_fd_median", "weights"}
    assert set(r["analysis"]["hard"]["weights"]) >= {"qk_norm_product", "attn_out_norm", "mlp_norm_product"}
    assert r["eval"]["curves"]["iters"] == list(PRESETS["tiny"].eval_iters)
    assert r["eval"]["paper"] == {"iterations": 500, "accuracy": {"val": None, "hard": None}}  # counts end at 16
    assert r["eval"]["best"]["hard"][1] == max(r["eval"]["curves"]["accuracy"]["hard"])
    assert r["train"]["steps"] == PRESETS["tiny"].train["prefix_sums"]["steps"]
    # a finished run is not redone
    mtime = (root / r["name"] / "result.json").stat().st_mtime
    sweep.main(["--preset", "tiny", "--out", str(root), "--recalls", "none", "--norms", "post", "--results", str(summaries)])
    assert (root / r["name"] / "result.json").stat().st_mtime == mtime
    # recall "none": the loop map ignores the input (0 IFT sensitivity by construction); from z0 = e its fixed
    # point depends on e through the start alone, which the finite difference from the input measures
    for x in (x for x in results if x["spec"]["recall"] == "none"):
        assert x["analysis"]["hard"]["input_sensitivity_median"] == 0.0 and "from_zeros" not in x["analysis"]["hard"]
    out = tmp_path / "RESULTS.md"
    assert report.main([str(root), "--out", str(out), "--plots", str(tmp_path / "plots"), "--sections",
                        "--examples", ""]) == 0
    text = re.sub(r" +", " ", out.read_text())  # the tables' cells without their padding
    for claim in ("C1", "C2", "C3", "C4"):
        assert re.search(rf"\*\*{claim} — .*: (supported|contradicted|inconclusive at this budget)\.\*\*", text), claim
    # the grid's rows: accuracy @500 is not in the tiny preset's counts (1, 4, 8, 16), so it is —, never invented
    internal = {x["spec"]["regime"]: x for x in results if x["spec"]["recall"] == "internal"}
    solver = internal["implicit"]["eval"]["solver"]["hard"]["accuracy"]
    best = max(internal["implicit"]["eval"]["curves"]["accuracy"]["hard"])
    lr = internal["implicit"]["train_config"]["lr"]
    assert f"| internal | post | implicit | {lr:g} | 1 | — | {100 * best:.1f} ± — | {100 * solver:.1f} ± — |" in text
    assert "## prefix_sums: deqloop's cpu grid" in text and "No runs in the paper's regime yet" in text
    assert "python -m experiments.sweep" in text


@pytest.mark.slow
def test_gpu_script_runs_on_cpu_with_the_tiny_preset(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PRESET": "tiny", "DEVICE": "cpu", "STEPS": "2", "BUDGET": "1500", "OUT": str(tmp_path / "gpu"),
           "PYTHON": sys.executable, "REGIMES": "progressive,phantom"}
    done = subprocess.run(["bash", str(root / "benchmarks" / "gpu.sh")], cwd=root, env=env, capture_output=True,
                          text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "grid cell prefix_sums/internal-peri-paper-lr0.0001-s0" in done.stdout  # the seed-gpu cell ran
    assert "token·iterations/s" in done.stdout
    assert "## Verdicts" in (tmp_path / "gpu" / "RESULTS.md").read_text()
    assert len(list((tmp_path / "gpu").rglob("result.json"))) == 4


@pytest.mark.slow
def test_gpu_script_ends_within_its_budget(tmp_path):
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PRESET": "tiny", "DEVICE": "cpu", "STEPS": "2", "BUDGET": "25", "REPORT_SECONDS": "0",
           "OUT": str(tmp_path / "gpu"), "PYTHON": sys.executable}
    start = time.monotonic()
    done = subprocess.run(["bash", str(root / "benchmarks" / "gpu.sh")], cwd=root, env=env, capture_output=True,
                          text=True, timeout=600)
    seconds = time.monotonic() - start
    assert done.returncode == 0, done.stderr[-2000:]
    # each step is cut at the budget (TERM, then KILL 20 s later): well under a run's own length
    assert seconds < 25 + 20 + 15, done.stdout[-2000:]
    assert "of a 25 s budget" in done.stdout


def test_mfu_flop_count():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("mfu", Path(__file__).resolve().parents[1] / "benchmarks" / "mfu.py")
    mfu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mfu)
    # N=2 tokens, D=4, hidden 16: qkvo 2·2·4·16, scores 4·4·4, mlp 4·2·4·16, internal recall 4·2·2·4·4
    assert mfu.step_flops(2, 4, 4.0, "internal") == 256 + 64 + 512 + 256
    assert mfu.step_flops(2, 4, 4.0, "none") == 256 + 64 + 512


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
    result = {"spec": {"task": "prefix_sums", "recall": "internal", "norm": "post", "regime": "implicit", "seed": 0},
              "train": {"grad_norm_median": 7.0, "late_loss": 9.0}}  # stale: the metrics log wins
    (run / "result.json").write_text(json.dumps(result))
    loaded = report.load_results(tmp_path)
    assert loaded[0]["train"]["late_loss"] == pytest.approx(0.35)
    assert loaded[0]["train"]["grad_norm_median"] == 1.0
    row = runs_frame(loaded).iloc[0]
    assert (row.late_loss, row.grad_median, row.grad_spread) == (pytest.approx(0.35), 1.0, 1.0)


def test_training_numbers_read_every_steps_gradient_norm_where_the_log_has_them(tmp_path):
    path = tmp_path / "metrics.jsonl"
    # two records of three steps each: the logged step's norm is the window's last
    lines = [{"step": 3, "loss": 1.0, "grad_norm": 2.0, "grad_norms": [1.0, 9.0, 2.0]},
             {"step": 6, "loss": 0.5, "grad_norm": 4.0, "grad_norms": [3.0, float("nan"), 4.0]}]
    path.write_text("\n".join(json.dumps(m) for m in lines) + "\n")
    numbers = runlog.training_numbers(path)
    # over the five finite per-step norms 1, 9, 2, 3, 4 (the logged steps alone: 2, 4)
    assert (numbers["grad_norm_median"], numbers["grad_norm_max"], numbers["grad_norm_last"]) == (3.0, 9.0, 4.0)
    assert numbers["grad_norm_every_step"] is True
    path.write_text("\n".join(json.dumps({k: v for k, v in m.items() if k != "grad_norms"}) for m in lines) + "\n")
    numbers = runlog.training_numbers(path)  # an earlier log: the logged steps only
    assert (numbers["grad_norm_median"], numbers["grad_norm_max"], numbers["grad_norm_every_step"]) == (3.0, 4.0, False)


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
    # the paper's regime: its progressive loss through 30 iterations and its schedule, lengths 4-8 bits
    # growing to 8-32, tested at 512
    assert fields["loss"] == "progressive" and "alpha" not in fields and "detach_z0" not in fields
    assert (fields["max_iter"], fields["schedule"], fields["window"]) == (30, "paper", 5) and "depth_offset" not in fields
    assert fields["task_options"] == dict(length=32, min_length=8, start_length=8, start_min_length=4,
                                          ramp_steps=900, hard_length=512)
    task = PrefixSums(**fields["task_options"])
    assert task.length_range(0) == (4, 8) and task.length_range(450) == (6, 20) and task.length_range(900) == (8, 32)
    c = TrainConfig.from_flat(**fields, out="unused")  # valid as a whole
    assert (c.objective.alpha, c.objective.detach_z0, c.depth(), c.optim.warmup_steps) == (1.0, False, 30, 150)
    # the same run names as the cpu grid, so the summaries go elsewhere
    assert paper.results == "results/paper_split" and get_preset("cpu").results == "results/runs"
    assert max(paper.eval_iters) >= 512 and 500 in paper.eval_iters


def test_the_chess_preset_is_the_cpu_cell_trained_longer():
    chess, cpu = get_preset("chess"), get_preset("cpu")
    [spec] = chess.runs()
    assert spec.name == "chess/internal-post-progressive-s0"
    fields, base = chess.train_fields(spec), cpu.train_fields(spec)
    changed = {k for k in fields if fields[k] != base.get(k)}
    assert changed == {"attention", "max_iter", "steps", "stability_every"}
    assert fields["steps"] == 3000 and fields["max_iter"] == 12 and fields["attention"] == "full"
    TrainConfig.from_flat(**fields, out="unused")
    assert chess.results == "results/chess_long" and chess.eval_n == 1024


def test_a_presets_extra_test_sets_are_evaluated_and_kept_in_the_table(tmp_path):
    tiny = get_preset("tiny").with_(extra_sets={"prefix_sums": ("16",)}, regimes=("progressive",))
    spec = tiny.runs(recall=("internal",))[0]
    result = sweep.run_one(tiny, spec, tmp_path / "runs", data={}, results=None)
    curves = result["eval"]["curves"]["accuracy"]
    assert set(curves) == {"val", "hard", "16 bits"} and len(curves["16 bits"]) == len(tiny.eval_iters)
    assert result["eval"]["n"]["16 bits"] == tiny.eval_n
    c = curves_frame([result])
    extra = c[c.split == "16 bits"]
    assert extra.iters.tolist() == list(tiny.eval_iters) and extra.accuracy.tolist() == curves["16 bits"]


def test_a_seed_preset_section_is_the_papers_table_over_seeds(tmp_path):
    """The seed presets' section of RESULTS.md: a row per recall × residual, per learning rate the hard
    accuracy @500 and the best over counts as mean ± s.e. over seeds (checked by hand), the runs done."""
    from pathlib import Path

    base = json.loads(Path("results/seed_cpu/prefix_sums/internal-post-paper-lr0.001-s0.json").read_text())
    runs = []
    for seed, at500, best in ((0, 0.25, 0.5), (1, 0.75, 0.75)):
        run = json.loads(json.dumps(base))
        iters = run["eval"]["curves"]["iters"]
        hard = [0.0] * len(iters)
        hard[iters.index(300)], hard[iters.index(500)] = best, at500
        run["eval"]["curves"]["accuracy"]["hard"] = hard
        run["spec"]["seed"], run["train_config"]["seed"] = seed, seed
        run["name"] = f"prefix_sums/internal-post-paper-lr0.001-s{seed}"
        run["eval"] = {k: v for k, v in run["eval"].items() if k not in ("paper", "best")}
        runs.append(summary.summarize(run, None))
    text = report.section(tmp_path / "seed_cpu", runs, tmp_path, tmp_path / "RESULTS.md")
    assert "2 of the grid's 144 runs" in text
    # @500: mean (25 + 75) / 2 = 50, s.e. = sd / √2 = 35.36 / 1.414 = 25.0; best: (50 + 75) / 2 = 62.5 ± 12.5
    row = next(line for line in text.splitlines() if line.startswith("| internal"))
    assert [c.strip() for c in row.strip("|").split("|")] == ["internal", "post", "50.0 ± 25.0", "62.5 ± 12.5"]
    assert (tmp_path / "seed_cpu_prefix_sums.png").stat().st_size > 0
