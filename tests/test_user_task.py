"""A task defined only here, outside the library, trains, evaluates and analyses through the public
API and through the command line, with no edit to deqloop."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from helpers import plain_iteration_scores

from deqloop import seeds
from deqloop.checkpoint import CheckpointError
from deqloop.cli import main
from deqloop.errors import ConfigError, ConfigKeyError
from deqloop.eval import evaluate_run
from deqloop.run import Run
from deqloop.tasks import Task, get_task, register_task, task_names
from deqloop.train import TrainConfig, train
from deqloop.validate import setting


@dataclass(frozen=True)
class CopyShifted(Task):
    """Copy the input shifted right by one cell (the first output is 0): y[i] = x[i − 1]."""

    length: int = setting("sequence length", default=6)
    hard_length: int = setting("length of the hard split", default=12)

    name: ClassVar[str] = "copy_shifted"
    vocab_size: ClassVar[int] = 4
    num_classes: ClassVar[int] = 4

    @property
    def grid(self) -> tuple[int, ...]:
        return (self.length,)

    def make(self, split: str, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        length = self.hard_length if split == "hard" else self.length
        g = seeds.generator(seed, {"train": 0, "val": 1, "hard": 2}[split])
        x = torch.randint(0, 4, (n, length), generator=g)
        y = torch.cat([torch.zeros(n, 1, dtype=torch.long), x[:, :-1]], dim=1)
        return x, y


register_task("copy_shifted", CopyShifted)

TINY = dict(width=16, heads=2, attention="local", window=3, loss="progressive", max_iter=3, steps=4, batch_size=8,
            warmup_steps=0, log_every=1, eval_size=8, threads=1, progress=False)


def test_the_task_is_registered_and_its_settings_are_validated():
    assert "copy_shifted" in task_names()
    task = get_task("copy_shifted", length=5)
    x, y = task.make("train", 3, seed=1)
    assert x.shape == (3, 5) and torch.equal(y[:, 1:], x[:, :-1]) and bool((y[:, 0] == 0).all())
    with pytest.raises(ConfigKeyError, match=r"task 'copy_shifted' got unknown key\(s\) \['width'\]; allowed: length"):
        get_task("copy_shifted", width=3)
    with pytest.raises(ConfigError, match="already registered"):
        register_task("copy_shifted", type("Other", (CopyShifted,), {}))


def test_trains_evaluates_and_analyses_through_the_api(tmp_path):
    from deqloop.analysis import analyze

    config = TrainConfig.from_flat(task="copy_shifted", task_options={"length": 5, "hard_length": 9}, out=str(tmp_path), **TINY)
    result = train(config)
    assert result.step == 4
    run = Run.load(result.checkpoint)
    # the trainer's final eval: its own eval sets (seeded from the run's seed), at depth 3 = max_iter
    eval_seed = seeds.derive_seed(config.run.seed, seeds.EVAL) % 2**31
    for band in ("val", "hard"):
        x, y = run.task.make(band, 8, seed=eval_seed)
        exact, _, _ = plain_iteration_scores(run.model, x, y, [3], rtol=1e-3)
        assert result.eval_metrics[f"{band}_accuracy"] == pytest.approx(exact, abs=1e-6), band
    assert isinstance(run.task, CopyShifted) and run.task.length == 5 and run.task.hard_length == 9
    assert run.model.config.arch.grid == (5,) and run.model.config.arch.vocab_size == 4
    report = evaluate_run(run, iters=[1, 3], n=6)
    assert report.n == {"val": 6, "hard": 6}
    for band in ("val", "hard"):
        x, y = run.task.make(band, 6, seed=12345)
        exact, cells, settled = plain_iteration_scores(run.model, x, y, [1, 3], rtol=1e-3)
        assert report.curves.curves[band] == pytest.approx(exact) and report.cells.curves[band] == pytest.approx(cells)
        assert report.settling[band]["iterations_mean"] == pytest.approx(settled)
    x, _ = run.task.make("hard", 4, seed=0)
    assert x.shape == (4, 9)  # the hard split is longer than the training grid: the model extrapolates
    stability = analyze(run.model, x, measures=(), inits=("embed",), max_iter=5)
    assert stability.batch == 4 and tuple(stability.grid) == (9,)


def test_trains_evaluates_and_analyses_through_the_cli(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--task", f"{__name__}:CopyShifted", "--length", "5", "--hard-length", "7", "--out", str(out)]
    for key, value in TINY.items():
        flag = "--" + key.replace("_", "-")
        argv += [flag] if value is True else ([f"--no-{key.replace('_', '-')}"] if value is False else [flag, str(value)])
    assert main(argv) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["task"] == f"{__name__}:CopyShifted" and config["task_options"] == {"length": 5, "hard_length": 7}
    assert main(["eval", str(out / "last.pt"), "--iters", "1,3", "--n", "4", "--device", "cpu"]) == 0
    report = json.loads((out / "eval.json").read_text())
    assert report["task"] == "copy_shifted" and report["n"] == {"val": 4, "hard": 4}
    assert main(["analyze", str(out / "last.pt"), "--n", "2", "--measures", "--inits", "embed", "--no-plots",
                 "--out", str(tmp_path / "an")]) == 0
    stability = json.loads((tmp_path / "an" / "report.json").read_text())
    assert stability["batch"] == 2
    capsys.readouterr()


def test_the_cli_offers_the_task_settings_as_flags(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--task", f"{__name__}:CopyShifted", "--help"])
    out = capsys.readouterr().out
    assert "settings of task" in out and "--hard-length" in out and "length of the hard split" in out


def test_a_checkpoint_of_a_registered_task_loads_in_a_fresh_registry(tmp_path, monkeypatch):
    """The checkpoint stores where the task class lives; it is imported again only when the user
    names it (a checkpoint never makes deqloop import code)."""
    from deqloop.tasks import base

    config = TrainConfig.from_flat(task="copy_shifted", out=str(tmp_path), **TINY)
    train(config)
    monkeypatch.setattr(base, "_REGISTRY", dict(base._BUILTIN))  # as in a new process that never imported us
    assert "copy_shifted" not in task_names()
    import sys

    monkeypatch.delitem(sys.modules, __name__)  # re-importing this module registers the task again
    with pytest.raises(CheckpointError, match=rf"task 'copy_shifted' \(defined in module '{__name__}'\) is not "
                       rf"registered.*--import {__name__}"):
        Run.load(tmp_path / "last.pt")
    assert __name__ not in sys.modules
    run = Run.load(tmp_path / "last.pt", imports=[__name__])
    assert "copy_shifted" in task_names() and run.task.name == "copy_shifted"
