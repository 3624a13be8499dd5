"""deqloop.tools for any map: the Jacobian penalty, fixed-point correction states and the spectral
radius, each against a formula written out by hand."""

from __future__ import annotations

import pytest
import torch

from deqloop import Phantom, fixed_point, solve
from deqloop.errors import ConfigError
from deqloop.tools import correction_weights, fixed_point_states, jacobian_penalty, segments, spectral_radius


def linear(seed: int = 0, dim: int = 4, batch: int = 3):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(dim, dim, generator=g, dtype=torch.float64)
    A = (0.7 * A / torch.linalg.matrix_norm(A, 2)).requires_grad_()
    b = torch.randn(batch, dim, generator=g, dtype=torch.float64).requires_grad_()
    return A, b


def test_jacobian_penalty_is_the_squared_vjp_over_its_size_and_differentiable():
    A, b = linear()
    z = torch.randn(3, 4, dtype=torch.float64)
    eps = torch.randn(3, 4, dtype=torch.float64)
    got = jacobian_penalty(lambda z: z @ A.T + b, z, eps=eps)  # J = A for every sample: εᵀJ = ε A
    expected = (eps @ A).pow(2).sum() / 12
    torch.testing.assert_close(got, expected, rtol=1e-14, atol=0)
    (grad,) = torch.autograd.grad(got, A)
    torch.testing.assert_close(grad, 2 * eps.T @ (eps @ A) / 12, rtol=1e-13, atol=1e-15)
    # a tuple state: the penalty of the packed map, ε packed per sample
    a, c = z[:, :1], z[:, 1:]
    got_tree = jacobian_penalty(lambda s: tuple((torch.cat(s, 1) @ A.T + b).split([1, 3], 1)), (a, c), eps=eps)
    torch.testing.assert_close(got_tree, expected, rtol=1e-14, atol=0)
    # drawn from a generator: the same ε as torch.randn with that generator
    draw = jacobian_penalty(lambda z: z @ A.T + b, z, generator=torch.Generator().manual_seed(7))
    eps7 = torch.randn(3, 4, generator=torch.Generator().manual_seed(7)).double()
    torch.testing.assert_close(draw, (eps7 @ A).pow(2).sum() / 12, rtol=1e-6, atol=0)


def test_segments_and_weights():
    assert segments(10, 3) == [4, 4, 4]  # as LoopedDEQ's fp_states splits its budget
    assert segments(9, [2, 5]) == [2, 3, 4]  # the final answer always included
    assert segments(9, [2, 9]) == [2, 7]
    with pytest.raises(ConfigError, match="increasing iteration counts ≤ max_iter=9"):
        segments(9, [5, 2])
    with pytest.raises(ConfigError, match="increasing"):
        segments(9, [2, 12])
    assert correction_weights(3, 0.5) == pytest.approx([0.25 / 1.75, 0.5 / 1.75, 1 / 1.75])


def test_fixed_point_states_are_the_solvers_answers_at_each_cut_with_the_final_one_last():
    A, b = linear()
    f = lambda z: z @ A.T + b  # noqa: E731
    z0 = torch.zeros(3, 4, dtype=torch.float64)
    states, sol = fixed_point_states(f, z0, "picard", Phantom(steps=1), states=[2, 5], max_iter=9, rtol=0.0)
    assert len(states) == 3
    # picard keeps the last evaluated point of each segment: iterates 1, 1 + 2 = 3, 3 + 3 = 6
    with torch.no_grad():
        iterates = [z0]
        for _ in range(6):
            iterates.append(f(iterates[-1]))
    for state, k in zip(states, (1, 3, 6)):
        torch.testing.assert_close(state, f(iterates[k]), rtol=1e-13, atol=1e-14)  # one phantom step on top
    assert sol.iterations.tolist() == [9, 9, 9] and sol.nfe == 9
    # the final state is what the solver returns from the previous answer
    torch.testing.assert_close(sol.z, solve(f, iterates[3], "picard", rtol=0.0, max_iter=4).z, rtol=0, atol=0)
    # each state carries its gradient: d/db of Σ states = Σ of one step's identity
    loss = sum(w * s.sum() for w, s in zip(correction_weights(3), states))
    (gb,) = torch.autograd.grad(loss, b)
    torch.testing.assert_close(gb, torch.ones_like(b), rtol=1e-14, atol=0)


def test_fixed_point_states_with_the_implicit_gradient_end_at_fixed_points_gradient():
    A, b = linear(1)
    f = lambda z: torch.tanh(z @ A.T + b)  # noqa: E731
    z0 = torch.zeros(3, 4, dtype=torch.float64)
    states, sol = fixed_point_states(f, z0, "anderson", "implicit", states=2, max_iter=60, rtol=1e-12,
                                     backward_options={"rtol": 1e-12, "max_iter": 100})
    z_ref, _ = fixed_point(f, z0, "anderson", "implicit", rtol=1e-12, max_iter=60,
                           backward_options={"rtol": 1e-12, "max_iter": 100})
    torch.testing.assert_close(states[-1], z_ref, rtol=1e-10, atol=1e-12)
    (g,) = torch.autograd.grad(states[-1].pow(2).sum(), A)
    (g_ref,) = torch.autograd.grad(z_ref.pow(2).sum(), A)
    torch.testing.assert_close(g, g_ref, rtol=1e-8, atol=1e-10)


def block_map():
    """Per sample z ↦ M z with M = P diag(0.9, −0.5, 0.3, 0.1) P⁻¹ (ρ = 0.9), and its two-leaf form."""
    g = torch.Generator().manual_seed(2)
    P = torch.eye(4, dtype=torch.float64) + 0.3 * torch.randn(4, 4, generator=g, dtype=torch.float64)
    M = P @ torch.diag(torch.tensor([0.9, -0.5, 0.3, 0.1], dtype=torch.float64)) @ torch.linalg.inv(P)
    return M


@pytest.mark.parametrize("method", ["krylov", "arpack"])
def test_spectral_radius_of_a_map_with_known_eigenvalues(method):
    M = block_map()
    z = torch.randn(2, 4, dtype=torch.float64)
    est = spectral_radius(lambda z: torch.nn.functional.linear(z, M), z, method=method, tol=1e-9, maxiter=500)
    torch.testing.assert_close(est.radius, torch.full((2,), 0.9, dtype=torch.float64), rtol=1e-6, atol=0)
    # a tuple state (1 + 3 entries per sample) is the packed map's Jacobian
    est = spectral_radius(lambda s: tuple(torch.nn.functional.linear(torch.cat(s, 1), M).split([1, 3], 1)),
                          (z[:, :1], z[:, 1:]), method=method, tol=1e-9, maxiter=500)
    torch.testing.assert_close(est.radius, torch.full((2,), 0.9, dtype=torch.float64), rtol=1e-6, atol=0)


def test_spectral_radius_warm_starts_from_the_previous_vectors():
    # f(z) = tanh(W z + b) at z: J = diag(1 − tanh²(W z + b)) W, one 40 × 40 matrix per sample
    g = torch.Generator().manual_seed(3)
    W = torch.randn(40, 40, generator=g, dtype=torch.float64) / 40**0.5
    b = torch.randn(2, 40, generator=g, dtype=torch.float64)
    z = torch.randn(2, 40, generator=g, dtype=torch.float64)
    dW = torch.randn(40, 40, generator=g, dtype=torch.float64) / 40**0.5

    def dense(W):
        d = 1 - torch.tanh(z @ W.T + b) ** 2
        return torch.linalg.eigvals(d[:, :, None] * W).abs().max(dim=1).values

    first = spectral_radius(lambda z: torch.tanh(z @ W.T + b), z, tol=1e-3)
    W2 = W + 1e-3 * dW
    f2 = lambda z: torch.tanh(z @ W2.T + b)
    cold = spectral_radius(f2, z, tol=1e-3, seed=1)
    warm = spectral_radius(f2, z, tol=1e-3, seed=1, start=first.vectors)
    assert cold.converged.all() and warm.converged.all()
    torch.testing.assert_close(warm.radius, dense(W2), rtol=1e-2, atol=0)
    assert warm.matvecs.sum() < cold.matvecs.sum()
    with pytest.raises(ValueError, match="warm-start vectors of shape"):
        spectral_radius(f2, z, start=first.vectors[:, :30])