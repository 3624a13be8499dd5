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
