"""LoopedDEQ solved to its equilibrium: outputs, gradients, overrides, determinism."""

from __future__ import annotations

import copy
import io
import itertools
import warnings

import pytest
import torch

from deqloop import LoopedDEQ, LoopOutput
from deqloop.adjoint import BackwardWarning
from deqloop.errors import ConfigError, ConfigKeyError, InputError
from deqloop.model import BACKWARDS, NORMS, RECALLS, SOLVE_SETTINGS, LoopedDEQConfig
from deqloop.solvers import BatchedMap, solve


def tiny(**overrides) -> LoopedDEQ:
    kwargs = dict(vocab_size=5, num_classes=3, grid=(6,), width=16, heads=2, max_iter=8)
    kwargs.update(overrides)
    return LoopedDEQ(**kwargs)


def contractive(model: LoopedDEQ, factor: float = 0.1) -> LoopedDEQ:
    """Shrink W_z of an external-recall model so the loop map is a strong contraction."""
    with torch.no_grad():
        model.block.inject.w_z.weight.mul_(factor)
    return model


@pytest.mark.parametrize("grid", [(6,), (3, 4)])
def test_output_shapes_and_dtypes(grid):
    model = tiny(grid=grid, attention="local", window=3)
    x = torch.randint(0, 5, (2, *grid))
    out = model(x)
    assert isinstance(out, LoopOutput)
    assert out.logits.shape == (2, *grid, 3) and out.logits.dtype == torch.float32
    assert out.z.shape == (2, *grid, 16) and out.z.dtype == torch.float32
    sol = out.solution
    assert sol.iterations.shape == (2,) and sol.iterations.dtype == torch.long
    assert torch.equal(out.iterations, sol.iterations)
    assert sol.converged.shape == (2,) and sol.residual.dtype == torch.float32
    # the values: the configured solve (anderson from e, rtol 1e-4, 8 evaluations) run directly;
    # the implicit backward hands on f(z*), re-evaluated with autograd, and its readout
    with torch.no_grad():
        e = model.embed(x)
        ref = solve(BatchedMap(model.step, e), e, "anderson", rtol=1e-4, max_iter=8)
        fz = model.step(ref.z, e)
    assert torch.equal(sol.iterations, ref.iterations) and torch.equal(sol.converged, ref.converged)
    torch.testing.assert_close(sol.z, ref.z)
    torch.testing.assert_close(out.z.detach(), fz)
    torch.testing.assert_close(out.logits.detach(), model.readout(fz))


def test_float64_model_keeps_float64():
    model = tiny().double()
    out = model(torch.randint(0, 5, (2, 6)))
    assert out.z.dtype == torch.float64 and out.logits.dtype == torch.float64


def test_sequence_model_runs_longer_than_trained():
    model = tiny(grid=(8,), attention="local", window=5)
    x = torch.randint(0, 5, (2, 64))
    with torch.no_grad():
        out = model(x, max_iter=4)
        e = model.embed(x)
        ref = solve(BatchedMap(model.step, e), e, "anderson", rtol=1e-4, max_iter=4)
    assert out.logits.shape == (2, 64, 3)
    torch.testing.assert_close(out.logits, model.readout(ref.z))


@pytest.mark.parametrize(
    "recall, norm, backward", list(itertools.product(RECALLS, NORMS, BACKWARDS))
)
def test_every_variant_trains(recall, norm, backward):
    model = tiny(grid=(4,), width=8, recall=recall, norm=norm, backward=backward,
                 solver="picard" if backward == "unrolled" else "anderson", max_iter=4,
                 backward_options={"max_iter": 5} if backward == "implicit" else {})
    x = torch.randint(0, 5, (2, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BackwardWarning)  # 5 adjoint iterations rarely converge
        out = model(x)
        out.logits.square().mean().backward()
    assert torch.isfinite(out.logits).all()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(torch.isfinite(g).all() for g in grads.values() if g is not None)
    assert grads["head.out.weight"] is not None
    block = [g for n, g in grads.items() if n.startswith("block.")]
    if backward == "none":
        assert all(g is None for g in block)
    elif backward != "unrolled":  # unrolled may return z0 itself when no iterate improved on it
        assert any(g is not None and g.abs().sum() > 0 for g in block)
    if backward in ("phantom", "truncated"):  # both: one step with autograd from the detached answer
        got = {n: None if g is None else g.clone() for n, g in grads.items()}
        model.zero_grad(set_to_none=True)
        e = model.embed(x)
        model.readout(model.step(out.solution.z, e)).square().mean().backward()
        for name, p in model.named_parameters():
            if p.grad is None:
                assert got[name] is None, name
            else:
                torch.testing.assert_close(got[name], p.grad, msg=name)


def test_recall_none_reaches_the_same_fixed_point_for_different_inputs():
    torch.manual_seed(2)  # an initialization whose map converges from zeros
    model = tiny(recall="none", norm="post", width=8).double()
    x1 = torch.randint(0, 5, (3, 6))
    x2 = (x1 + 1) % 5
    kw = dict(init="zeros", max_iter=200, rtol=1e-9)
    with torch.no_grad():
        out1, out2 = model(x1, **kw), model(x2, **kw)
    assert bool(out1.solution.converged.all()) and bool(out2.solution.converged.all())
    assert torch.equal(out1.z, out2.z)
    assert torch.equal(out1.logits, out2.logits)
    # An input-injecting model started the same way tells them apart.
    model = tiny(recall="internal", norm="post", width=8).double()
    with torch.no_grad():
        assert not torch.allclose(model(x1, **kw).z, model(x2, **kw).z)


@pytest.mark.parametrize("norm", ["post", "sandwich"])
def test_implicit_gradients_match_finite_differences(norm):
    torch.manual_seed(3)
    model = contractive(tiny(grid=(4,), width=8, recall="external", norm=norm).double())
    x = torch.randint(0, 5, (2, 4))
    weights = torch.randn(2, 4, 3, dtype=torch.float64)
    kw = dict(solver="anderson", max_iter=100, rtol=1e-13,
              backward_options=dict(method="anderson", rtol=1e-12, max_iter=100))

    def loss() -> torch.Tensor:
        out = model(x, **kw)
        assert bool(out.solution.converged.all())
        return (out.logits * weights).sum()

    params = [p for p in model.parameters()]
    grads = torch.autograd.grad(loss(), params)
    eps = 1e-6
    for trial in range(2):  # random directions through all parameters at once
        direction = [torch.randn_like(p) for p in params]
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.add_(eps * d)
            up = loss()
            for p, d in zip(params, direction):
                p.sub_(2 * eps * d)
            down = loss()
            for p, d in zip(params, direction):
                p.add_(eps * d)
        fd = (up - down) / (2 * eps)
        analytic = sum((g * d).sum() for g, d in zip(grads, direction))
        torch.testing.assert_close(analytic, fd, rtol=1e-6, atol=1e-8)
    # and one coordinate of the embedding, which enters only through the injection W_e e
    row = int(x[0, 0])
    with torch.no_grad():
        model.embedding.weight[row, 0] += eps
        up = loss()
        model.embedding.weight[row, 0] -= 2 * eps
        down = loss()
        model.embedding.weight[row, 0] += eps
    torch.testing.assert_close(grads[0][row, 0], (up - down) / (2 * eps), rtol=1e-6, atol=1e-8)


def test_same_seed_same_outputs_and_state_dict_round_trip():
    def build() -> LoopedDEQ:
        torch.manual_seed(7)
        return tiny(grid=(3, 4), init="noise")

    x = torch.randint(0, 5, (2, 3, 4))
    a, b = build(), build()
    torch.manual_seed(1)
    out_a = a(x)
    torch.manual_seed(1)
    out_b = b(x)
    assert torch.equal(out_a.logits, out_b.logits)

    c = LoopedDEQ(LoopedDEQConfig.from_dict(a.config.to_dict()))
    c.load_state_dict(a.state_dict())
    torch.manual_seed(1)
    assert torch.equal(c(x).logits, out_a.logits)


def test_per_call_overrides():
    model = tiny(max_iter=3, rtol=1e-12)
    x = torch.randint(0, 5, (2, 6))
    with torch.no_grad():
        short = model(x)
        long = model(x, max_iter=60, rtol=1e-5)
        picard = model(x, solver="picard", max_iter=2)
    assert short.solution.iterations.tolist() == [3, 3] and not short.solution.converged.any()  # rtol 1e-12
    assert bool(long.solution.converged.all()) and float(long.solution.residual.max()) <= 1e-5
    assert int(long.solution.iterations.min()) > 3
    assert bool((long.solution.residual < short.solution.residual).all())
    assert picard.solution.method == "picard" and picard.solution.iterations.tolist() == [2, 2]
    with torch.no_grad():  # two evaluations of f from z₀ = e measure z₀ and z₁: the answer is the better one
        e = model.embed(x)
        z1 = model.step(e, e)
        z2 = model.step(z1, e)
        rel = lambda fz, z: (fz - z).flatten(1).norm(dim=1) / fz.flatten(1).norm(dim=1)  # noqa: E731
        best = torch.where((rel(z2, z1) < rel(z1, e))[:, None, None], z1, e)
        torch.testing.assert_close(picard.z, best)
        torch.testing.assert_close(picard.solution.residual, torch.minimum(rel(z2, z1), rel(z1, e)))
    assert model.config.solve.max_iter == 3  # defaults unchanged


def test_overriding_the_solver_or_backward_drops_the_configured_options():
    model = tiny(solver="anderson", solver_options={"m": 3}, backward="phantom",
                 backward_options={"steps": 2, "tau": 0.5})
    x = torch.randint(0, 5, (2, 6))
    out = model(x, solver="picard", backward="implicit", max_iter=20)  # m, steps, tau belong to the others
    out.logits.sum().backward()
    assert out.solution.method == "picard"
    assert model.solve_settings(backward="implicit").backward_options == {}
    assert model.solve_settings(backward="phantom").backward_options == {"steps": 2, "tau": 0.5}
    assert model.solve_settings(backward="implicit", backward_options={"max_iter": 5}).backward_options == {"max_iter": 5}
    assert model.solve_settings(solver="broyden").solver_options == {}


def test_unknown_override_is_a_type_error_that_lists_the_allowed_ones():
    model = tiny()
    x = torch.randint(0, 5, (1, 6))
    with pytest.raises(ConfigKeyError, match=r"unknown key\(s\) \['tol'\]; allowed: init, init_scale, solver, backward"):
        model(x, tol=1e-3)
    assert isinstance(ConfigKeyError("x"), TypeError)
    assert SOLVE_SETTINGS[:4] == ("init", "init_scale", "solver", "backward")
    with pytest.raises(ConfigError, match=r"rtol must be a finite number in \[0, inf\), got -1.0"):
        model(x, rtol=-1.0)
    # The unrolled backward iterates plainly whatever the configured solver (here anderson) says.
    with torch.no_grad():
        assert model(x, backward="unrolled").solution.method == "picard"
    assert model.solve_settings(backward="unrolled").method == "picard"
    assert model.solve_settings().method == "anderson"


def test_solver_and_backward_options_reach_the_solver():
    model = tiny()
    x = torch.randint(0, 5, (2, 6))
    with torch.no_grad():
        out = model(x, solver_options={"m": 2, "trace": True}, max_iter=5)
    assert out.solution.trace is not None and out.solution.trace.shape[1] == 2
    with pytest.raises(TypeError, match="'bogus'"):
        model(x, solver_options={"bogus": 1})
    with pytest.raises(ValueError, match=r"solver_options \['rtol'\] are settings of their own"):
        model(x, solver_options={"rtol": 1e-3})


def test_adaptive_compute_matches_solving_each_example_alone():
    torch.manual_seed(1)
    model = tiny(recall="external", norm="post", width=8, grid=(5,)).double()
    model = contractive(model, 0.5)
    x = torch.randint(0, 5, (4, 5))
    kw = dict(solver="anderson", max_iter=100, rtol=1e-8)
    with torch.no_grad():
        batch = model(x, **kw).solution.iterations
        alone = torch.cat([model(x[i : i + 1], **kw).solution.iterations for i in range(4)])
    assert (batch - alone).abs().max() <= 1  # rounding may move a threshold crossing by one
    assert len(set(batch.tolist())) > 1  # harder examples spend more


def test_bf16_autocast_keeps_a_float32_state():
    model = tiny(grid=(3, 4), recall="internal", norm="post")
    x = torch.randint(0, 5, (2, 3, 4))
    with torch.autocast("cpu", dtype=torch.bfloat16), warnings.catch_warnings():
        warnings.simplefilter("ignore", BackwardWarning)
        out = model(x, max_iter=5, backward_options={"max_iter": 5})
        assert out.z.dtype == torch.float32
        out.logits.float().square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert model.block.mlp.fc.weight.grad.abs().sum() > 0
    with torch.no_grad():  # the same solve in float32: bfloat16's 8-bit mantissa over 5 iterations
        ref = model(x, max_iter=5)
    torch.testing.assert_close(out.logits.detach().float(), ref.logits, rtol=0, atol=0.15)


def test_truncated_backward_is_the_progressive_loss_path():
    # A no-grad solve of at most n iterations, then k iterations with gradient from its answer.
    model = tiny(recall="internal", norm="post")
    x = torch.randint(0, 5, (2, 6))
    out = model(x, solver="picard", backward="truncated", max_iter=3, rtol=0.0,
                backward_options={"grad_steps": 2})
    e = model.embed(x)
    z = model.step(model.step(out.solution.z, e), e)
    torch.testing.assert_close(out.z, z)
    out.logits.sum().backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.readout(z).sum().backward()  # the two steps from the detached answer, by hand
    for name, p in model.named_parameters():
        torch.testing.assert_close(got[name], p.grad, msg=name)
    assert got["block.mlp.fc.weight"].abs().sum() > 0


@pytest.mark.slow
def test_compiled_step_matches_eager():
    torch.manual_seed(0)
    eager = tiny(grid=(3, 4), attention="local", window=3)
    compiled = LoopedDEQ(eager.config, compile=True)
    compiled.load_state_dict(eager.state_dict())
    assert set(compiled.state_dict()) == set(eager.state_dict())
    x = torch.randint(0, 5, (2, 3, 4))
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, solver="picard").logits,
                                   eager(x, solver="picard").logits, rtol=1e-4, atol=1e-5)
    copy.deepcopy(compiled)  # compiled code is dropped from copies and pickles, rebuilt on use
    torch.save(compiled, io.BytesIO())


# -- construction, checks and utilities ------------------------------------------------------------


def test_building_from_an_architecture_with_solve_settings():
    from deqloop.model import Architecture

    arch = Architecture(vocab_size=5, num_classes=3, grid=(6,), width=16, heads=2, attention_backend="math")
    model = LoopedDEQ(arch, max_iter=7, rtol=1e-5)
    assert model.config.arch == arch and model.block.attn.backend == "math"
    assert model.config.solve.max_iter == 7 and model.config.solve.rtol == 1e-5
    assert LoopedDEQ(arch).config.solve == LoopedDEQConfig(arch).solve  # no keywords: the defaults


def test_embed_rejects_non_integer_token_ids():
    model = tiny()
    for dtype in (torch.bool, torch.float32, torch.complex64):
        with pytest.raises(InputError, match="integer"):
            model.embed(torch.zeros(2, 6, dtype=dtype))
    with pytest.raises(InputError):
        model.embed(torch.zeros(2, 6, 1, dtype=torch.long))


def test_trajectory_of_zero_iterations_is_empty_and_negative_is_an_error():
    model = tiny()
    x = torch.randint(0, 5, (2, 6))
    assert list(model.trajectory(x, 0)) == []
    with pytest.raises(InputError, match="iters"):
        model.trajectory(x, -1)


def test_forward_passes_atol_and_throw_to_the_solver():
    from deqloop.solvers import SolverError

    model = tiny(solver="picard")
    x = torch.randint(0, 5, (2, 6))
    with torch.no_grad():
        loose = model(x, max_iter=8, rtol=0.0, atol=1e9, backward="none")
        assert loose.solution.iterations.tolist() == [1, 1] and bool(loose.solution.converged.all())
        assert model(x, max_iter=3, rtol=0.0, backward="none").solution.iterations.tolist() == [3, 3]
        with pytest.raises(SolverError):
            model(x, max_iter=3, rtol=0.0, throw=True, backward="none")


def test_compiled_step_goes_through_torch_compile_once(monkeypatch):
    compiled = []

    def fake_compile(fn, **options):
        compiled.append(fn)
        return lambda *args: fn(*args) + 1.0  # recognisably not the eager block

    monkeypatch.setattr(torch, "compile", fake_compile)
    torch.manual_seed(0)
    eager = tiny()
    model = LoopedDEQ(eager.config, compile=True)
    model.load_state_dict(eager.state_dict())
    assert model._compiled_block is None
    z = torch.randn(2, 6, 16)
    for _ in range(2):
        torch.testing.assert_close(model.step(z, z), eager.step(z, z) + 1.0)
    assert compiled == [model.block.forward]


def test_pickling_drops_the_compiled_block():
    import pickle

    torch.manual_seed(0)
    model = tiny()
    model._compiled_block = lambda *args: None  # stands in for compiled code, which does not pickle
    clone = pickle.loads(pickle.dumps(model))
    assert clone._compiled_block is None and model._compiled_block is not None
    z = torch.randn(2, 6, 16)
    torch.testing.assert_close(clone.step(z, z), model.block(z, z, *model._geometry((6,), z.device)))


def test_num_parameters_and_repr():
    model = tiny(width=16, heads=2, mlp_ratio=2, recall="external", norm="pre", qk_norm=False)
    D, V, C, H = 16, 5, 3, 32
    expected = (V * D  # embedding
                + 2 * D * D + 2 * D  # external recall W_z, b_z, W_e, b_e
                + 3 * D * D + 3 * D + D * D + D  # attention qkv, proj, with biases
                + D  # the block's pre-norm, used by both sublayers
                + D * H + H + H * D + D  # MLP
                + D + D * D + D + D * C + C)  # readout: norm, fc, out
    assert model.num_parameters() == expected == sum(p.numel() for p in model.parameters())
    assert "recall='external', norm='pre'" in repr(model) and "max_iter=8" in repr(model)
    earlier = tiny(width=16, heads=2, mlp_ratio=2, recall="external", norm="pre", qk_norm=False, bias=False,
                   norm_weights="per_sublayer")
    assert earlier.num_parameters() == expected - 2 * D - 4 * D + D  # no biases, a pre-norm per sublayer
