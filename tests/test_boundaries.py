"""Every public entry point rejects bad input with one of the library's errors, naming the argument.

Explicit cases with their exact message fragments; the generated ones are in
``test_boundaries_generated.py``.
"""

from __future__ import annotations

import pytest
import torch

from deqloop import LoopedDEQ, Run, fixed_point, solve
from deqloop.analysis import analyze
from deqloop.checkpoint import FORMAT, CheckpointError, load_checkpoint, load_model, save_checkpoint
from deqloop.cli import main
from deqloop.errors import ConfigError, DeqloopError, InputError, InputTypeError
from deqloop.tasks import get_task
from deqloop.tasks.chess_data import load_lichess
from deqloop.tasks.sudoku_data import load as load_sudoku
from deqloop.train.config import TrainConfig


def tiny(**kw) -> LoopedDEQ:
    torch.manual_seed(0)
    opts = dict(vocab_size=10, num_classes=3, grid=(5,), width=8, heads=2, max_iter=3)
    return LoopedDEQ(**{**opts, **kw})


def half(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * z


# -- the model ---------------------------------------------------------------------------------

@pytest.mark.parametrize("bad, fragment", [
    (torch.full((2, 5), 12), r"x holds token id 12, outside the vocabulary \[0, 10\)"),
    (torch.full((2, 5), -1), r"x holds token id -1, outside the vocabulary \[0, 10\)"),
    (torch.zeros(2, 5), "x must be an integer tensor of token ids, got dtype torch.float32"),
    (torch.zeros(2, 5, dtype=torch.bool), "x must be an integer tensor of token ids, got dtype torch.bool"),
    (torch.zeros(5, dtype=torch.long), r"x must have shape \(B, \*grid\) with 1 grid axis\(es\), i.e. 2 dimensions"),
    (torch.zeros(1, 2, 5, dtype=torch.long), r"got shape \(1, 2, 5\)"),
    (torch.zeros(0, 5, dtype=torch.long), r"x has an empty batch \(shape \(0, 5\)\)"),
    (torch.zeros(2, 0, dtype=torch.long), r"x has an empty grid axis"),
    ([[1, 2, 3, 4, 5]], "x must be a torch.Tensor, got list"),
])
def test_forward_embed_trajectory_and_analyze_reject_bad_token_ids(bad, fragment):
    model = tiny()
    for call in (model, model.embed, lambda x: model.trajectory(x, 2),
                 lambda x: analyze(model, x, measures=(), progress=False)):
        with pytest.raises(InputError, match=fragment):
            call(bad)


def test_other_grid_sizes_and_small_integer_dtypes_still_run():
    one_d, two_d = tiny(), tiny(grid=(3, 3), heads=1)
    with torch.no_grad():
        assert one_d(torch.randint(0, 10, (2, 11))).logits.shape == (2, 11, 3)  # longer sequences
        assert two_d(torch.randint(0, 10, (1, 4, 6))).logits.shape == (1, 4, 6, 3)  # other boards
        assert one_d(torch.randint(0, 10, (2, 5), dtype=torch.uint8)).logits.shape == (2, 5, 3)


def test_forward_rejects_a_bad_z0():
    model, x = tiny(), torch.randint(0, 10, (2, 5))
    with pytest.raises(InputError, match=r"z0 has 80 non-finite entries \(NaN or Inf\) of 80"):
        model(x, z0=torch.full((2, 5, 8), float("nan")))
    z0 = torch.zeros(2, 5, 8)
    z0[1, 2, 3] = float("inf")
    with pytest.raises(InputError, match="z0 has 1 non-finite entries"):
        model(x, z0=z0)
    with pytest.raises(InputTypeError, match="z0 has dtype torch.float64; the model's state is torch.float32"):
        model(x, z0=torch.zeros(2, 5, 8, dtype=torch.float64))
    with pytest.raises(InputTypeError, match="z0 must be a floating-point tensor, got dtype torch.int64"):
        model(x, z0=torch.zeros(2, 5, 8, dtype=torch.long))
    with pytest.raises(InputError, match=r"z0 has shape \(2, 5, 7\); the state of these inputs is \(2, 5, 8\)"):
        model(x, z0=torch.zeros(2, 5, 7))
    with pytest.raises(InputTypeError, match="z0 must be a torch.Tensor, got float"):
        model(x, z0=0.0)


def test_step_readout_and_iteration_counts_are_checked():
    model = tiny()
    e = model.embed(torch.randint(0, 10, (2, 5)))
    with pytest.raises(InputError, match=r"z has shape \(2, 3, 8\), the embedding e \(2, 5, 8\); they must match"):
        model.step(e[:, :3], e)
    with pytest.raises(InputTypeError, match="z must be a floating-point tensor"):
        model.step(torch.zeros(2, 5, 8, dtype=torch.long), e)
    with pytest.raises(InputError, match=r"e must have shape \(B, \*grid, 8\) with 1 grid axis\(es\); got shape \(5, 8\)"):
        model.step(e, e[0])
    with pytest.raises(InputError, match=r"z must have shape \(B, \*grid, 8\).*got shape \(2, 5, 7\)"):
        model.readout(torch.zeros(2, 5, 7))
    with pytest.raises(InputError, match="steps must be an integer ≥ 0, got -1"):
        model.iterate(e, e, -1)
    with pytest.raises(InputTypeError, match="steps must be an integer ≥ 0, got 2.5"):
        model.iterate(e, e, 2.5)
    with pytest.raises(InputTypeError, match="iters must be an integer ≥ 0, got 'a'"):
        model.trajectory(torch.randint(0, 10, (2, 5)), "a")
    with pytest.raises(ConfigError, match="scale must be a finite number"):
        model.initial_state(e, "noise", scale=float("nan"))


# -- solve and fixed_point ---------------------------------------------------------------------

@pytest.mark.parametrize("entry", ["solve", "fixed_point", "unrolled", "torchdeq"])
def test_solvers_reject_bad_z0_and_bad_f(entry):
    def run(f, z0):
        if entry == "solve":
            return solve(f, z0)
        if entry == "torchdeq":
            return solve(f, z0, "torchdeq:anderson")
        return fixed_point(f, z0, backward="unrolled" if entry == "unrolled" else "implicit")

    z0 = torch.zeros(2, 3)
    cases = [
        (half, torch.full((2, 3), float("nan")), InputError, r"z0 has 6 non-finite entries \(NaN or Inf\)"),
        (half, torch.full((2, 3), float("-inf")), InputError, "z0 has 6 non-finite"),
        (half, torch.zeros(2, 3, dtype=torch.long), InputTypeError, "z0 must be a floating-point tensor"),
        (half, torch.zeros(0, 3), InputError, r"z0 must be batch-first \(B, ...\) with B ≥ 1 samples, got shape \(0, 3\)"),
        (half, torch.tensor(1.0), InputError, r"got shape \(\)"),
        (half, [1.0], InputTypeError, r"z0\[0\] must be a tensor or a tuple, list or dict of tensors, got float"),
        (3, z0, InputTypeError, "f must be callable"),
        (lambda z: z[:, :2], z0, InputError, r"f must return a tensor of the shape of its input \(2, 3\), got \(2, 2\)"),
        (lambda z: z.double(), z0, InputTypeError, r"f must return the dtype of z0 \(torch.float32\), got torch.float64"),
        (lambda z: z.long(), z0, InputTypeError, "got torch.int64"),
        (lambda z: None, z0, InputTypeError, "f must return a tensor of the shape of its input"),
    ]
    for f, start, error, fragment in cases:
        with pytest.raises(error, match=fragment):
            run(f, start)


def test_a_map_that_produces_nan_is_a_status_not_an_error():
    sol = solve(lambda z: z * float("nan"), torch.ones(2, 3))
    assert not bool(sol.converged.any())


def test_unknown_solver_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown solver method 'newton'; known: anderson"):
        solve(half, torch.zeros(1, 2), "newton")


# -- analyze, tasks, loaders, configs ------------------------------------------------------------

def test_analyze_checks_the_model():
    with pytest.raises(InputTypeError, match="model must be a LoopedDEQ, got str"):
        analyze("model", torch.zeros(1, 5, dtype=torch.long))


def test_task_make_checks_split_count_and_seed():
    task = get_task("prefix_sums")
    with pytest.raises(ConfigError, match="unknown split 'test'; allowed: 'train', 'val', 'hard'"):
        task.make("test", 2)
    with pytest.raises(ConfigError, match="n must be an integer ≥ 0, got -1"):
        task.make("train", -1)
    for seed in ("a", -1, 1.5, None):
        with pytest.raises(ConfigError, match=f"seed must be an integer ≥ 0, got {seed!r}"):
            task.make("train", 2, seed=seed)


@pytest.mark.parametrize("loader", [load_sudoku, load_lichess])
def test_loaders_name_a_missing_file_or_a_folder(loader, tmp_path):
    with pytest.raises(ConfigError, match="path '/no/such.csv': no such file"):
        loader("/no/such.csv")
    with pytest.raises(ConfigError, match="a folder, not a file"):
        loader(tmp_path)
    with pytest.raises(ConfigError, match="path must be a file path"):
        loader(3)


def test_load_lichess_checks_its_numbers(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("")
    with pytest.raises(ConfigError, match="min_rating must be an integer ≥ 0, got 'a'"):
        load_lichess(path, min_rating="a")
    with pytest.raises(ConfigError, match="shuffle_seed must be an integer ≥ 0, got -2"):
        load_lichess(path, shuffle_seed=-2)


@pytest.mark.parametrize("field, value, fragment", [
    ("solver_options", "x", "solver_options must be a dict, got str"),
    ("backward_options", None, "backward_options must be a dict, got NoneType"),
    ("eval_iters", 5, "eval_iters must be a sequence of integers ≥ 1, got 5"),
    ("eval_iters", ("a",), "eval_iters entry must be an integer ≥ 1, got 'a'"),
    ("qk_norm", "yes", "qk_norm must be True or False, got 'yes'"),
    ("resume", 1, "resume must be True or False, got 1"),
    ("out", 3, "out must be a folder path"),
    ("width", 0, "width must be an integer ≥ 1, got 0"),
    ("lr", float("nan"), "lr must be a finite number"),
])
def test_train_config_names_the_bad_setting(field, value, fragment):
    with pytest.raises(ConfigError, match=fragment):
        TrainConfig.from_flat(**{field: value})


def test_model_config_checks_grid_and_flags():
    with pytest.raises(ConfigError, match=r"grid must be \(L,\) or \(H, W\) of positive integer sizes, got \('a',\)"):
        tiny(grid=("a",))
    with pytest.raises(ConfigError, match="compile must be True or False, got 'no'"):
        tiny(compile="no")
    with pytest.raises(ConfigError, match="throw must be True or False"):
        tiny(throw=None)


# -- checkpoints and runs ----------------------------------------------------------------------

def _checkpoint(tmp_path, name="last.pt", **extra):
    model = tiny()
    state = {"format": FORMAT, "model_config": model.config.to_dict(), "model": model.state_dict(), **extra}
    return save_checkpoint(tmp_path / name, state)


def test_checkpoints_of_another_format_or_model_are_named(tmp_path):
    with pytest.raises(CheckpointError, match=f"checkpoint format {FORMAT + 1} is newer than this deqloop reads"):
        load_checkpoint(_checkpoint(tmp_path, format=FORMAT + 1))
    with pytest.raises(CheckpointError, match=f"checkpoint format 0 is not one deqloop wrote; allowed: 1 to {FORMAT}"):
        load_checkpoint(_checkpoint(tmp_path, format=0))
    with pytest.raises(CheckpointError, match="checkpoint 'model' must be a dict, got list"):
        load_checkpoint(_checkpoint(tmp_path, model=[]))
    other = tiny(width=16).state_dict()
    with pytest.raises(CheckpointError, match=r"not those of its stored model config .*shape: "):
        load_model(_checkpoint(tmp_path, model=other))
    with pytest.raises(CheckpointError, match=r"missing: block\."):
        load_model(_checkpoint(tmp_path, model={"embedding.weight": torch.zeros(10, 8)}))
    with pytest.raises(CheckpointError, match=r"is a folder, not a checkpoint file \(it holds last.pt: pass that\)"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="path must be a checkpoint file path"):
        load_checkpoint(None)


def test_run_load_rejects_a_task_of_another_configuration(tmp_path):
    path = _checkpoint(tmp_path)
    with pytest.raises(ConfigError, match=r"task 'sudoku' has vocab_size 10; .*|has num_classes 10; the model of"):
        Run.load(path, task=get_task("sudoku"))
    with pytest.raises(ConfigError, match="task must be a deqloop.tasks.Task, got str"):
        Run.load(path, task="prefix_sums")


# -- the command line --------------------------------------------------------------------------

@pytest.mark.parametrize("argv, fragment", [
    (["eval", "/no/such.pt"], "no checkpoint at '/no/such.pt'"),
    (["analyze", "/no/such.pt"], "no checkpoint at '/no/such.pt'"),
    (["plot", "/no/such"], "no metrics.jsonl there"),
    (["train", "--width", "-1"], "width must be an integer ≥ 1, got -1"),
    (["train", "--task", "maze"], "unknown task 'maze'"),
    (["eval", "x.pt", "--iters", "a,b"], "--iters"),
])
def test_cli_reports_bad_input_in_one_line(argv, fragment, capsys):
    with pytest.raises(SystemExit) if argv[-1] == "a,b" else _nothing():
        assert main(argv) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_every_input_error_is_a_library_error():
    assert issubclass(InputError, DeqloopError) and issubclass(InputError, ValueError)
    assert issubclass(InputTypeError, InputError) and issubclass(InputTypeError, TypeError)
