"""The report's section on committed example runs: records, their checks, and the figures shown."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from experiments import examples_report
from experiments.summary import SummaryError


def fake_run(folder: Path, val: list[float], hard: list[float], iters=(1, 4, 16)) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"loss": "progressive", "alpha": 0.5, "max_iter": 4, "threads": 2}))
    ev = {"checkpoint": str(folder / "last.pt"), "task": "sudoku", "n": {"val": 8, "hard": 8},
          "curves": {"iters": list(iters), "train_depth": 4, "accuracy": {"val": val, "hard": hard}},
          "settling": {"val": {"accuracy": 0.75, "iterations_mean": 12.5}, "hard": {"accuracy": 0.25,
                                                                                  "iterations_mean": 40.0}}}
    (folder / "eval.json").write_text(json.dumps(ev))
    (folder / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"step": 10, "loss": 1.5, "time": 30.0}, {"kind": "stability", "step": 10},
        {"step": 20, "loss": 0.25, "time": 125.0}]) + "\n")
    return folder


def test_record_add_load_and_section(tmp_path):
    run = fake_run(tmp_path / "run", val=[0.125, 1.0, 0.875], hard=[0.0, 0.5, 0.625])
    root = tmp_path / "results"
    assert examples_report.main(["add", str(run), "--name", "default", "--command", "python examples/sudoku.py",
                                 "--root", str(root)]) == 0
    stored = json.loads((root / "sudoku" / "default.json").read_text())
    assert stored["train_seconds"] == 125.0 and stored["steps"] == 20 and stored["final_loss"] == 0.25
    assert "checkpoint" not in stored["eval"]  # a path on the machine that ran it
    by_task = examples_report.load(root)
    assert [r["name"] for r in by_task["sudoku"]] == ["default"]
    text = squeeze(examples_report.section("sudoku", by_task["sudoku"], tmp_path / "plots", tmp_path / "RESULTS.md"))
    assert "| run | set | n | 1 | 4 | 16 | adaptive |" in text
    assert "| default | val | 8 | 12.5 | 100.0 | 87.5 | 75.0 / 12.5 |" in text
    assert "| default | hard | 8 | 0.0 | 50.0 | 62.5 | 25.0 / 40 |" in text
    assert "**default** `python examples/sudoku.py`" in text
    assert (tmp_path / "plots" / "sudoku_examples.png").stat().st_size > 1000
    # the overview row: no seed in this config; val best 100 % at 4, 87.5 % at the last count; hard best 62.5 % at 16
    assert "| **default** | progressive (alpha 0.5) | — | 20 | 2 | 100.0 (4) | 87.5 | 62.5 (16) | — |" in text
    assert text.index("| **default** |") < text.index("| default | val | 8 |")  # the overview comes before the runs


def squeeze(text: str) -> str:
    """Markdown tables without the padding of their cells."""
    return re.sub(r" +", " ", text)


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def test_overview_of_several_seeds_and_the_wrapped_plot(tmp_path):
    runs = []
    for seed, (val, hard) in enumerate([([0.5, 0.75, 1.0], [0.0, 0.25, 0.25]), ([0.25, 0.5, 0.5], [0.0, 0.0, 0.125]),
                                        ([1.0, 0.5, 0.25], [0.5, 0.0, 0.0]), ([0.0, 0.0, 0.0], [0.0, 0.0, 0.0])]):
        run = fake_run(tmp_path / f"s{seed}", val=val, hard=hard)
        cfg = json.loads((run / "config.json").read_text())
        (run / "config.json").write_text(json.dumps({**cfg, "seed": seed}))
        runs.append({**examples_report.record(run, "cmd"), "name": f"s{seed}"})
    runs[1]["eval"].update(solver_name="anderson", solver_rtol=1e-4,
                           solver={"hard": {"accuracy": 0.375, "iterations_mean": 33.0}})
    table = squeeze(examples_report.overview(runs).to_markdown(index=False, disable_numparse=True))
    # best is the first count that reaches the maximum: s1 val 50 % at 4 (not 16); s2 falls 100 → 25 %
    assert "| **s0** | progressive (alpha 0.5) | 0 | 20 | 2 | 100.0 (16) | 100.0 | 25.0 (4) | — |" in table
    assert "| **s1** | progressive (alpha 0.5) | 1 | 20 | 2 | 50.0 (4) | 50.0 | 12.5 (16) | 37.5 / 33 |" in table
    assert "| **s2** | progressive (alpha 0.5) | 2 | 20 | 2 | 100.0 (1) | 25.0 | 50.0 (1) | — |" in table
    assert "| **s3** | progressive (alpha 0.5) | 3 | 20 | 2 | 0.0 (1) | 0.0 | 0.0 (1) | — |" in table
    # four panels wrap onto two rows of three: 3 × 3.2 inches and the legend's 1.5 by 2 × 2.6 and the title's 0.6
    examples_report.section("sudoku", runs, tmp_path / "four", tmp_path / "RESULTS.md")
    w, h = png_size(tmp_path / "four" / "sudoku_examples.png")
    assert (w, h) == (1110, 580)  # 100 dpi
    examples_report.section("sudoku", runs[:2], tmp_path / "two", tmp_path / "RESULTS.md")
    assert png_size(tmp_path / "two" / "sudoku_examples.png") == (790, 320)  # two panels in a row


def test_a_fixed_point_run_shows_its_solve(tmp_path):
    run = fake_run(tmp_path / "run", val=[0.125, 1.0, 0.875], hard=[0.0, 0.5, 0.625])
    ev = json.loads((run / "eval.json").read_text())
    ev.update(solver_name="anderson", solver_rtol=1e-4,
              solver={"val": {"accuracy": 0.9375, "iterations_mean": 21.0}})  # no hard entry: a dash
    (run / "eval.json").write_text(json.dumps(ev))
    r = {**examples_report.record(run, "cmd"), "name": "eq"}
    text = squeeze(examples_report.section("sudoku", [r], tmp_path / "plots", tmp_path / "RESULTS.md"))
    assert "| 16 | adaptive | own solve |" in text
    cfg = {"loss": "equilibrium", "backward": "phantom", "backward_options": {"steps": 5, "tau": 0.8},
           "pretrain_steps": 0, "jac_reg": 0.1, "fp_states": 1, "train_init": None, "gate": None}
    assert examples_report.recipe(cfg) == 'backward phantom {"steps": 5, "tau": 0.8}, jac_reg 0.1'
    assert examples_report.recipe({**cfg, "fp_states": 3, "jac_reg": 0.0}) == (
        'backward phantom {"steps": 5, "tau": 0.8}, fp_states 3')
    assert "| eq | val | 8 | 12.5 | 100.0 | 87.5 | 75.0 / 12.5 | 93.8 / 21 |" in text
    assert "| eq | hard | 8 | 0.0 | 50.0 | 62.5 | 25.0 / 40 | — |" in text


def test_bad_records_are_named(tmp_path):
    with pytest.raises(SummaryError, match="missing .*eval.json"):
        run = tmp_path / "half"
        run.mkdir()
        (run / "config.json").write_text("{}")
        examples_report.record(run, "cmd")
    root = tmp_path / "results"
    (root / "sudoku").mkdir(parents=True)
    (root / "sudoku" / "x.json").write_text("{not json")
    with pytest.raises(SummaryError, match="x.json: not valid JSON"):
        examples_report.load(root)
    (root / "sudoku" / "x.json").write_text(json.dumps({"record_format": 99}))
    with pytest.raises(SummaryError, match="not an example record of format 1"):
        examples_report.load(root)
    r = examples_report.record(fake_run(tmp_path / "ok", [0.5] * 3, [0.0] * 3), "cmd")
    (root / "chess").mkdir()
    (root / "sudoku" / "x.json").unlink()
    (root / "chess" / "y.json").write_text(json.dumps(r))
    with pytest.raises(SummaryError, match="a 'sudoku' run filed under 'chess'"):
        examples_report.load(root)


def test_add_rejects_a_name_that_is_a_path(tmp_path, capsys):
    run = fake_run(tmp_path / "run", [0.5] * 3, [0.0] * 3)
    with pytest.raises(SystemExit):
        examples_report.main(["add", str(run), "--name", "../x", "--command", "c", "--root", str(tmp_path / "r")])
    assert "--name must be a plain file name" in capsys.readouterr().err
