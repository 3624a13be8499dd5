"""Equilibrium autograd: every backward mode against references, and failures reported."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from deqloop import fixed_point
from deqloop.adjoint import BACKWARD_MODES, Implicit, NoGrad, Phantom, Truncated, Unrolled, as_backward
from deqloop.adjoint import BackwardError, BackwardWarning
from deqloop.errors import ConfigError, ConfigKeyError, DeqloopError


class TanhLayer(nn.Module):
    """z ↦ tanh(W z + U x + b), contractive (‖W‖₂ = 0.8), float64."""

    def __init__(self, dim: int = 5, contraction: float = 0.8, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        W = torch.randn(dim, dim, generator=g, dtype=torch.float64)
        self.W = nn.Parameter(W / torch.linalg.matrix_norm(W, 2) * contraction)
        self.U = nn.Parameter(torch.randn(dim, dim, generator=g, dtype=torch.float64) / dim**0.5)
        self.b = nn.Parameter(0.1 * torch.randn(dim, generator=g, dtype=torch.float64))

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z @ self.W.T + x @ self.U.T + self.b)


def grads(layer, x, backward, method="anderson", **kw):
    layer.zero_grad()
    x = x.clone().requires_grad_()
    z, sol = fixed_point(lambda z: layer(z, x), torch.zeros_like(x), method, backward, **kw)
    loss = (z.sin() * torch.arange(1, z.shape[1] + 1, dtype=z.dtype)).sum()
    loss.backward()
    return torch.cat([p.grad.flatten() for p in layer.parameters()] + [x.grad.flatten()]), sol


def rel_err(a, b):
    return float((a - b).norm() / b.norm())


@pytest.fixture
def problem():
    return TanhLayer(), torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def test_implicit_matches_gradcheck(problem):
    layer, x = problem

    def fn(W, U, b, x):
        f = lambda z: torch.tanh(z @ W.T + x @ U.T + b)  # noqa: E731
        z, _ = fixed_point(f, torch.zeros_like(x), "anderson", "implicit", rtol=1e-14, max_iter=300,
                           backward_options=dict(rtol=1e-14, max_iter=300))
        return z

    inputs = tuple(t.detach().clone().requires_grad_() for t in (layer.W, layer.U, layer.b, x))
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("backward_method", ["picard", "anderson", "broyden"])
def test_implicit_matches_unrolled_through_a_converged_solve(problem, backward_method):
    layer, x = problem
    g_implicit, sol = grads(layer, x, "implicit", rtol=1e-13, max_iter=500,
                            backward_options=dict(method=backward_method, rtol=1e-13, max_iter=1000))
    g_unrolled, _ = grads(layer, x, "unrolled", method="picard", rtol=1e-13, max_iter=1000)
    assert rel_err(g_implicit, g_unrolled) < 1e-5
    assert sol.backward.calls == 1 and sol.backward.ok and sol.backward.nfe > 0
    assert float(sol.backward.residual.max()) <= 1e-13


def test_phantom_with_many_damped_steps_approaches_implicit(problem):
    layer, x = problem
    exact, _ = grads(layer, x, "implicit", rtol=1e-13, max_iter=500, backward_options=dict(rtol=1e-13, max_iter=500))
    errors = [rel_err(grads(layer, x, "phantom", rtol=1e-13, max_iter=500, backward_options=dict(steps=k, tau=0.5))[0], exact)
              for k in (1, 5, 20, 100)]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-8


def test_jacobian_free_is_one_step_through_f(problem):
    layer, x = problem
    g_phantom, sol = grads(layer, x, "phantom", rtol=1e-12, max_iter=300)
    layer.zero_grad()
    xr = x.clone().requires_grad_()
    z = layer(sol.z.detach(), xr)
    (z.sin() * torch.arange(1, 6, dtype=z.dtype)).sum().backward()
    manual = torch.cat([p.grad.flatten() for p in layer.parameters()] + [xr.grad.flatten()])
    torch.testing.assert_close(g_phantom, manual)


def test_truncated_backpropagates_through_the_last_k_steps(problem):
    layer, x = problem
    g, sol = grads(layer, x, "truncated", method="picard", rtol=0.0, max_iter=4, backward_options=dict(grad_steps=3))
    assert sol.nfe == 4 and (sol.iterations == 4).all()  # n = 4 iterations: sol.z is z_4
    layer.zero_grad()
    xr = x.clone().requires_grad_()
    z = sol.z.detach()
    for _ in range(3):
        z = layer(z, xr)
    (z.sin() * torch.arange(1, 6, dtype=z.dtype)).sum().backward()
    manual = torch.cat([p.grad.flatten() for p in layer.parameters()] + [xr.grad.flatten()])
    torch.testing.assert_close(g, manual)


def test_gradients_reach_initial_state_only_when_unrolled(problem):
    layer, x = problem
    z0 = torch.zeros_like(x).requires_grad_()
    z, _ = fixed_point(lambda z: layer(z, x), z0, "picard", "unrolled", rtol=0.0, max_iter=3)
    z.sum().backward()
    # d(sum z_3)/dz_0 through three plain steps, by autograd on the loop written out
    manual = torch.autograd.functional.vjp(lambda v: layer(layer(layer(v, x), x), x), z0.detach(),
                                           torch.ones_like(x))[1]
    assert manual.abs().min() > 0
    torch.testing.assert_close(z0.grad, manual)
    for backward in ("implicit", "phantom", "truncated"):  # z* does not depend on where the solve began
        z0 = torch.zeros_like(x).requires_grad_()
        z, _ = fixed_point(lambda z: layer(z, x), z0, "picard", backward, rtol=1e-10, max_iter=300)
        z.sum().backward()
        assert z0.grad is None, backward


def test_no_grad_returns_detached_fixed_point(problem):
    layer, x = problem
    with torch.no_grad():
        reference = torch.zeros_like(x)
        for _ in range(200):  # 0.8²⁰⁰: plain iteration to rounding
            reference = layer(reference, x)
        for backward in ("implicit", "phantom", "truncated", "unrolled", "none"):
            z, sol = fixed_point(lambda z: layer(z, x), torch.zeros_like(x),
                                 "picard" if backward == "unrolled" else "anderson", backward, rtol=1e-8,
                                 max_iter=300)
            assert not z.requires_grad
            assert sol.converged.all()
            # the fixed point itself: its residual, and the error bound r/(1 − c) of a c = 0.8 contraction
            torch.testing.assert_close(layer(z, x), z, rtol=0, atol=1e-7)
            torch.testing.assert_close(z, reference, rtol=0, atol=1e-6)


def test_failed_backward_solve_is_reported(problem):
    layer, x = problem
    with pytest.warns(BackwardWarning, match=r"did not converge for 3 of 3 samples"):
        g, sol = grads(layer, x, "implicit", rtol=1e-10, max_iter=200, backward_options=dict(method="picard", rtol=1e-14, max_iter=2))
    assert sol.backward.ok is False and not sol.backward.converged.any()
    assert issubclass(BackwardError, DeqloopError)
    with pytest.raises(BackwardError, match="did not converge"):
        grads(layer, x, "implicit", rtol=1e-10, max_iter=200,
              backward_options=dict(method="picard", rtol=1e-14, max_iter=2, throw=True))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        grads(layer, x, "implicit", rtol=1e-10, max_iter=200)


def test_gradients_reach_module_parameters_and_closure_inputs():
    torch.manual_seed(0)
    lin = nn.Linear(4, 4).double()
    with torch.no_grad():
        lin.weight.mul_(0.3)
    e = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    z, _ = fixed_point(lambda z: torch.tanh(lin(z) + e), torch.zeros(2, 4, dtype=torch.float64), rtol=1e-12,
                       max_iter=200, backward_options=dict(rtol=1e-12, max_iter=200))
    z.sum().backward()
    # The implicit function theorem, densely: with D = diag(1 − z*²) and J = D W, the cotangent
    # at the pre-activation is a = D (I − Jᵀ)⁻¹ 1; then dL/de = a, dL/db = Σ a, dL/dW = Σ a z*ᵀ.
    W, zs = lin.weight.detach(), z.detach()
    a = torch.stack([torch.diag(1 - zs[i] ** 2) @ torch.linalg.solve(
        torch.eye(4, dtype=torch.float64) - (torch.diag(1 - zs[i] ** 2) @ W).T, torch.ones(4, dtype=torch.float64))
        for i in range(2)])
    tol = dict(rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(e.grad, a, **tol)
    torch.testing.assert_close(lin.bias.grad, a.sum(0), **tol)
    torch.testing.assert_close(lin.weight.grad, a.T @ zs, **tol)


def test_bad_backward_arguments():
    f = lambda z: 0.5 * z  # noqa: E731
    z0 = torch.ones(2, 3)
    with pytest.raises(ConfigError, match=r"unknown backward 'adjoint'; allowed: 'implicit', 'phantom', 'unrolled', 'truncated', 'none'"):
        fixed_point(f, z0, backward="adjoint")
    with pytest.raises(ConfigKeyError, match=r"backward='phantom' got unknown key\(s\) \['k'\]; allowed: steps, tau"):
        fixed_point(f, z0, backward="phantom", backward_options=dict(k=2))
    assert issubclass(ConfigKeyError, TypeError)
    with pytest.raises(ConfigError, match=r"phantom tau must be a finite number in \(0, 1\], got 0.0"):
        fixed_point(f, z0, backward="phantom", backward_options=dict(tau=0.0))
    with pytest.raises(ConfigError, match=r"cannot run method='anderson' \(leave the method unset or use 'picard'\)"):
        fixed_point(f, z0, "anderson", backward="unrolled")
    with pytest.raises(ConfigError, match="grad_steps must be an integer ≥ 1, got 0"):
        fixed_point(f, z0, backward="truncated", backward_options=dict(grad_steps=0))
    with pytest.raises(ConfigError, match=r"backward options .* given with a Phantom object"):
        fixed_point(f, z0, backward=Phantom(steps=2), backward_options=dict(tau=0.5))
    with pytest.raises(ConfigError, match="is a class; pass an instance"):
        fixed_point(f, z0, backward=Phantom)


def test_unrolled_iterates_plainly_when_the_method_is_unset():
    f = lambda z: 0.5 * z + 1.0  # noqa: E731
    z0 = torch.zeros(2, 3, requires_grad=True)
    for method in (None, "picard"):
        z, sol = fixed_point(f, z0, method, backward="unrolled", rtol=0.0, max_iter=3)
        assert sol.method == "picard" and (sol.iterations == 3).all()
        torch.testing.assert_close(z, torch.full((2, 3), 1.75))
        assert z.requires_grad


def test_backward_objects_match_their_shorthand_names(problem):
    layer, x = problem
    pairs = [
        (("phantom", dict(steps=3, tau=0.5)), Phantom(steps=3, tau=0.5)),
        (("truncated", dict(grad_steps=2)), Truncated(grad_steps=2)),
        (("implicit", dict(method="picard", rtol=1e-12, max_iter=500)), Implicit(method="picard", rtol=1e-12, max_iter=500)),
        (("none", {}), NoGrad()),
    ]
    for (name, options), obj in pairs:
        assert as_backward(name, options) == obj
        assert obj.to_spec() == (name, options)
        if name == "none":
            continue
        by_name, _ = grads(layer, x, name, rtol=1e-12, max_iter=300, backward_options=options)
        by_object, _ = grads(layer, x, obj, rtol=1e-12, max_iter=300)
        torch.testing.assert_close(by_name, by_object)
    assert as_backward("unrolled") == Unrolled()
    assert set(BACKWARD_MODES) == {"implicit", "phantom", "unrolled", "truncated", "none", "neumann"}


def test_implicit_callback_sees_each_backward_solve(problem):
    layer, x = problem
    seen = []
    g, sol = grads(layer, x, Implicit(rtol=1e-12, max_iter=300, callback=seen.append), rtol=1e-12, max_iter=300)
    assert len(seen) == 1 and seen[0] is sol.backward and sol.backward.calls == 1 and sol.backward.ok


def test_unrolled_is_backpropagation_through_n_plain_iterations(problem):
    layer, x = problem
    g, sol = grads(layer, x, "unrolled", method="picard", rtol=0.0, max_iter=5)
    layer.zero_grad()
    xr = x.clone().requires_grad_()
    z = torch.zeros_like(xr)
    for _ in range(5):
        z = layer(z, xr)
    torch.testing.assert_close(sol.z, z.detach())
    (z.sin() * torch.arange(1, 6, dtype=z.dtype)).sum().backward()
    manual = torch.cat([p.grad.flatten() for p in layer.parameters()] + [xr.grad.flatten()])
    torch.testing.assert_close(g, manual)
