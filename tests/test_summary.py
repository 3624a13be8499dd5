"""Run summaries (experiments/summary.py): written by the sweep, read by the report, imported from old sweeps."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from experiments import report, runlog, summary
from experiments.summary import SummaryError


def _metrics(losses, accuracies, grads, converged=None, backward=None, skipped=0):
    """metrics.jsonl lines as the trainer logs them (one per logged step)."""
    lines = []
    for i, (loss, acc, g) in enumerate(zip(losses, accuracies, grads)):
        m = {"step": 10 * (i + 1), "loss": loss, "accuracy": acc, "grad_norm": g, "skipped_total": skipped if i == len(losses) - 1 else 0}
        if converged is not None:
            m["converged"] = converged[i]
        if backward is not None:
            m["backward_converged"] = backward[i]
        lines.append(json.dumps(m))
    return "\n".join(lines) + "\n"


def _result(recall, regime, hard, conv):
    """A finished run's result.json with the shapes run_one writes (sizes cut down); its ``train``
    numbers are stale on purpose: the ones from metrics.jsonl must win."""
    name = f"prefix_sums/{recall}-post-{regime}-s0"
    stab = {"converged_fraction": conv, "distinct_fixed_points": 2, "fixed_point_spread": 0.5,
            "agreement": {"embed/zeros": 1.0}, "iterations_median": 12.0, "contraction_median": 0.75,
            "spectral_radius_median": 0.875, "contractive_fraction": conv, "sigma_max_median": 1.5,
            "resolvent_norm_median": 2.0, "input_sensitivity_median": 0.25, "local_smoothness_median": 0.5,
            "backward_converged_fraction": conv, "backward_iterations_median": 8.0, "seconds": 0.5,
            "from_zeros": {"converged_fraction": 1.0, "distinct_fixed_points": 2, "fixed_point_spread": 0.5}}
    curves = {"iters": [1, 4, 16], "train_depth": 8, "accuracy": {"val": [0.25, 0.75, 0.5], "hard": hard}}
    return {
        "spec": {"task": "prefix_sums", "recall": recall, "norm": "post", "regime": regime, "seed": 0},
        "name": name,
        "preset": "tiny",
        "train_config": {"task": "prefix_sums", "data": (), "width": 16, "heads": 2, "attention": "local", "window": 3,
                         "max_iter": 8, "steps": 8, "batch_size": 16, "lr": 0.002, "length": 6, "min_length": 4,
                         "hard_length": 12, "depth_offset": 2, "recall": recall, "norm": "post"},
        "train_depth": 8,
        "train": {"grad_norm_median": 99.0, "late_loss": 99.0, "steps": 8, "seconds": 1.5},
        "eval": {"checkpoint": f"runs/sweep/{name}/last.pt", "task": "prefix_sums", "n": {"val": 32, "hard": 32},
                 "curves": curves, "cells": {"iters": [1, 4, 16], "train_depth": 8,
                                             "accuracy": {"val": [0.5, 0.875, 0.75], "hard": [0.5, 0.625, 0.75]}},
                 "settle_rtol": 0.001,
                 "settling": {s: {"accuracy": hard[-1], "iterations_mean": 6.5, "iterations_median": 6.0,
                                  "iterations_max": 16, "converged": 1.0} for s in ("val", "hard")},
                 "solver_name": "anderson", "solver_rtol": 0.0001,
                 "solver": {s: {"accuracy": hard[1], "iterations_mean": 10.25, "iterations_median": 10.0,
                                "iterations_max": 16, "converged": 0.75, "residual_median": 5e-5} for s in ("val", "hard")}},
        "analysis": {"hard": stab, "val": stab},
        "analysis_options": {"solver": "anderson", "max_iter": 100, "rtol": 0.0001, "n": 4},
        "seconds": {"train": 1.5, "eval": 0.5, "analysis": 0.25},
        "commit": "2ccdf62",
        "command": "python -m experiments.sweep --preset tiny",
        "machine": {"python": "3.11.7", "torch": "2.13.0+cpu", "device": "auto", "cuda": None, "threads": 1},
    }


PROGRESSIVE_METRICS = dict(losses=[1.0, 0.75, 0.5, 0.5, 0.25, 0.5, 0.5, 0.25], accuracies=[0, 0, 0, 0.25, 0.25, 0.5, 0.5, 0.75],
                           grads=[1.0, 2.0, 4.0, 2.0, 1.0, 0.5, 0.5, 0.25], skipped=1)
IMPLICIT_METRICS = dict(losses=[1.0, 1.0, 0.75, 0.75, 0.5, 0.5, 0.25, 0.25], accuracies=[0, 0, 0, 0, 0, 0, 0.125, 0.375],
                        grads=[2.0] * 8, converged=[0, 0, 0, 0, 0, 0, 1.0, 0.5], backward=[0, 0, 0, 0, 0, 0, 0.5, 0.5])


def _fake_sweep(root: Path) -> Path:
    """Two finished runs (different regimes, so the report's regime table shows) and an unfinished one."""
    for recall, regime, hard, conv, metrics in (("internal", "progressive", [0.0, 0.25, 0.5], 0.75, PROGRESSIVE_METRICS),
                                                ("internal", "implicit", [0.0, 0.125, 0.25], 0.5, IMPLICIT_METRICS)):
        run = root / "prefix_sums" / f"{recall}-post-{regime}-s0"
        run.mkdir(parents=True)
        (run / "result.json").write_text(json.dumps(_result(recall, regime, hard, conv), indent=1))
        (run / "metrics.jsonl").write_text(_metrics(**metrics))
    unfinished = root / "prefix_sums" / "external-post-progressive-s0"
    unfinished.mkdir(parents=True)
    (unfinished / "metrics.jsonl").write_text(_metrics(**PROGRESSIVE_METRICS))
    return root


def test_summary_round_trip_and_identical_bytes_on_rewrite(tmp_path):
    sweep = _fake_sweep(tmp_path / "runs")
    run = sweep / "prefix_sums" / "internal-post-progressive-s0"
    result = json.loads((run / "result.json").read_text())
    s = summary.summarize(result, run / "metrics.jsonl")
    assert list(s) == ["summary_format", "spec", "name", "preset", "train_config", "train_depth", "train", "eval",
                       "analysis", "analysis_options", "seconds", "commit", "command", "machine", "traces"]
    assert s["summary_format"] == 1
    # the loss trace from the same log (no monitor records in it)
    assert s["traces"] == {"stability": {"fields": list(runlog.STABILITY_FIELDS), "rows": []},
                           "loss": [[10 * (i + 1), v] for i, v in enumerate(PROGRESSIVE_METRICS["losses"])]}
    # the training numbers are re-read from metrics.jsonl (last quarter: the last 2 of 8 logged steps)
    assert s["train"] == {"grad_norm_median": 1.0, "late_loss": 0.375, "steps": 8, "seconds": 1.5, "grad_norm_max": 4.0,
                          "grad_norm_last": 0.25, "grad_norm_every_step": False, "final_loss": 0.25, "final_train_accuracy": 0.75,
                          "late_train_accuracy": 0.625, "late_forward_converged": None, "late_backward_converged": None,
                          "skipped_steps": 1}
    # a result from before eval recorded the paper's number gets it from its curves (no count 500 here)
    assert {k: v for k, v in s.items() if k not in ("summary_format", "train", "traces")} == \
        {**{k: v for k, v in result.items() if k != "train"},
         "eval": {**result["eval"], "paper": {"iterations": 500, "accuracy": {"val": None, "hard": None}},
                  "best": {"val": [4, 0.75], "hard": [16, 0.5]}}}
    # without a metrics log the result's numbers stay; tuples become lists, as in a file
    bare = summary.summarize(_result("internal", "progressive", [0.0, 0.25, 0.5], 0.75), None)
    assert bare["train"] == {"grad_norm_median": 99.0, "late_loss": 99.0, "steps": 8, "seconds": 1.5}
    assert bare["train_config"]["data"] == []

    root = tmp_path / "results" / "runs"
    path = summary.write_summary(s, root)
    assert path == root / "prefix_sums" / "internal-post-progressive-s0.json"
    assert summary.load_summaries(root) == [s]
    text = path.read_text()
    assert text.startswith('{\n "summary_format": 1,\n "spec": {\n  "task": "prefix_sums",\n') and text.endswith("}\n")
    assert text == json.dumps(s, indent=1) + "\n"
    # rewriting the same summary, or the one loaded back, gives the same bytes and leaves the file alone
    mtime = path.stat().st_mtime_ns
    assert summary.write_summary(s, root) == path
    assert summary.write_summary(summary.load_summaries(root)[0], root) == path
    assert path.read_text() == text and path.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in path.parent.iterdir()) == ["internal-post-progressive-s0.json"]  # no temporary left
    # a changed summary replaces the file
    assert summary.write_summary({**s, "commit": "abc1234"}, root) == path
    assert summary.load_summaries(root)[0]["commit"] == "abc1234"


def test_a_real_size_summary_is_a_few_kilobytes(tmp_path):
    """A gpu-preset run's summary: the whole training config, 8 iteration counts of full-precision
    accuracies, every stability number on both bands (the run in the round trip above is cut down)."""
    from deqloop.train import TrainConfig
    from experiments.presets import get_preset

    gpu = get_preset("gpu")
    spec = gpu.runs(task=("sudoku",), recall=("internal",), norm=("post",), regime=("implicit",))[0]
    config = TrainConfig.from_flat(**gpu.train_fields(spec), out=f"runs/gpu/{spec.name}")
    iters = list(gpu.eval_iters)
    noisy = [1 / 3 + k / 7 / len(iters) for k in range(len(iters))]  # 16-17 digits each, as measured values have
    r = _result("internal", "implicit", noisy, 1 / 3)
    r.update(name=spec.name, spec={**r["spec"], "task": "sudoku"}, preset="gpu", train_config=config.to_flat(),
             train_depth=config.depth(), analysis_options={"solver": "anderson", "max_iter": 100, "rtol": 1e-4,
                                                           **gpu.analysis, "n": gpu.analyze_n})
    for block in ("curves", "cells"):
        r["eval"][block] = {"iters": iters, "train_depth": config.depth(), "accuracy": {"val": noisy, "hard": noisy}}
    for band in ("hard", "val"):
        r["analysis"][band] = {**{k: (1 / 3 if isinstance(v, float) else v) for k, v in r["analysis"][band].items()},
                               "agreement": {"embed/zeros": 1 / 3, "embed/noise": 1 / 3, "zeros/noise": 1 / 3}}
    run = tmp_path / "runs" / spec.name
    run.mkdir(parents=True)
    # a long log: summed up, its loss trace thinned; the monitor every 250 of 10,000 steps: 40 records
    monitor = "".join(json.dumps({"step": 250 * (i + 1), "kind": "stability", **{k: 1 / 3 for k in runlog.STABILITY_FIELDS[1:]}})
                      + "\n" for i in range(40))
    (run / "metrics.jsonl").write_text(_metrics(**PROGRESSIVE_METRICS) * 100 + monitor)
    path = summary.write_summary(summary.summarize(r, run / "metrics.jsonl"), tmp_path / "results" / "runs")
    assert len(config.to_flat()) > 30
    traces = json.loads(path.read_text())["traces"]
    assert len(traces["loss"]) == runlog.TRACE_POINTS and len(traces["stability"]["rows"]) == 40
    assert 8_000 < path.stat().st_size < 20_000  # 40 monitor records of 14 fields: about 7 kB of it


def test_summary_path_names_a_file_per_run():
    assert summary.summary_path(Path("results/runs"), "prefix_sums/internal-post-progressive-s0") == \
        Path("results/runs/prefix_sums/internal-post-progressive-s0.json")
    for bad in ("", "../x", "/abs/x", "prefix_sums/../../x", "prefix_sums\\x/./y"):
        with pytest.raises(ValueError, match="not a run name"):
            summary.summary_path(Path("results/runs"), bad)
    with pytest.raises(ValueError, match="lacks eval"):
        summary.write_summary({k: v for k, v in summary.summarize(_result("none", "implicit", [0.0] * 3, 1.0), None).items()
                               if k != "eval"}, Path("unused"))


def test_import_cli_writes_a_summary_per_finished_run(tmp_path, capsys, monkeypatch):
    sweep = _fake_sweep(tmp_path / "runs" / "sweep")
    monkeypatch.chdir(tmp_path)
    assert summary.main(["import", "runs/sweep", "--to", "results/runs"]) == 0
    assert capsys.readouterr().out == ("wrote results/runs/prefix_sums/internal-post-implicit-s0.json\n"
                                       "wrote results/runs/prefix_sums/internal-post-progressive-s0.json\n"
                                       "2 run summaries from runs/sweep in results/runs\n")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "results").rglob("*")) == [
        "results/runs", "results/runs/prefix_sums", "results/runs/prefix_sums/internal-post-implicit-s0.json",
        "results/runs/prefix_sums/internal-post-progressive-s0.json"]
    loaded = summary.load_summaries(Path("results/runs"))
    assert [s["name"] for s in loaded] == ["prefix_sums/internal-post-implicit-s0", "prefix_sums/internal-post-progressive-s0"]
    assert loaded == summary.summarize_sweep(sweep)
    assert loaded[0]["train"]["late_loss"] == 0.25 and loaded[0]["train"]["late_backward_converged"] == 0.5
    before = {p: p.read_bytes() for p in Path("results/runs").rglob("*.json")}
    assert summary.main(["import", "runs/sweep"]) == 0  # --to defaults to results/runs
    assert capsys.readouterr().out.splitlines()[:2] == [
        "unchanged results/runs/prefix_sums/internal-post-implicit-s0.json",
        "unchanged results/runs/prefix_sums/internal-post-progressive-s0.json"]
    assert {p: p.read_bytes() for p in Path("results/runs").rglob("*.json")} == before
    # two runs of the same name under one root (two sweeps) would overwrite each other
    shutil.copytree(sweep, tmp_path / "runs" / "other")
    with pytest.raises(SystemExit):
        summary.main(["import", "runs", "--to", "results/runs"])
    assert "several result.json files name the run(s) prefix_sums/internal-post-implicit-s0, " \
           "prefix_sums/internal-post-progressive-s0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        summary.main(["import", "nowhere"])
    assert "no such folder: nowhere" in capsys.readouterr().err


def test_report_from_summaries_is_the_report_from_the_sweep(tmp_path):
    sweep = _fake_sweep(tmp_path / "runs" / "sweep")
    root = tmp_path / "results" / "runs"
    summary.import_runs(sweep, root)
    assert report.load_results(root) == report.load_results(sweep)
    from_sweep, from_summaries = tmp_path / "from_sweep.md", tmp_path / "from_summaries.md"
    assert report.main([str(sweep), "--out", str(from_sweep), "--plots", str(tmp_path / "plots"), "--sections",
                        "--examples", ""]) == 0
    shutil.rmtree(tmp_path / "runs")  # a fresh clone: no result.json, no metrics.jsonl
    assert report.main([str(root), "--out", str(from_summaries), "--plots", str(tmp_path / "plots"), "--sections",
                        "--examples", ""]) == 0
    a, b = from_sweep.read_text().splitlines(keepends=True), from_summaries.read_text().splitlines(keepends=True)
    assert a[2].startswith(f"Generated by `python -m experiments.report {sweep} --out {from_sweep} --plots ")
    assert b[2].startswith(f"Generated by `python -m experiments.report {root} --out {from_summaries} --plots ")
    assert a[:2] + a[3:] == b[:2] + b[3:]
    text = re.sub(r" +", " ", "".join(b))  # the tables' cells without their padding
    # the training numbers come from the metrics logs, through the summaries: gradient spread 4 / 1 = 4 and 2 / 2 = 1;
    # no count 500 among 1, 4, 16, so no accuracy @500
    assert ("| internal | post | progressive | 0.002 | 1 | — | 50.0 ± — | 25.0 ± — | 1 | 0.75 | 0.88 | 2 | 0.25 | 0.5 | — "
            "| 0.75 | 4 |") in text
    assert ("| internal | post | implicit | 0.002 | 1 | — | 25.0 ± — | 12.5 ± — | 1 | 0.5 | 0.88 | 2 | 0.25 | 0.5 | — "
            "| 0.5 | 1 |") in text


def test_report_defaults_to_results_runs(tmp_path, monkeypatch, capsys):
    summary.import_runs(_fake_sweep(tmp_path / "runs" / "sweep"), tmp_path / "results" / "runs")
    shutil.rmtree(tmp_path / "runs")
    monkeypatch.chdir(tmp_path)
    assert report.main([]) == 0
    assert capsys.readouterr().out == f"wrote {tmp_path / 'RESULTS.md'} (2 runs)\n"
    assert (tmp_path / "RESULTS.md").read_text().splitlines()[2].startswith("Generated by `python -m experiments.report` on ")
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["runs"]  # the grid draws no figure


def test_a_malformed_summary_is_named(tmp_path, capsys):
    root = tmp_path / "results" / "runs"
    summary.import_runs(_fake_sweep(tmp_path / "runs"), root)
    good = root / "prefix_sums" / "internal-post-implicit-s0.json"
    s = json.loads(good.read_text())
    cases = [("{not json", "not valid JSON"),
             ("[1, 2]", "not a run summary (a JSON list, not an object)"),
             (json.dumps({**s, "summary_format": 2}), "summary_format is 2, this code reads 1"),
             (json.dumps({k: v for k, v in s.items() if k not in ("eval", "machine")}), "the summary lacks eval, machine"),
             (json.dumps({k: v for k, v in s.items() if k != "summary_format"}), "summary_format is None"),
             (json.dumps({**s, "name": "prefix_sums/internal-post-phantom-s0"}),
              (f"holds the summary of run 'prefix_sums/internal-post-phantom-s0', which belongs in "
               f"{root / 'prefix_sums' / 'internal-post-phantom-s0.json'}"))]
    for text, message in cases:
        good.write_text(text)
        with pytest.raises(SummaryError) as err:
            summary.load_summaries(root)
        assert str(err.value).startswith(f"{good}: {message}"), str(err.value)
        with pytest.raises(SystemExit):
            report.main([str(root), "--out", str(tmp_path / "RESULTS.md")])
        assert f"error: {good}: {message}" in capsys.readouterr().err
    assert not (tmp_path / "RESULTS.md").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit):
        report.main([str(tmp_path / "empty")])
    assert f"no run summaries or result.json under {tmp_path / 'empty'}" in capsys.readouterr().err


def test_sweep_writes_the_summary_of_a_finished_run_when_it_is_missing(tmp_path, monkeypatch):
    from experiments import sweep
    from experiments.presets import get_preset

    tiny = get_preset("tiny")
    spec = tiny.runs(recall=("internal",), regime=("progressive",))[0]
    run = tmp_path / "runs" / spec.name
    run.mkdir(parents=True)
    result = {**_result("internal", "progressive", [0.0, 0.25, 0.5], 0.75), "name": spec.name,
              "train_config": tiny.train_fields(spec)}
    (run / "result.json").write_text(json.dumps(result))
    (run / "metrics.jsonl").write_text(_metrics(**PROGRESSIVE_METRICS))
    monkeypatch.chdir(tmp_path)
    args = ["--preset", "tiny", "--out", "runs", "--recalls", "internal", "--regimes", "progressive"]
    assert sweep.main(args + ["--results", ""]) == 0  # the run is finished: nothing trained, no summary asked for
    assert not (tmp_path / "results").exists()
    assert sweep.main(args) == 0  # default --results results/runs
    path = tmp_path / "results" / "runs" / f"{spec.name}.json"
    assert summary.load_summaries(tmp_path / "results" / "runs") == [summary.summarize(result, run / "metrics.jsonl")]
    assert json.loads(path.read_text())["train"]["late_loss"] == 0.375
    assert sweep.run_one(tiny, spec, tmp_path / "runs", data={}, results=tmp_path / "elsewhere") == json.loads(
        (run / "result.json").read_text())
    assert (tmp_path / "elsewhere" / f"{spec.name}.json").read_bytes() == path.read_bytes()


def test_the_papers_number_by_hand():
    curves = {"iters": [1, 30, 500, 1000], "accuracy": {"val": [0.25, 1.0, 0.75, 1.0], "hard": [0.0, 0.0, 0.0, 0.0]}}
    numbers = summary.paper_numbers({"curves": curves})  # best: the first count that reaches it
    assert numbers == {"paper": {"iterations": 500, "accuracy": {"val": 0.75, "hard": 0.0}},
                       "best": {"val": [30, 1.0], "hard": [1, 0.0]}}
    assert summary.paper_numbers({"curves": curves}, 30)["paper"]["accuracy"] == {"val": 1.0, "hard": 0.0}
    assert summary.paper_numbers({"curves": curves}, 2)["paper"]["accuracy"] == {"val": None, "hard": None}
    assert summary.paper_numbers({}) == {"paper": {"iterations": 500, "accuracy": {}}, "best": {}}
    # a result that records them already keeps its own
    result = _result("internal", "progressive", [0.0, 0.25, 0.5], 0.75)
    result["eval"].update(paper={"iterations": 500, "accuracy": {"hard": 0.125}}, best={"hard": [4, 0.25]})
    s = summary.summarize(result, None)
    assert s["eval"]["paper"] == {"iterations": 500, "accuracy": {"hard": 0.125}}


def test_the_rules_beside_the_verdicts_state_the_claims_thresholds(tmp_path, monkeypatch):
    """RESULTS.md's template words each rule; the thresholds in it are claims.py's, filled in."""
    from experiments import claims

    summary.import_runs(_fake_sweep(tmp_path / "runs" / "sweep"), tmp_path / "results" / "runs")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(claims, "REACHED", 0.25)
    monkeypatch.setattr(claims, "FD_CONSTANT", 0.01)
    assert report.main(["--sections", "--examples", ""]) == 0
    text = (tmp_path / "RESULTS.md").read_text()
    assert "- **C1 — without recall, countable fixed points and no strong input dependence: inconclusive at this " \
           "budget.** 0 recall-free runs (none), 0 at fixed points" in text
    assert "(each ≥ 25%; an Anderson" in text and "its own z₀ = e ≤ 0.01 — and no recall-free loop reaches 20% @500" in text
    assert "; with fewer than 3 recall-free runs at fixed points it is inconclusive" in text
