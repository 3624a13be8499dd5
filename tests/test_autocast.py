"""Under bf16 autocast (CPU autocast here; CUDA's follows the same rules), the solvers' own
arithmetic stays in float32: a map that computes in float32 is solved exactly as without autocast."""

from __future__ import annotations

import math

import pytest
import torch

from deqloop import Implicit, fixed_point, solve
from helpers import contractive_tanh

METHODS = ("picard", "anderson", "broyden")


def float32_map(seed: int = 0):
    f, _ = contractive_tanh(6, 12, torch.linspace(0.3, 0.9, 6), dtype=torch.float32, seed=seed)

    def g(z: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", enabled=False):  # the map's own precision: float32
            return f(z)

    return g


@pytest.mark.parametrize("method", METHODS)
def test_solvers_keep_float32_linear_algebra_under_bf16_autocast(method):
    f = float32_map()
    z0 = torch.zeros(6, 12)
    plain = solve(f, z0, method=method, rtol=1e-6, max_iter=60)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = solve(f, z0, method=method, rtol=1e-6, max_iter=60)
    assert plain.converged.all()
    assert torch.equal(mixed.z, plain.z)  # Anderson's Gram row, Broyden's products: float32 both times
    assert torch.equal(mixed.iterations, plain.iterations)


@pytest.mark.parametrize("method", METHODS)
def test_implicit_backward_solve_under_bf16_autocast(method):
    W = torch.full((12,), 0.5, requires_grad=True)
    f0 = float32_map(1)
    f = lambda z: f0(z) * W  # noqa: E731
    grads = []
    for amp in (False, True):
        W.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            z, sol = fixed_point(f, torch.zeros(6, 12), method=method, rtol=1e-6, max_iter=60,
                                 backward=Implicit(method=method, rtol=1e-8, max_iter=60))
        z.square().sum().backward()  # as the trainer does: backward outside autocast
        grads.append(W.grad.clone())
    assert torch.equal(grads[0], grads[1])


@pytest.mark.parametrize("method", METHODS)
def test_a_training_step_under_bf16_autocast(tmp_path, method):
    from deqloop.train import Trainer
    from test_train import tiny_config

    c = tiny_config(tmp_path, loss="equilibrium", depth_offset=None, solver=method, max_iter=8, amp="bf16",
                    backward="implicit", steps=4)
    trainer = Trainer(c)
    assert trainer.amp is torch.bfloat16
    metrics = trainer.step(0)
    assert not metrics.get("skipped") and math.isfinite(metrics["loss"])


def contracting_model(**solve):
    """A float32 model whose loop map contracts (a large MLP output bias, as tests/test_analysis.py)."""
    from deqloop import LoopedDEQ

    torch.manual_seed(0)
    model = LoopedDEQ(vocab_size=5, num_classes=3, grid=(6,), width=16, heads=2, recall="internal", max_iter=60,
                      rtol=1e-5, **solve)
    with torch.no_grad():
        model.block.mlp.proj.bias.normal_(0, 1.0)
    return model, torch.randint(0, 5, (8, 6), generator=torch.Generator().manual_seed(0))


def test_solves_run_their_map_in_float32_under_bf16_autocast_by_default(monkeypatch):
    import warnings

    from deqloop.solvers import loop

    monkeypatch.setattr(loop, "_WARNED", set())
    model, x = contracting_model()
    with torch.no_grad():
        plain = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            with warnings.catch_warnings():
                warnings.simplefilter("error", loop.PrecisionWarning)  # the map computes in float32: rtol 1e-5 holds
                mixed = model(x)
            with pytest.warns(UserWarning, match=r"rtol 1e-05 raised to 0\.01"):
                rounded = model(x, precision="autocast")
    assert plain.solution.converged.all()
    assert torch.equal(mixed.z, plain.z) and torch.equal(mixed.solution.iterations, plain.solution.iterations)
    assert mixed.logits.dtype == torch.bfloat16  # the readout is the caller's autocast
    # in bf16 the map's rounding floors the residual far above 1e-5: only the raised rtol is reached
    assert rounded.solution.converged.all() and (rounded.solution.residual > 1e-4).all()
    assert (rounded.solution.residual <= 1e-2).all()


def test_evaluations_that_carry_gradients_keep_the_callers_autocast():
    model, x = contracting_model(backward="phantom", backward_options={"steps": 2})
    plain, plain_solved = model(x).z, model(x, backward="none").z
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = model(x).z
        solved = model(x, backward="none").z  # no gradient step: the float32 solve itself
    assert torch.equal(solved, plain_solved)
    assert mixed.requires_grad and not torch.allclose(mixed, plain, rtol=1e-5, atol=1e-6)  # phantom steps in bf16
    torch.testing.assert_close(mixed, plain, rtol=0.05, atol=0.05)
