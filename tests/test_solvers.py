"""The fixed-point solvers: agreement with references, per-sample convergence, robustness, errors."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize
import torch
from helpers import contractive_tanh, linear_map
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deqloop import Solution, SolverError, SolverStatus, available_solvers, register_solver, solve
from deqloop.errors import DeqloopError
from deqloop.solvers import BatchedMap, Picard, relative_residual, residual_norms

OURS = ("picard", "anderson", "broyden")
TORCHDEQ = ("torchdeq:anderson", "torchdeq:broyden", "torchdeq:fixed_point_iter")


def scipy_fixed_point(f, z0: torch.Tensor) -> np.ndarray:
    """Each sample's root of f(z) − z by MINPACK's hybrid method, in float64."""
    out = []
    for i in range(z0.shape[0]):
        def g(v, i=i):
            z = z0.clone().double()
            z[i] = torch.from_numpy(v)
            return (f(z)[i] - z[i]).numpy()

        res = scipy.optimize.root(g, np.zeros(z0.shape[1]), method="hybr", tol=1e-13)
        if res.success:
            out.append(res.x)
        else:  # MINPACK can stall; plain iteration of a contraction cannot
            out.append(scipy.optimize.fixed_point(lambda v: g(v) + v, np.zeros(z0.shape[1]), xtol=1e-14,
                                                  maxiter=100_000, method="iteration"))
    return np.stack(out)


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    batch=st.integers(1, 4),
    dim=st.integers(1, 12),
    contraction=st.floats(0.05, 0.95),
    seed=st.integers(0, 10_000),
    double=st.booleans(),
)
def test_all_methods_reach_scipy_fixed_point(batch, dim, contraction, seed, double):
    dtype = torch.float64 if double else torch.float32
    f, _ = contractive_tanh(batch, dim, contraction, dtype=dtype, seed=seed)
    f64, _ = contractive_tanh(batch, dim, contraction, dtype=torch.float64, seed=seed)
    reference = scipy_fixed_point(f64, torch.zeros(batch, dim, dtype=torch.float64))
    # float32 residuals stall near 1e-6 of ‖f(z)‖, and near 1e-7 absolute when z* ≈ 0
    rtol, atol = (1e-10, 0.0) if double else (1e-5, 1e-6)
    for method in OURS:
        sol = solve(f, torch.zeros(batch, dim, dtype=dtype), method, rtol=rtol, atol=atol, max_iter=2000)
        assert sol.converged.all(), (method, sol.residual)
        assert sol.residual.dtype == torch.float32
        # a residual r at contraction c bounds the error by r/(1 − c)
        bound = 20 * (rtol + atol) / (1 - contraction) + (1e-12 if double else 1e-5)
        np.testing.assert_allclose(sol.z.double().numpy(), reference, atol=bound, rtol=0, err_msg=method)


@pytest.mark.parametrize("method", OURS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_linear_map_closed_form(method, dtype):
    f, exact = linear_map(3, 10, 0.9, dtype=dtype)
    sol = solve(f, torch.zeros(3, 10, dtype=dtype), method, rtol=1e-11 if dtype == torch.float64 else 1e-6, max_iter=1000)
    assert sol.converged.all()
    tol = 1e-8 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(sol.z, exact, atol=tol, rtol=tol)


@pytest.mark.parametrize("method", TORCHDEQ)
def test_torchdeq_adapters_agree_with_ours(method):
    f, _ = contractive_tanh(4, 8, 0.8)
    ours = solve(f, torch.zeros(4, 8, dtype=torch.float64), "anderson", rtol=1e-10, max_iter=300)
    theirs = solve(f, torch.zeros(4, 8, dtype=torch.float64), method, rtol=1e-10, max_iter=300)
    assert isinstance(theirs, Solution) and theirs.method == method
    assert theirs.nfe > 0 and theirs.converged.all()
    torch.testing.assert_close(theirs.z, ours.z, atol=1e-8, rtol=0)


def test_accelerated_methods_need_fewer_evaluations_at_contraction_095():
    f, _ = contractive_tanh(4, 16, 0.95, seed=3)
    z0 = torch.zeros(4, 16, dtype=torch.float64)
    nfe = {m: solve(f, z0, m, rtol=1e-8, max_iter=3000).nfe for m in OURS}
    assert nfe["anderson"] < nfe["picard"] and nfe["broyden"] < nfe["picard"], nfe


@pytest.mark.parametrize("n", [5, 12, 20])
def test_anderson_solves_linear_map_in_about_n_steps(n):
    f, exact = linear_map(1, n, 0.9, seed=n)
    sol = solve(f, torch.zeros(1, n, dtype=torch.float64), "anderson", m=n + 1, rtol=1e-10, max_iter=10 * n)
    assert sol.converged.all()
    # GMRES-equivalent: exact after n + 1 evaluations in exact arithmetic, one more to confirm it
    assert sol.nfe <= n + 3, sol.nfe
    torch.testing.assert_close(sol.z, exact, atol=1e-8, rtol=0)


def mixed_difficulty(batch: int = 6, dim: int = 8):
    contraction = torch.tensor([0.1, 0.97, 0.3, 0.9, 0.05, 0.6][:batch], dtype=torch.float64)
    return contractive_tanh(batch, dim, contraction, seed=7)


@pytest.mark.parametrize("method", OURS)
@pytest.mark.parametrize("subset", [False, True])
def test_each_sample_gets_its_solo_answer(method, subset):
    f, (W, U, x, c) = mixed_difficulty()
    B, D = x.shape
    if subset:
        def step(z, W, U, x):
            return torch.tanh(torch.bmm(W, z.unsqueeze(2)).squeeze(2) + torch.bmm(U, x.unsqueeze(2)).squeeze(2) + c)
        f = BatchedMap(step, W, U, x)
    batch = solve(f, torch.zeros(B, D, dtype=torch.float64), method, rtol=1e-9, max_iter=2000)
    assert batch.converged.all()
    for i in range(B):
        def solo_f(z, i=i):  # sample i alone
            inner = torch.bmm(W[i : i + 1], z.unsqueeze(2)).squeeze(2) + torch.bmm(U[i : i + 1], x[i : i + 1].unsqueeze(2)).squeeze(2) + c
            return torch.tanh(inner)

        solo = solve(solo_f, torch.zeros(1, D, dtype=torch.float64), method, rtol=1e-9, max_iter=2000)
        assert int(solo.iterations[0]) == int(batch.iterations[i])
        torch.testing.assert_close(batch.z[i : i + 1], solo.z, atol=1e-12, rtol=0)
    # harder samples (larger contraction) visibly need more iterations
    order = torch.argsort(torch.tensor([0.1, 0.97, 0.3, 0.9, 0.05, 0.6]))
    its = batch.iterations[order]
    assert its[0] < its[-1]


def test_freezing_converged_samples_saves_evaluations_only_with_a_subsettable_map():
    f, (W, U, x, c) = mixed_difficulty()
    B, D = x.shape
    z0 = torch.zeros(B, D, dtype=torch.float64)
    closure = solve(f, z0, "anderson", rtol=1e-9, max_iter=2000)
    mapped = solve(BatchedMap(lambda z, W, U, x: torch.tanh(torch.bmm(W, z.unsqueeze(2)).squeeze(2) + torch.bmm(U, x.unsqueeze(2)).squeeze(2) + c), W, U, x),
                   z0, "anderson", rtol=1e-9, max_iter=2000)
    assert closure.nfe == mapped.nfe
    assert closure.sample_evals == closure.nfe * B  # a closure is always evaluated on the full batch
    assert mapped.sample_evals == int(mapped.iterations.sum())  # each sample evaluated only until it converged
    assert mapped.sample_evals < closure.sample_evals


@pytest.mark.parametrize("check_every", [1, 3, 8])
def test_checking_convergence_less_often_gives_the_same_answers(check_every):
    f, (W, U, x, c) = mixed_difficulty()
    z0 = torch.zeros(*x.shape, dtype=torch.float64)
    ref = solve(f, z0, "anderson", rtol=1e-9, max_iter=500, check_every=1)
    sol = solve(f, z0, "anderson", rtol=1e-9, max_iter=500, check_every=check_every)
    torch.testing.assert_close(sol.z, ref.z, atol=0, rtol=0)
    assert torch.equal(sol.iterations, ref.iterations)


@pytest.mark.parametrize("method", OURS)
def test_nonfinite_sample_is_flagged_and_others_unaffected(method):
    f, _ = contractive_tanh(4, 6, 0.7)

    def poisoned(z):
        out = f(z).clone()
        out[2] = out[2] * float("nan")
        return out

    clean = solve(f, torch.zeros(4, 6, dtype=torch.float64), method, rtol=1e-9, max_iter=500)
    sol = solve(poisoned, torch.zeros(4, 6, dtype=torch.float64), method, rtol=1e-9, max_iter=500)
    assert sol.status.tolist() == [0, 0, int(SolverStatus.NONFINITE), 0]
    assert sol.converged.tolist() == [True, True, False, True]
    assert torch.equal(sol.z[2], torch.zeros(6, dtype=torch.float64))  # frozen at its best (here: initial) iterate
    keep = [0, 1, 3]
    torch.testing.assert_close(sol.z[keep], clean.z[keep], atol=1e-12, rtol=0)
    with pytest.raises(SolverError, match=r"1 of 4 samples did not converge: 1 nonfinite \(samples 2\)"):
        solve(poisoned, torch.zeros(4, 6, dtype=torch.float64), method, rtol=1e-9, max_iter=500, throw=True)


def test_diverging_sample_is_frozen_at_its_best_iterate():
    scale = torch.tensor([[0.5], [3.0], [0.5]], dtype=torch.float64)

    def f(z):
        return scale * z + 1.0  # sample 1 is expanding: its fixed point −0.5 is repelling

    sol = solve(f, torch.zeros(3, 4, dtype=torch.float64), "picard", rtol=1e-10, max_iter=200)
    assert sol.status.tolist() == [0, int(SolverStatus.DIVERGED), 0]
    assert torch.allclose(sol.z[1], torch.zeros(4, dtype=torch.float64))  # the best iterate: the start
    # its residual at evaluation k is ‖3^(k−1)·1‖ = 2·3^(k−1) (from z_k = (3^k − 1)/2), the smallest
    # 2 (k = 1): divergence (1e4 × the smallest) first at 3^(k−1) > 1e4, k = 10
    assert sol.iterations[1] == 10
    torch.testing.assert_close(sol.z[[0, 2]], torch.full((2, 4), 2.0, dtype=torch.float64), rtol=1e-9, atol=0)
    with pytest.raises(SolverError, match="diverged"):
        sol.raise_on_failure()
    assert issubclass(SolverError, DeqloopError) and issubclass(SolverError, RuntimeError)


def test_residual_norms_are_the_one_residual_formula():
    z = torch.tensor([[1.0, 2.0, 2.0], [0.0, 0.0, 0.0]])
    fz = torch.tensor([[1.0, 2.0, 4.0], [3.0, 0.0, 4.0]])
    abs_r, f_norm = residual_norms(fz.view(2, 3, 1), z.view(2, 3, 1))  # any trailing shape, per sample
    assert abs_r.dtype == f_norm.dtype == torch.float32
    torch.testing.assert_close(abs_r, torch.tensor([2.0, 5.0]))
    torch.testing.assert_close(f_norm, torch.tensor([21.0**0.5, 5.0]))
    torch.testing.assert_close(relative_residual(fz, z), abs_r / f_norm)
    assert residual_norms(fz.double(), z.double())[0].dtype == torch.float32


def test_max_iter_status_and_trace():
    f, _ = contractive_tanh(3, 5, 0.99)
    sol = solve(f, torch.zeros(3, 5, dtype=torch.float64), "picard", rtol=1e-12, max_iter=7, trace=True)
    assert (sol.status == int(SolverStatus.MAX_ITER)).all()
    assert sol.iterations.tolist() == [7, 7, 7] and sol.nfe == 7
    assert sol.trace.shape == (7, 3) and sol.trace.dtype == torch.float32
    # row t: ‖f(z_t) − z_t‖ / ‖f(z_t)‖ of plain iteration z_{t+1} = f(z_t) from z_0 = 0 (row 0 is 1)
    z, rows = torch.zeros(3, 5, dtype=torch.float64), []
    for _ in range(7):
        fz = f(z)
        rows.append((fz - z).norm(dim=1) / fz.norm(dim=1))
        z = fz
    torch.testing.assert_close(sol.trace, torch.stack(rows).float())
    torch.testing.assert_close(sol.trace.min(dim=0).values, sol.residual)
    assert sol.summary()["status"]["max_iter"] == 3


@pytest.mark.parametrize("method", OURS)
def test_low_precision_states_keep_float32_numerics(method):
    f64, _ = contractive_tanh(2, 16, 0.6)
    f = lambda z: f64(z.double()).to(z.dtype)  # noqa: E731
    sol = solve(f, torch.zeros(2, 16, dtype=torch.bfloat16), method, rtol=1e-2, max_iter=100)
    assert sol.z.dtype == torch.bfloat16
    assert sol.residual.dtype == torch.float32 and sol.converged.all()
    # within r/(1 − c) = 0.01/0.4 of the float64 fixed point (|z*| ≤ 1), plus bfloat16 rounding
    exact = solve(f64, torch.zeros(2, 16, dtype=torch.float64), "anderson", rtol=1e-13, max_iter=200).z
    torch.testing.assert_close(sol.z.double(), exact, rtol=0, atol=0.03)


def test_user_solvers_can_be_registered():
    class HalfStep(Picard):
        def __init__(self):
            super().__init__(damping=0.5)

    register_solver("test-half-step", HalfStep, overwrite=True)
    calls = []

    def custom(f, z0, *, rtol, atol, max_iter, trace, **options):
        calls.append(options)
        return solve(f, z0, "picard", rtol=rtol, atol=atol, max_iter=max_iter)

    register_solver("test-custom", custom, overwrite=True)
    f, exact = linear_map(2, 4, 0.5)
    for name in ("test-half-step", "test-custom"):
        assert name in available_solvers()
        sol = solve(f, torch.zeros(2, 4, dtype=torch.float64), name, rtol=1e-10, max_iter=500)
        torch.testing.assert_close(sol.z, exact, atol=1e-8, rtol=0)
    assert calls == [{}]
    with pytest.raises(ValueError, match="already registered"):
        register_solver("picard", Picard)


def test_bad_input_gives_clear_errors():
    f, _ = linear_map(2, 4, 0.5)
    z0 = torch.zeros(2, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"unknown solver method 'newton'; known: .*anderson.*broyden.*picard"):
        solve(f, z0, "newton")
    with pytest.raises(ValueError, match=r"rtol must be a finite number in \[0, inf\), got -0.1"):
        solve(f, z0, rtol=-0.1)
    with pytest.raises(ValueError, match="atol"):
        solve(f, z0, atol=float("nan"))
    with pytest.raises(ValueError, match="max_iter must be an integer ≥ 1, got 0"):
        solve(f, z0, max_iter=0)
    with pytest.raises(ValueError, match=r"f must return a tensor of the shape of its input \(2, 4\), got \(2, 3\)"):
        solve(lambda z: z[:, :3], z0)
    with pytest.raises(TypeError, match=r"method 'anderson' got unknown key\(s\) \['window'\]; allowed: m, ridge, beta"):
        solve(f, z0, "anderson", window=3)
    with pytest.raises(TypeError, match=r"method 'torchdeq:anderson' got unknown key\(s\) \['window'\]; allowed: "):
        solve(f, z0, "torchdeq:anderson", window=3)
    with pytest.raises(ValueError, match=r"damping must be a finite number in \(0, 1\], got 1.5"):
        solve(f, z0, "picard", damping=1.5)
    with pytest.raises(TypeError, match="floating-point"):
        solve(f, torch.zeros(2, 4, dtype=torch.long))


def test_residuals_at_the_rounding_floor_are_not_divergence():
    f, _ = contractive_tanh(4, 3, 0.9, dtype=torch.float32, seed=2)
    sol = solve(f, torch.zeros(4, 3), "picard", rtol=1e-9, max_iter=3000)  # below float32's reach
    # each sample either lands exactly on a float32 fixed point or stalls at the floor; none "diverges"
    assert set(sol.status.tolist()) <= {int(SolverStatus.CONVERGED), int(SolverStatus.MAX_ITER)}, sol.status
    assert float(sol.residual.max()) < 1e-5


@pytest.mark.parametrize("method", OURS)
def test_more_samples_than_values_per_sample(method):
    """A batch of 12 samples of 3 values each (the loop's buffers are batch × values, not square)."""
    f, exact = linear_map(12, 3, 0.5, seed=3)
    sol = solve(f, torch.zeros(12, 3, dtype=torch.float64), method, rtol=1e-12, max_iter=200)
    assert sol.converged.all()
    torch.testing.assert_close(sol.z, exact, atol=1e-10, rtol=0)
