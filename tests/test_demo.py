"""``deqloop demo``: the quick variant runs the demo's code path end to end in seconds."""

from __future__ import annotations

import json

import pytest

from deqloop.cli import main
from deqloop.demo import TEST_FACTORS, TRAIN_LENGTH, demo_config, run_demo


def test_demo_quick_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    stdout = capsys.readouterr().out
    names = [f"{TRAIN_LENGTH} bits (train)"] + [f"{f * TRAIN_LENGTH} bits ({f}x)" for f in TEST_FACTORS]
    for name in names:
        assert name in stdout
    assert "<- training depth" in stdout and "adaptive" in stdout and "target ≥ 95%" in stdout
    result = json.loads((out / "demo.json").read_text())
    assert list(result["curves"]["accuracy"]) == names
    assert result["curves"]["train_depth"] == TRAIN_LENGTH + 2
    assert result["headline"]["split"] == names[1]
    assert set(result["adaptive"]) == set(names)
    assert (out / "iterations.png").stat().st_size > 1000
    assert (out / "last.pt").is_file() and (out / "metrics.jsonl").read_text().strip()
    # running it again is refused (nothing changed); with --overwrite it starts afresh in the same folder
    before = (out / "last.pt").read_bytes()
    assert main(["demo", "--quick", "--out", str(out), "--no-progress", "--steps", "3"]) == 2
    assert "--overwrite" in capsys.readouterr().err and (out / "last.pt").read_bytes() == before
    assert main(["demo", "--quick", "--out", str(out), "--no-progress", "--steps", "3", "--overwrite"]) == 0
    assert json.loads((out / "demo.json").read_text())["steps"] == 3


def test_demo_config_is_the_documented_recipe():
    c = demo_config()
    task = c.build_task()
    assert (c.task, task.length, task.min_length, c.objective.depth_offset) == ("prefix_sums", 12, 4, 2)
    assert c.task_options["length"] == TRAIN_LENGTH and c.depth() == TRAIN_LENGTH + 2
    m, o = c.model, c.optim
    assert (m.width, m.heads, m.attention, m.window, m.recall, m.norm) == (32, 4, "local", 3, "internal", "post")
    assert (c.objective.loss, c.objective.alpha) == ("progressive", 0.0)
    assert (o.lr, o.batch_size, o.steps, o.schedule) == (2e-3, 64, 800, "cosine")
    quick = demo_config(quick=True)
    assert quick.optim.steps < c.optim.steps and quick.task == c.task and quick.model.width == c.model.width
    assert quick.task_options == c.task_options


@pytest.mark.slow
def test_demo_recipe_extrapolates(tmp_path):
    """The full demo recipe (fewer test inputs): ≥ 95% exact match at 4x the training length."""
    result = run_demo(out=tmp_path / "demo", n=64, progress=False, echo=lambda *a: None)
    assert result.headline["reached"], result.headline
    assert result.headline["accuracy_at_training_depth"] < 0.5  # it needs the extra iterations
    assert result.curves.best("96 bits (8x)")[1] >= 0.9
    assert result.adaptive["96 bits (8x)"]["iterations_mean"] > result.adaptive["12 bits (train)"]["iterations_mean"]
