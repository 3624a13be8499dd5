"""The command line on bad input: one line naming the problem and exit status 2, never a
traceback, never a file that existed before changed or deleted. Specific cases first, then a
Hypothesis test that drives ``deqloop train / eval / analyze / plot`` in process with generated
arguments and small files."""

from __future__ import annotations

import contextlib
import errno
import io
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deqloop.checkpoint import load_checkpoint
from deqloop.cli import main
from deqloop.train import train
from test_train import tiny_config

TRAIN = ("--task prefix_sums --length 6 --hard-length 8 --width 8 --heads 2 --attention local --window 3 "
         "--batch-size 4 --no-progress --checkpoint-every 10 --log-every 1 --eval-size 0 --threads 1").split()
EVAL = ["--iters", "1,2", "--n", "4", "--solver", "none", "--device", "cpu"]


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A folder of files to point commands at: a run, a weights-only and a NaN checkpoint, junk,
    a plain file, malformed metrics logs."""
    root = tmp_path_factory.mktemp("template")
    train(tiny_config(root / "run", steps=2, warmup_steps=0, eval_size=0, width=8, heads=2))
    state = load_checkpoint(root / "run" / "last.pt")
    torch.save({"model_config": state["model_config"], "model": state["model"]}, root / "weights.pt")
    name = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][name].view(-1)[0] = float("nan")
    torch.save(state, root / "nan.pt")
    (root / "junk.pt").write_bytes(b"not a checkpoint")
    (root / "afile").write_text("a plain file\n")
    for folder, content in (("badlog", b"[1, 2]\n{\"step\": 3}\n"), ("steplog", b"{\"step\": \"abc\"}\n{}\n"),
                            ("binlog", b"{\"step\": 1}\n\xff\xfe\n")):
        (root / folder).mkdir()
        (root / folder / "metrics.jsonl").write_bytes(content)
    (root / "dirlog" / "metrics.jsonl").mkdir(parents=True)
    return root


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """``main(argv)`` in process: exit status, stdout, stderr (argparse's exits included)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 2
    return code, out.getvalue(), err.getvalue()


def one_line_error(err: str, *needles: str) -> str:
    """The single ``error:`` line of ``err`` (checked: no traceback), containing ``needles``."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and lines[0].startswith("deqloop"), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def sandbox(template, tmp_path) -> Path:
    shutil.copytree(template, tmp_path / "s")
    return tmp_path / "s"


# -- specific cases -------------------------------------------------------------------------------

def test_eval_on_a_weights_only_checkpoint_asks_for_a_task_and_takes_one(sandbox):
    code, _, err = run_cli(["eval", str(sandbox / "weights.pt"), *EVAL, "--out", str(sandbox / "e")])
    assert code == 2
    one_line_error(err, "holds weights only", "--task NAME")
    code, out, err = run_cli(["eval", str(sandbox / "weights.pt"), *EVAL, "--task", "prefix_sums",
                              "--task-option", "length", "6", "--out", str(sandbox / "e")])
    assert code == 0 and (sandbox / "e" / "eval.json").is_file() and "wrote" in out


@pytest.mark.parametrize("command", ["eval", "analyze"])
def test_an_out_that_is_a_file_is_refused_before_any_work(sandbox, monkeypatch, command):
    def no_work(*args, **kwargs):
        raise RuntimeError("the work started before --out was checked")

    monkeypatch.setattr("deqloop.eval.evaluate.evaluate_run", no_work)
    monkeypatch.setattr("deqloop.cli.analyze.analyze", no_work)
    before = files(sandbox)
    extra = EVAL if command == "eval" else ["--n", "2"]
    for out, problem in ((sandbox / "afile", "is a file, not a folder"), (sandbox / "afile" / "sub", "cannot be created")):
        code, _, err = run_cli([command, str(sandbox / "run" / "last.pt"), *extra, "--out", str(out)])
        assert code == 2
        one_line_error(err, problem)
    assert files(sandbox) == before


@pytest.mark.parametrize("number, reason", [(errno.ENOSPC, "No space left on device"),
                                            (errno.EACCES, "Permission denied")])
def test_a_full_disk_or_a_read_only_folder_is_found_before_training_and_named(sandbox, monkeypatch, number, reason):
    def refuse(fd, data):  # what writing into the folder meets (as root, chmod cannot make one read-only)
        raise OSError(number, reason)

    monkeypatch.setattr("deqloop.files.os.write", refuse)
    code, _, err = run_cli(["train", *TRAIN, "--steps", "1", "--out", str(sandbox / "new")])
    assert code == 2
    one_line_error(err, "out", f"is not writable: {reason}")
    assert not (sandbox / "new" / "config.json").exists()


def test_train_into_a_file_is_one_line(sandbox):
    code, _, err = run_cli(["train", *TRAIN, "--steps", "1", "--out", str(sandbox / "afile")])
    assert code == 2
    one_line_error(err, "is a file, not a folder")


@pytest.mark.parametrize("folder, problem", [("badlog", "metrics.jsonl:1: not a metrics record"),
                                             ("steplog", "metrics.jsonl:1: not a metrics record"),
                                             ("binlog", "metrics.jsonl:2: not UTF-8"),
                                             ("dirlog", "is a folder, not a metrics file")])
def test_plot_names_a_malformed_metrics_log(sandbox, folder, problem):
    code, _, err = run_cli(["plot", str(sandbox / folder), "--out", str(sandbox / "p.png")])
    assert code == 2
    one_line_error(err, problem)


def test_plot_prints_the_path_it_wrote(sandbox):
    code, out, _ = run_cli(["plot", str(sandbox / "run"), "--out", str(sandbox / "figure")])
    assert code == 0 and out.strip() == str(sandbox / "figure.png") and (sandbox / "figure.png").is_file()
    (sandbox / "figs").mkdir()
    code, out, _ = run_cli(["plot", str(sandbox / "run"), "--out", str(sandbox / "figs")])
    assert code == 0 and out.strip() == str(sandbox / "figs" / "stability.png")
    assert (sandbox / "figs" / "stability.png").stat().st_size > 1000


@pytest.mark.parametrize("argv, problem", [
    (["train", "--step", "5"], "unrecognized arguments: --step 5"),
    (["train", "--out", ""], "argument --out: must not be empty"),
    (["eval", "x.pt", "--out", ""], "argument --out: must not be empty"),
    (["train", "--seed", "18446744073709551616"], "seed must be an integer in [0, 2**64)"),
])
def test_abbreviations_and_empty_paths_are_refused(argv, problem):
    code, _, err = run_cli(argv)
    assert code == 2
    one_line_error(err, problem)


def test_a_batch_that_cannot_be_allocated_is_one_line(sandbox):
    code, _, err = run_cli(["train", *TRAIN, "--steps", "1", "--batch-size", "1000000000000", "--out",
                            str(sandbox / "big")])
    assert code == 2
    one_line_error(err, "not enough memory for a training step (batch_size 1000000000000")


def test_analyze_on_a_nan_checkpoint_is_one_line(sandbox):
    code, _, err = run_cli(["analyze", str(sandbox / "nan.pt"), "--n", "2"])
    assert code == 2
    one_line_error(err, "holds non-finite values")


# -- generated ------------------------------------------------------------------------------------

CHECKPOINTS = ["run/last.pt", "weights.pt", "nan.pt", "junk.pt", "missing.pt", "run", "afile"]
OUTS = ["fresh", "afile", "afile/sub", "run", "", "badlog"]
RUNS = ["run", "badlog", "steplog", "binlog", "dirlog", "missing", "afile"]


def _flag(name: str, values: list[str]) -> st.SearchStrategy[list[str]]:
    return st.sampled_from(values).map(lambda v: [name, v])


TRAIN_FLAGS = st.one_of(
    _flag("--steps", ["1", "2", "0", "-1", "x", "1.5"]),
    _flag("--seed", ["0", "7", "-3", "18446744073709551616"]),
    _flag("--batch-size", ["4", "0", "3"]),
    _flag("--width", ["8", "7", "0"]),
    _flag("--task", ["prefix_sums", "nope", "evil_task:Foo"]),
    _flag("--loss", ["equilibrium", "progressive", "x"]),
    _flag("--backward-options", ['{"rtoll": 1}', "{", "[]", '{"m": 3}']),
    _flag("--keep-every", ["1", "-1"]),
    _flag("--step", ["5"]),
    _flag("--logger", ["jsonl", "x"]),
    _flag("--eval-iters", ["1", "0"]),
    st.sampled_from([["--resume"], ["--overwrite"], ["--resume", "--overwrite"]]),
    st.sampled_from([["--task", "sudoku", "--data", "{root}/" + name] for name in ("junk.pt", "afile", "missing")]),
)
EVAL_FLAGS = st.one_of(
    _flag("--iters", ["1,2", "0", "a", "3"]),
    _flag("--n", ["4", "0", "-1"]),
    _flag("--task", ["prefix_sums", "sudoku", "nope"]),
    _flag("--solver", ["none", "x", "anderson"]),
    _flag("--extra", ["8", "x"]),
    _flag("--seed", ["1", "-1"]),
)
ANALYZE_FLAGS = st.one_of(
    _flag("--n", ["2", "0"]),
    _flag("--task", ["prefix_sums", "nope"]),
    _flag("--band", ["val", "x"]),
    _flag("--max-iter", ["3", "0"]),
)
PLOT_FLAGS = st.one_of(_flag("--dpi", ["40", "0", "x"]))


@st.composite
def commands(draw) -> list[str]:
    """``[command, *args]`` with ``{root}`` placeholders for the sandbox."""
    command = draw(st.sampled_from(["train", "eval", "analyze", "plot"]))
    out = draw(st.sampled_from(OUTS))
    out_args = ["--out", "" if out == "" else "{root}/" + out] if draw(st.booleans()) or command == "train" else []
    if command == "train":
        flags = draw(st.lists(TRAIN_FLAGS, max_size=3))
        return ["train", *TRAIN, "--steps", "1", *out_args, *sum(flags, [])]
    if command == "plot":
        runs = draw(st.lists(st.sampled_from(RUNS), min_size=1, max_size=2))
        return ["plot", *["{root}/" + r for r in runs], *out_args, *sum(draw(st.lists(PLOT_FLAGS, max_size=1)), [])]
    ckpt = "{root}/" + draw(st.sampled_from(CHECKPOINTS))
    if command == "eval":
        return ["eval", ckpt, *EVAL, *out_args, *sum(draw(st.lists(EVAL_FLAGS, max_size=3)), [])]
    return ["analyze", ckpt, "--n", "2", "--measures", "--inits", "zeros", "--no-plots", *out_args,
            *sum(draw(st.lists(ANALYZE_FLAGS, max_size=2)), [])]


def check_command(template: Path, argv: list[str]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "s"
        shutil.copytree(template, root)
        argv = [a.replace("{root}", str(root)) for a in argv]
        before = files(root)
        with contextlib.chdir(root):  # a default --out (plot's stability.png) lands in the sandbox
            code, out, err = run_cli(argv)  # an exception other than argparse's exit is a bug: the test fails
        assert "Traceback" not in err
        if code != 0:
            one_line_error(err)
            assert files(root) == before, f"{argv} changed files it refused to work on"
            return
        assert code == 0 and out.strip()
        written = argv[argv.index("--out") + 1] if "--out" in argv else None
        if argv[0] == "train":
            assert "trained" in out and (Path(written) / "last.pt").is_file()
        elif argv[0] == "eval":
            assert "wrote" in out and "eval.json" in out
        elif argv[0] == "plot":
            assert (root / out.strip().splitlines()[-1]).is_file()  # a relative path is the sandbox's
        else:
            assert "report.json" in out
        kept = {k: v for k, v in before.items() if written is None or not str(root / k).startswith(written)}
        changed = [k for k, v in kept.items() if files(root).get(k) != v]
        outputs = {"eval": ("eval.json", "iterations.png"), "plot": ("stability.png",)}.get(argv[0], ())
        assert all(k.endswith(outputs) for k in changed), f"{argv} changed {changed}"


@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(argv=commands())
def test_generated_commands_succeed_or_fail_in_one_line_and_change_nothing(template, argv):
    check_command(template, argv)


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(argv=commands())
def test_many_generated_commands_succeed_or_fail_in_one_line_and_change_nothing(template, argv):
    check_command(template, argv)
