"""Generated bad input at every public entry point (Hypothesis, derandomized).

Each case either succeeds with a correct answer or raises one of the library's documented errors
(a :class:`~deqloop.errors.DeqloopError`) whose message names the argument — never an
``IndexError``/``RuntimeError`` from inside torch, never a silent wrong answer. Tiny models
(width 8) keep the whole file at a few seconds; ``CASES`` lists how many examples each entry
point gets.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deqloop import LoopedDEQ, fixed_point, solve
from deqloop.analysis import analyze
from deqloop.checkpoint import FORMAT, CheckpointError, load_checkpoint, load_model, save_checkpoint
from deqloop.cli import main
from deqloop.errors import DeqloopError
from deqloop.tasks import get_task
from deqloop.train.config import TrainConfig

CASES = {"forward": 400, "solve": 300, "fixed_point": 200, "z0": 150, "analyze": 60, "make": 200,
         "train_config": 250, "checkpoint": 80, "cli": 60}  # 1,700 in all


def cases(name: str):
    return settings(derandomize=True, deadline=None, max_examples=CASES[name], database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@contextmanager
def library_error_naming(*names: str):
    """The block succeeds, or raises a DeqloopError whose message names one of ``names``."""
    try:
        yield
    except DeqloopError as e:
        assert any(n in str(e) for n in names), f"{type(e).__name__} does not name {names}: {e}"


VOCAB, WIDTH = 6, 8
torch.manual_seed(0)
MODEL_1D = LoopedDEQ(vocab_size=VOCAB, num_classes=3, grid=(4,), width=WIDTH, heads=2, max_iter=2, solver="picard")
MODEL_2D = LoopedDEQ(vocab_size=VOCAB, num_classes=3, grid=(3, 3), width=WIDTH, heads=1, max_iter=2, solver="picard")

DTYPES = [torch.long, torch.int32, torch.int16, torch.uint8, torch.bool, torch.float32, torch.float64, torch.complex64]


@st.composite
def token_tensors(draw):
    """Token ids of random rank, sizes (some empty), dtype and range (some outside the vocab)."""
    rank = draw(st.integers(0, 4))
    shape = tuple(draw(st.lists(st.integers(0, 5), min_size=rank, max_size=rank)))
    dtype = draw(st.sampled_from(DTYPES))
    low = draw(st.integers(-3, VOCAB + 2))
    high = draw(st.integers(low, VOCAB + 4))
    if dtype == torch.uint8:
        low, high = max(low, 0), max(high, 0)
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    x = torch.randint(low, high + 1, shape, generator=gen)
    if draw(st.booleans()) and x.numel():
        x.view(-1)[0] = draw(st.sampled_from([-(2**40), 2**40, VOCAB, -1]))
    return x.to(dtype) if dtype != torch.bool else x > 0


def valid_tokens(x: torch.Tensor, axes: int) -> bool:
    return (x.dtype in (torch.long, torch.int32, torch.int16, torch.uint8) and x.dim() == axes + 1
            and x.numel() > 0 and int(x.min()) >= 0 and int(x.max()) < VOCAB)


@cases("forward")
@given(x=token_tensors(), two_d=st.booleans(), entry=st.sampled_from(["forward", "embed", "trajectory"]))
def test_model_entry_points_on_generated_token_ids(x, two_d, entry):
    model = MODEL_2D if two_d else MODEL_1D
    axes = 2 if two_d else 1
    with torch.no_grad(), library_error_naming("x"):
        if entry == "forward":
            out = model(x).logits
        elif entry == "embed":
            out = model.embed(x)
        else:
            out = [logits for _, logits in model.trajectory(x, 1)][0]
        assert valid_tokens(x, axes), f"accepted bad token ids {x.dtype} {tuple(x.shape)}"
        assert out.shape[:-1] == x.shape and bool(torch.isfinite(out).all())


@st.composite
def states(draw, allow_bad: bool = True):
    rank = draw(st.integers(0 if allow_bad else 1, 3))
    shape = tuple(draw(st.lists(st.integers(0 if allow_bad else 1, 3), min_size=rank, max_size=rank)))
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.float16, torch.long] if allow_bad
                                 else [torch.float32, torch.float64]))
    z = torch.randn(shape).to(dtype) if dtype.is_floating_point else torch.zeros(shape, dtype=dtype)
    if allow_bad and z.numel() and dtype.is_floating_point and draw(st.booleans()):
        z.view(-1)[draw(st.integers(0, z.numel() - 1))] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    return z


MAPS = {
    "half": lambda z: 0.5 * z,
    "tanh": lambda z: torch.tanh(0.5 * z + 1),
    "shrink": lambda z: z.flatten(1)[:, :1] if z.dim() > 1 and z[0].numel() > 1 else z[:, None],
    "double": lambda z: z.double() if z.dtype != torch.float64 else z.float(),
    "int": lambda z: z.long(),
    "none": lambda z: None,
    "number": lambda z: 1.0,
}


def valid_state(z: torch.Tensor) -> bool:
    return (z.dtype in (torch.float32, torch.float64, torch.float16) and z.dim() >= 1 and z.shape[0] > 0
            and bool(torch.isfinite(z).all()))


@cases("solve")
@given(z0=states(), f=st.sampled_from(sorted(MAPS) + ["not callable"]),
       method=st.sampled_from(["anderson", "picard", "broyden", "torchdeq:anderson"]))
def test_solve_on_generated_states_and_maps(z0, f, method):
    fn = MAPS.get(f, 3)
    with library_error_naming("z0", "f"):
        sol = solve(fn, z0, method, max_iter=30)
        assert valid_state(z0) and f in ("half", "tanh"), f"accepted {f} from {z0.dtype} {tuple(z0.shape)}"
        assert sol.z.shape == z0.shape and sol.z.dtype == z0.dtype
        if bool(sol.converged.all()):
            assert torch.allclose(fn(sol.z).double(), sol.z.double(), atol=1e-2)


@cases("fixed_point")
@given(z0=states(), f=st.sampled_from(sorted(MAPS)),
       backward=st.sampled_from(["implicit", "phantom", "unrolled", "none"]))
def test_fixed_point_on_generated_states_and_maps(z0, f, backward):
    fn = MAPS[f]
    with library_error_naming("z0", "f"):
        z, _ = fixed_point(fn, z0, backward=backward, max_iter=20)
        assert valid_state(z0) and f in ("half", "tanh"), f"accepted {f} from {z0.dtype} {tuple(z0.shape)}"
        assert z.shape == z0.shape


@cases("z0")
@given(z0=states(), grid=st.integers(1, 6), batch=st.integers(1, 3))
def test_forward_on_generated_initial_states(z0, grid, batch):
    x = torch.randint(0, VOCAB, (batch, grid))
    with torch.no_grad(), library_error_naming("z0"):
        out = MODEL_1D(x, z0=z0)
        assert valid_state(z0) and z0.shape == (batch, grid, WIDTH) and z0.dtype == torch.float32
        assert bool(torch.isfinite(out.logits).all())


@cases("analyze")
@given(x=token_tensors())
def test_analyze_on_generated_token_ids(x):
    with library_error_naming("x"):
        report = analyze(MODEL_1D, x, measures=(), inits=("embed",), progress=False, max_iter=2)
        assert valid_tokens(x, 1) and report.batch == x.shape[0]


ANY = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
                st.text(max_size=4), st.lists(st.integers(-2, 3), max_size=3), st.dictionaries(st.text(max_size=2), st.integers(), max_size=2))


@cases("make")
@given(split=st.one_of(st.sampled_from(["train", "val", "hard"]), ANY), n=ANY, seed=ANY)
def test_task_make_on_generated_arguments(split, n, seed):
    task = get_task("prefix_sums", length=4, hard_length=6)
    with library_error_naming("split", "n", "seed"):
        x, y = task.make(split, n, seed=seed)
        assert split in ("train", "val", "hard") and isinstance(n, int) and n >= 0 and seed >= 0
        assert x.shape == y.shape and len(x) == n


TRAIN_FIELDS = ["width", "heads", "max_iter", "batch_size", "lr", "rtol", "seed", "eval_iters", "solver_options",
                "backward_options", "qk_norm", "resume", "out", "steps", "warmup_steps", "recall", "norm", "loss",
                "solver", "threads", "init", "grad_clip", "mlp_ratio", "gate", "task"]


@cases("train_config")
@given(field=st.sampled_from(TRAIN_FIELDS), value=ANY)
def test_train_config_on_generated_values(field, value):
    with library_error_naming(field, field.replace("_", " "), "task", "steps", "heads", "width", "hidden width"):
        TrainConfig.from_flat(**{field: value})


@pytest.fixture(scope="module")
def good_state():
    return {"format": FORMAT, "model_config": MODEL_1D.config.to_dict(), "model": MODEL_1D.state_dict()}


@cases("checkpoint")
@given(drop=st.sets(st.sampled_from(["format", "model_config", "model"])),
       fmt=st.one_of(st.just(FORMAT), ANY), weights=st.sampled_from(["same", "other", "partial", "junk"]),
       vocab=st.sampled_from([VOCAB, VOCAB + 1]))
def test_checkpoint_loading_on_generated_states(good_state, tmp_path, drop, fmt, weights, vocab):
    state = dict(good_state, format=fmt)
    other = LoopedDEQ(vocab_size=vocab, num_classes=3, grid=(4,), width=WIDTH * (2 if weights == "other" else 1),
                      heads=2)
    state["model"] = {"same": other.state_dict(), "other": other.state_dict(),
                      "partial": dict(list(other.state_dict().items())[:3]), "junk": [1, 2]}[weights]
    for key in drop:
        state.pop(key, None)
    path = save_checkpoint(tmp_path / "c.pt", state)
    try:
        model = load_model(path)
    except CheckpointError as e:
        assert str(path) in str(e)
        return
    assert load_checkpoint(path)["model_config"] == good_state["model_config"]
    assert weights == "same" and vocab == VOCAB and model.arch.vocab_size == VOCAB


CLI = st.lists(st.sampled_from(["--n", "-1", "0", "x", "--seed", "--iters", "1,a", "--max-iter", "--width",
                                "--task", "maze", "--out", "/no/such.pt", "--band", "--dpi", "--threads"]),
               max_size=5)


@cases("cli")
@given(command=st.sampled_from(["eval", "analyze", "plot", "train", "demo"]), args=CLI)
def test_cli_on_generated_arguments(command, args, capsys):
    argv = [command, *(["/no/such.pt"] if command in ("eval", "analyze", "plot") else []), *args]
    if command in ("train", "demo") and not any(a.startswith("-") for a in args):
        argv.append("--bogus")  # never start a real run
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own usage errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, (argv, err)
    assert "Traceback" not in err and err.strip().count("\n") < 30
