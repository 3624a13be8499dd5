"""Anderson and Broyden step by step against the methods written out by hand; their memory stays
in float32 for low-precision states."""

from __future__ import annotations

import pytest
import torch
from helpers import contractive_tanh

from deqloop import SolverStatus, solve
from deqloop.solvers import Anderson, Broyden


def one_sample(f, batch, i):
    """Sample ``i``'s map alone: z ↦ f(Z)[i] with z placed in row i of a zero batch."""
    def fi(z):
        Z = torch.zeros(batch, z.numel(), dtype=z.dtype)
        Z[i] = z
        return f(Z)[i]

    return fi


def reference_anderson(f, x, steps, m, ridge, beta):
    """Relative residuals of the first ``steps`` evaluations of Anderson type II on one sample,
    written out: α ∝ (C + ridge·I)⁻¹ (1/‖g_i‖) with C the Gram matrix of unit residuals, then
    x ← Σ α_i (x_i + β g_i) over the last ``m`` points."""
    xs, gs, out = [], [], []
    for _ in range(steps):
        fx = f(x)
        g = fx - x
        out.append(float(g.norm() / fx.norm()))
        xs, gs = (xs + [x])[-m:], (gs + [g])[-m:]
        G = torch.stack(gs)  # (n, D)
        norms = G.norm(dim=1)
        C = (G @ G.T) / (norms[:, None] * norms[None, :]) + ridge * torch.eye(len(gs), dtype=x.dtype)
        w = torch.linalg.solve(C, 1.0 / norms) / norms
        alpha = w / w.sum()
        x = sum(a * (xi + beta * gi) for a, xi, gi in zip(alpha, xs, gs))
    return out


def reference_broyden(f, x, steps, m):
    """The same for good Broyden: H = −I + Σ u_i v_iᵀ over the last ``m`` updates, the update
    u = (Δx − HΔg)/(ΔxᵀHΔg), v = HᵀΔx, and the step x ← x − H g."""
    D = x.numel()
    pairs, out, x_prev, g_prev = [], [], None, None

    def H():
        return -torch.eye(D, dtype=x.dtype) + sum((torch.outer(u, v) for u, v in pairs), torch.zeros(D, D, dtype=x.dtype))

    for _ in range(steps):
        fx = f(x)
        g = fx - x
        out.append(float(g.norm() / fx.norm()))
        if x_prev is not None:
            dx, dg = x - x_prev, g - g_prev
            h = H()
            v = h.T @ dx
            pairs = (pairs + [((dx - h @ dg) / (v @ dg), v)])[-m:]
        x_prev, g_prev = x, g
        x = x - H() @ g
    return out


@pytest.mark.parametrize("m, ridge, beta", [(6, 1e-6, 1.0), (3, 1e-4, 0.7), (2, 0.0, 1.0)])
def test_anderson_follows_the_method_written_out(m, ridge, beta):
    f, _ = contractive_tanh(3, 10, torch.tensor([0.5, 0.9, 0.97], dtype=torch.float64), seed=4)
    steps = 9  # short of the tolerance floor, where the Gram matrix gets ill-conditioned
    sol = solve(f, torch.zeros(3, 10, dtype=torch.float64), "anderson", m=m, ridge=ridge, beta=beta,
                rtol=1e-300, max_iter=steps, trace=True)
    for i in range(3):
        ref = reference_anderson(one_sample(f, 3, i), torch.zeros(10, dtype=torch.float64), steps, m, ridge, beta)
        torch.testing.assert_close(sol.trace[:, i].double(), torch.tensor(ref, dtype=torch.float64), rtol=1e-5, atol=0)


@pytest.mark.parametrize("m", [12, 3])
def test_broyden_follows_the_method_written_out(m):
    f, _ = contractive_tanh(3, 10, torch.tensor([0.5, 0.9, 0.97], dtype=torch.float64), seed=5)
    steps = 9
    sol = solve(f, torch.zeros(3, 10, dtype=torch.float64), "broyden", m=m, rtol=1e-300, max_iter=steps, trace=True)
    for i in range(3):
        ref = reference_broyden(one_sample(f, 3, i), torch.zeros(10, dtype=torch.float64), steps, m)
        torch.testing.assert_close(sol.trace[:, i].double(), torch.tensor(ref, dtype=torch.float64), rtol=1e-5, atol=0)


def test_anderson_takes_a_plain_step_when_its_least_squares_is_singular():
    # f(z) = z + 1 repeats one residual: without a ridge the Gram matrix is exactly singular
    sol = solve(lambda z: z + 1.0, torch.zeros(2, 4), "anderson", ridge=0.0, rtol=1e-6, max_iter=5, keep="last")
    assert (sol.status == int(SolverStatus.MAX_ITER)).all()
    torch.testing.assert_close(sol.z, torch.full((2, 4), 4.0))  # x_k = x_{k−1} + g: the fifth point is 4


@pytest.mark.parametrize("cls", [Anderson, Broyden])
def test_low_precision_states_keep_float32_solver_memory(cls):
    x = torch.randn(4, 6).to(torch.bfloat16)
    solver = cls()
    state = solver.init(x, x, torch.float32)
    for k in range(1, 4):
        fx = (0.5 * x.float() + 0.1).to(torch.bfloat16)
        x_next, state = solver.step(state, x, fx, k)
        assert x_next.dtype == torch.float32  # the loop casts back to the state's dtype
        x = x_next.to(torch.bfloat16)
    assert all(v.dtype == torch.float32 for name, v in state.items() if name != "updates")
