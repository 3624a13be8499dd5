"""BackwardWarning aggregated (the first failure in full, then counts every N passes), and
second-order gradients: an error through Implicit/Neumann, exact through Unrolled."""

from __future__ import annotations

import warnings

import pytest
import torch

from deqloop import BackwardWarning, Implicit, Neumann, Phantom, Unrolled, fixed_point
from deqloop.adjoint import BackwardError
from deqloop.adjoint_warnings import BackwardWarnings, backward_warnings

from tests.helpers import contractive_tanh


def test_the_first_failure_in_full_then_one_line_of_counts_per_interval():
    log = BackwardWarnings(every=3)
    assert log.record("solve", 2, 4, 0.5) == ("solve did not converge for 2 of 4 samples; largest relative residual "
                                              "0.5. Gradients for those samples are approximate. Further failures are "
                                              "summarised every 3 backward passes.")
    assert log.record("solve", 0, 4, 0.0) is None
    assert log.record("solve", 1, 4, 0.7) is None
    assert log.record("solve", 0, 4, 0.0) == ("solve: 1 of the last 3 backward passes failed for some samples (1 of 12 "
                                              "samples; largest relative residual 0.7).")
    for _ in range(3):  # an interval without failures says nothing
        assert log.record("solve", 0, 4, 0.0) is None
    assert log.passes == 0


def test_a_run_of_failing_backward_solves_warns_three_times_in_250_steps():
    f, (W, U, x, c) = contractive_tanh(4, 6, 0.9)
    x.requires_grad_()
    backward = Implicit(rtol=1e-12, max_iter=1)  # one iteration never reaches 1e-12
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(250):
            z, _ = fixed_point(f, torch.zeros(4, 6, dtype=torch.float64), "anderson", backward, rtol=1e-10)
            z.sum().backward()
    messages = [str(w.message) for w in caught if issubclass(w.category, BackwardWarning)]
    assert len(messages) == 3
    assert "did not converge for 4 of 4 samples" in messages[0]
    for m in messages[1:]:
        assert ": 100 of the last 100 backward passes failed for some samples (400 of 400 samples;" in m
    assert backward_warnings.passes == 49


@pytest.mark.parametrize("backward", [Implicit(rtol=1e-10, max_iter=100), Neumann(k=3)], ids=["implicit", "neumann"])
def test_a_second_order_gradient_through_the_adjoint_is_an_error(backward):
    f, (W, U, x, c) = contractive_tanh(3, 5, 0.6)
    x.requires_grad_()
    z, _ = fixed_point(f, torch.zeros(3, 5, dtype=torch.float64), "anderson", backward, rtol=1e-10, max_iter=100)
    with pytest.raises(BackwardError, match=rf"second-order gradient .* reached the {type(backward).__name__} backward"):
        torch.autograd.grad(z.pow(2).sum(), x, create_graph=True)
    # first order is unaffected
    z, _ = fixed_point(f, torch.zeros(3, 5, dtype=torch.float64), "anderson", backward, rtol=1e-10, max_iter=100)
    (gx,) = torch.autograd.grad(z.pow(2).sum(), x)
    assert gx.shape == x.shape and not gx.requires_grad


def test_unrolled_second_order_gradients_match_finite_differences():
    _, (W, U, x0, c) = contractive_tanh(2, 4, 0.5)

    def grad_of(x, create_graph):
        f = lambda z: torch.tanh(torch.bmm(W, z.unsqueeze(2)).squeeze(2) + torch.bmm(U, x.unsqueeze(2)).squeeze(2) + c)  # noqa: E731
        z, _ = fixed_point(f, torch.zeros(2, 4, dtype=torch.float64), None, Unrolled(), rtol=1e-13, max_iter=200)
        (g,) = torch.autograd.grad(z.pow(3).sum(), x, create_graph=create_graph)
        return g

    x = x0.clone().requires_grad_()
    u = torch.linspace(-1, 1, 8, dtype=torch.float64).reshape(2, 4)
    (hvp,) = torch.autograd.grad((grad_of(x, True) * u).sum(), x)
    h = 1e-6
    fd = (grad_of((x0 + h * u).requires_grad_(), False) - grad_of((x0 - h * u).requires_grad_(), False)) / (2 * h)
    torch.testing.assert_close(hvp, fd, rtol=1e-6, atol=1e-9)


def test_phantom_second_order_gradients_are_those_of_its_explicit_steps():
    f, (W, U, x, c) = contractive_tanh(2, 4, 0.5)
    x.requires_grad_()
    z, sol = fixed_point(f, torch.zeros(2, 4, dtype=torch.float64), "anderson", Phantom(steps=2, tau=0.5),
                         rtol=1e-12, max_iter=100)
    (g,) = torch.autograd.grad(z.pow(3).sum(), x, create_graph=True)
    (hvp,) = torch.autograd.grad(g.sum(), x)
    zs = sol.z.detach()
    for _ in range(2):
        zs = torch.lerp(zs, f(zs), 0.5)
    (g_ref,) = torch.autograd.grad(zs.pow(3).sum(), x, create_graph=True)
    (hvp_ref,) = torch.autograd.grad(g_ref.sum(), x)
    torch.testing.assert_close(hvp, hvp_ref, rtol=1e-12, atol=1e-14)
    assert float(hvp.abs().max()) > 0
