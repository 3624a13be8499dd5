"""The ``deqloop`` command line: help, one-line errors, train then eval end to end."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import plain_iteration_scores

from deqloop.cli import CLIError, build_parser, main
from deqloop.flat_names import leaves
from deqloop.errors import DeqloopError
from deqloop.run import Run
from deqloop.tasks.prefix_sums import PrefixSums
from deqloop.tasks.sudoku import Sudoku
from deqloop.train import TrainConfig

TINY = ["--task", "prefix_sums", "--length", "6", "--min-length", "3", "--hard-length", "12", "--width", "16",
        "--heads", "2", "--attention", "local", "--window", "3", "--loss", "progressive", "--depth-offset", "1",
        "--steps", "4", "--batch-size", "8", "--log-every", "1", "--eval-size", "8", "--threads", "1",
        "--no-progress"]


def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def usage_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return err


def test_help_lists_the_commands(capsys):
    code, out, _ = run([], capsys)
    assert code == 0
    for command in ("train", "eval", "demo", "analyze"):
        assert command in out


def test_train_help_explains_every_config_field(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for name, leaf in leaves(TrainConfig).items():  # every setting of the nested tree, by flat name
        if name == "task_options":  # the task's settings are flags of their own (below)
            assert "--task-options" not in out
            continue
        flag = "--" + name.replace("_", "-")
        assert flag in out, flag
        assert leaf.field.metadata["help"].split()[0] in out
    assert "[default: 128]" in out  # --width
    for f in dataclasses.fields(PrefixSums):  # the default task's settings: --length, --min-length, ...
        assert "--" + f.name.replace("_", "-") in out, f.name
        assert f.metadata["help"].split()[0] in out
    assert "settings of task 'prefix_sums'" in out and "--augment" not in out


def test_train_flags_follow_the_task_named_in_argv(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--task", "sudoku", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "settings of task 'sudoku'" in out
    for f in dataclasses.fields(Sudoku):
        assert "--" + f.name.replace("_", "-") in out, f.name
    assert "--min-length" not in out
    sub = next(a for a in build_parser(["train", "--task", "sudoku"])._actions if a.dest == "command")
    args = sub.choices["train"].parse_args(["--task", "sudoku", "--augment", "--data", "x.csv"])
    assert args.augment is True and args.data == "x.csv" and args.task_fields == [f.name for f in dataclasses.fields(Sudoku)]
    # a prefix-sums flag does not exist for sudoku
    err = usage_error(["train", "--task", "sudoku", "--length", "8"], capsys)
    assert "unrecognized arguments: --length 8" in err


@pytest.mark.parametrize("command", ["eval", "demo", "analyze"])
def test_each_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    for action in sub._actions:
        for flag in action.option_strings:
            assert flag in out
        assert action.help, action.dest


def test_console_script_runs():
    exe = Path(sys.executable).with_name("deqloop")
    if not exe.exists():
        pytest.skip("deqloop console script not installed in this environment")
    proc = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "deqloop" in proc.stdout


def test_unknown_flag_is_one_line(capsys):
    err = usage_error(["train", "--widht", "3"], capsys)
    assert "unrecognized arguments: --widht 3" in err


def test_bad_choice_names_the_allowed_values(capsys):
    err = usage_error(["train", "--loss", "magic"], capsys)
    assert "invalid choice: 'magic'" in err and "equilibrium" in err and "progressive" in err


def test_bad_number_is_one_line(capsys):
    err = usage_error(["train", "--width", "wide"], capsys)
    assert "--width" in err and "'wide'" in err


def test_bad_json_option_is_one_line(capsys):
    err = usage_error(["train", "--solver-options", "{m: 5}"], capsys)
    assert "not JSON" in err


def test_bad_iteration_list_is_one_line(capsys):
    err = usage_error(["eval", "x.pt", "--iters", "1,two"], capsys)
    assert "comma-separated positive integers" in err


def test_impossible_combination_is_one_line_without_traceback(capsys):
    code, _, err = run(["train", "--loss", "progressive", "--backward", "implicit"], capsys)
    assert code == 2
    assert err.strip() == ("deqloop train: error: backward and backward_options apply to loss='equilibrium'; "
                           "the progressive loss backpropagates through plain iterations")


def test_missing_files_are_one_line(tmp_path, capsys):
    code, _, err = run(["eval", str(tmp_path / "nope.pt")], capsys)
    assert code == 2 and err.strip() == f"deqloop eval: error: no checkpoint at '{tmp_path / 'nope.pt'}'"
    code, _, err = run(["train", "--task", "sudoku", "--data", str(tmp_path / "nope.csv")], capsys)
    assert code == 2 and err.strip() == f"deqloop train: error: Sudoku.data: no such file '{tmp_path / 'nope.csv'}'"
    code, _, err = run(["train", "--resume", "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and "nothing to resume" in err and len(err.strip().splitlines()) == 1


def test_train_then_eval(tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = run(["train", *TINY, "--solver-options", '{"m": 3}', "--out", str(out)], capsys)
    assert code == 0, err
    assert "trained 4 steps" in stdout and "val accuracy by iterations" in stdout
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["width"] == 16 and config["solve"]["solver_options"] == {"m": 3}
    assert config["optim"]["steps"] == 4
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(l)["step"] for l in lines if "loss" in json.loads(l)] == [1, 2, 3, 4]

    code, stdout, err = run(["eval", str(out / "last.pt"), "--iters", "1,3,8", "--n", "8", "--extra", "24",
                             "--threads", "1"], capsys)
    assert code == 0, err
    assert "iterations" in stdout and "24 bits" in stdout and "adaptive" in stdout
    report = json.loads((out / "eval.json").read_text())
    assert report["curves"]["iters"] == [1, 3, 8]
    assert set(report["curves"]["accuracy"]) == {"val", "hard", "24 bits"}
    assert set(report["cells"]["accuracy"]) == {"val", "hard", "24 bits"}
    assert "fraction of cells right" in stdout
    assert report["n"] == {"val": 8, "hard": 8, "24 bits": 8}
    assert report["curves"]["train_depth"] == 7
    assert set(report["settling"]) == {"val", "hard", "24 bits"}
    # the numbers, recomputed by a loop of plain iterations written out in the tests, on the
    # evaluation sets eval draws (seed 12345)
    run_ = Run.load(out / "last.pt")
    sets = {band: run_.task.make(band, 8, seed=12345) for band in ("val", "hard")}
    sets["24 bits"] = run_.task.extra_split("24", 8, 12345)[1]
    for name, (x, y) in sets.items():
        exact, cells, settled = plain_iteration_scores(run_.model, x, y, [1, 3, 8], rtol=1e-3)
        assert report["curves"]["accuracy"][name] == pytest.approx(exact), name
        assert report["cells"]["accuracy"][name] == pytest.approx(cells), name
        assert report["settling"][name]["iterations_mean"] == pytest.approx(settled), name
    assert report["solver"] == {}
    assert (out / "iterations.png").stat().st_size > 1000
    # the first 4 hard examples after the last count (500 not scored), as the task shows them
    x, y = sets["hard"]
    with torch.no_grad():
        e = run_.model.embed(x[:4])
        z = run_.model.initial_state(e)
        for _ in range(8):
            z = run_.model.step(z, e)
        answers = run_.model.readout(z)
    assert report["examples"] == {"split": "hard", "iterations": 8, "rows": run_.task.show(x[:4], y[:4], answers)}
    assert "examples of hard after 8 iterations" in stdout

    # a second train into the same folder is refused; --resume of a finished run is a no-op
    code, _, err = run(["train", *TINY, "--out", str(out)], capsys)
    assert code == 2 and "already holds a run" in err
    code, stdout, err = run(["train", *TINY, "--solver-options", '{"m": 3}', "--out", str(out), "--resume"], capsys)
    assert code == 0, err
    assert "trained 4 steps" in stdout


def test_eval_rejects_options_that_do_not_fit_the_task(tmp_path, capsys):
    out = tmp_path / "run"
    assert run(["train", *TINY, "--steps", "1", "--out", str(out)], capsys)[0] == 0
    code, _, err = run(["eval", str(out / "last.pt"), "--extra", str(out / "config.json")], capsys)
    assert code == 2 and "prefix_sums extra test sets are lengths in bits, got " in err
    assert len(err.strip().splitlines()) == 1
    code, _, err = run(["eval", str(out / "last.pt"), "--n", "0"], capsys)
    assert code == 2 and "--n must be an integer ≥ 1, got 0" in err
    code, _, err = run(["eval", str(out / "last.pt"), "--examples", "-1"], capsys)
    assert code == 2 and "--examples must be an integer ≥ 0, got -1" in err
    code, _, err = run(["eval", str(out / "last.pt"), "--task-option", "data", "x.csv"], capsys)
    assert code == 2 and "task 'prefix_sums' got unknown key(s) ['data']" in err
    code, _, err = run(["eval", str(out / "last.pt"), "--device", "gpu"], capsys)
    assert code == 2 and "unknown device 'gpu'; allowed: auto, cpu, cuda, cuda:N" in err


def test_eval_with_a_solver(tmp_path, capsys):
    out = tmp_path / "run"
    assert run(["train", *TINY, "--steps", "1", "--out", str(out)], capsys)[0] == 0
    code, stdout, err = run(["eval", str(out / "last.pt"), "--iters", "2,4", "--n", "4", "--solver", "anderson",
                             "--out", str(tmp_path / "ev")], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert report["solver_name"] == "anderson" and set(report["solver"]) == {"val", "hard"}
    run_ = Run.load(out / "last.pt")
    for band in ("val", "hard"):  # at most max(iters) = 4 evaluations, to --solver-rtol 1e-4
        with torch.no_grad():
            sol = run_.model(run_.task.make(band, 4, seed=12345)[0], solver="anderson", max_iter=4, rtol=1e-4,
                             backward="none").solution
        assert report["solver"][band]["iterations_max"] == int(sol.iterations.max()), band
        assert report["solver"][band]["converged"] == pytest.approx(float(sol.converged.double().mean())), band
    assert "anderson solver" in stdout
    code, _, err = run(["eval", str(out / "last.pt"), "--solver", "newton"], capsys)
    assert code == 2 and "unknown solver 'newton'" in err


def test_eval_solves_a_fixed_point_trained_run_by_default(tmp_path, capsys):
    out = tmp_path / "run"
    flags = list(TINY)
    del flags[flags.index("--depth-offset"):flags.index("--depth-offset") + 2]  # plain depths: progressive only
    flags[flags.index("--loss") + 1] = "equilibrium"
    assert run(["train", *flags, "--solver", "picard", "--steps", "1", "--out", str(out)], capsys)[0] == 0
    assert run(["eval", str(out / "last.pt"), "--iters", "2", "--n", "4"], capsys)[0] == 0
    report = json.loads((out / "eval.json").read_text())
    assert report["solver_name"] == "picard" and set(report["solver"]) == {"val", "hard"}  # the run's own solver
    assert run(["eval", str(out / "last.pt"), "--iters", "2", "--n", "4", "--solver", "none"], capsys)[0] == 0
    assert json.loads((out / "eval.json").read_text())["solver"] == {}


def test_analyze_a_trained_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    assert run(["train", *TINY, "--steps", "1", "--eval-size", "0", "--out", str(out)], capsys)[0] == 0
    # the checkpoint names its task; --task overrides it
    code, stdout, err = run(["analyze", str(out / "last.pt"), "--n", "2", "--measures",
                             "--no-plots", "--max-iter", "5", "--out", str(tmp_path / "an")], capsys)
    assert code == 0, err
    assert (tmp_path / "an" / "report.json").is_file()
    code, stdout, err = run(["analyze", str(out / "last.pt"), "--task", "prefix_sums", "--n", "2", "--measures",
                             "--no-plots", "--max-iter", "5", "--out", str(tmp_path / "an2")], capsys)
    assert code == 0, err
    assert (tmp_path / "an2" / "report.json").is_file()
    code, _, err = run(["analyze", str(tmp_path / "nope.pt")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "no checkpoint at" in err


def test_import_of_a_missing_module_is_one_line(capsys):
    assert issubclass(CLIError, DeqloopError)
    code, _, err = run(["train", "--import", "no_such_module_xyz", "--steps", "1"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--import no_such_module_xyz" in err
