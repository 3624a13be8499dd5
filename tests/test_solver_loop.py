"""The solver loop's speed-ups change no answer: Anderson and Broyden against the methods written
out by hand, and the same solutions, per-sample iterations and statuses whether converged samples
are dropped (a ``BatchedMap``) or held by masks (a closure), whatever the cadence of dropping."""

from __future__ import annotations

import pytest
import torch
from helpers import contractive_tanh

from deqloop import SolverStatus, solve
from deqloop.errors import ConfigError
from deqloop.solvers import Anderson, BatchedMap, Broyden, KeptRows, Picard
from deqloop.solvers import base
from deqloop.solvers import LoopOptions
from deqloop.solvers.loop import run_solver

OURS = {"picard": Picard, "anderson": Anderson, "broyden": Broyden}


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
    """The same for good Broyden: H = −I + Σ u_i v_iᵀ over the updates since the last restart (the
    memory is cleared when it holds ``m``), the update u = (Δx − HΔg)/(ΔxᵀHΔg), v = HᵀΔx, and
    the step x ← x − H g. An update whose denominator is within rounding of zero,
    |ΔxᵀHΔg| ≤ ε‖v‖(‖g‖ + ‖g_prev‖), is skipped but counts towards the restart."""
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
            if len(pairs) == m:
                pairs = []
            h = H()
            v = h.T @ dx
            if abs(v @ dg) > 1e-30 + torch.finfo(x.dtype).eps * v.norm() * (g.norm() + g_prev.norm()):
                pairs = pairs + [((dx - h @ dg) / (v @ dg), v)]
            else:
                pairs = pairs + [(torch.zeros_like(v), torch.zeros_like(v))]
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


@pytest.mark.parametrize("m", [12, 3, None])
def test_broyden_follows_the_method_written_out(m):
    f, _ = contractive_tanh(3, 10, torch.tensor([0.5, 0.9, 0.97], dtype=torch.float64), seed=5)
    steps = 11  # the default memory (6 updates) restarts at step 8
    options = {} if m is None else {"m": m}
    sol = solve(f, torch.zeros(3, 10, dtype=torch.float64), "broyden", **options, rtol=1e-300, max_iter=steps, trace=True)
    for i in range(3):
        ref = reference_broyden(one_sample(f, 3, i), torch.zeros(10, dtype=torch.float64), steps, m or 6)
        torch.testing.assert_close(sol.trace[:, i].double(), torch.tensor(ref, dtype=torch.float64), rtol=1e-5, atol=0)


class BroydenFromPoints(Broyden):
    """Broyden taking Δx from the points evaluated, as it does for a lower-precision state."""

    @staticmethod
    def evaluates_its_own_points(x, acc):
        return False


@pytest.mark.parametrize("m", [12, 3])
def test_broyden_taking_the_step_from_the_points_follows_the_method_written_out(m):
    f, _ = contractive_tanh(3, 10, torch.tensor([0.5, 0.9, 0.97], dtype=torch.float64), seed=5)
    steps = 9
    sol = run_solver(f, torch.zeros(3, 10, dtype=torch.float64), BroydenFromPoints(m),
                     LoopOptions(method="broyden", rtol=1e-300, max_iter=steps, trace=True))
    for i in range(3):
        ref = reference_broyden(one_sample(f, 3, i), torch.zeros(10, dtype=torch.float64), steps, m)
        torch.testing.assert_close(sol.trace[:, i].double(), torch.tensor(ref, dtype=torch.float64), rtol=1e-5, atol=0)


def test_broyden_skips_an_update_with_no_change_in_the_residual_for_that_sample_only():
    # sample 1's map is z + 1 for its first two calls: g does not change, Δxᵀ H Δg = 0, and its
    # first update is skipped; sample 0 updates at every step
    f, _ = contractive_tanh(2, 10, torch.tensor([0.9, 0.9], dtype=torch.float64), seed=6)
    calls = []

    def g(z):
        calls.append(1)
        out = f(z)
        if len(calls) <= 2:
            out[1] = z[1] + 1.0
        return out

    def sample(i):
        def fi(z):  # sample i alone, with the same call count as the batch
            calls.append(1)
            out = f(torch.stack([z, z]))[i]
            return z + 1.0 if i == 1 and len(calls) <= 2 else out
        return fi

    steps = 9
    sol = solve(g, torch.zeros(2, 10, dtype=torch.float64), "broyden", m=4, rtol=1e-300, max_iter=steps, trace=True)
    for i in range(2):
        calls.clear()
        ref = reference_broyden(sample(i), torch.zeros(10, dtype=torch.float64), steps, 4)
        torch.testing.assert_close(sol.trace[:, i].double(), torch.tensor(ref, dtype=torch.float64), rtol=1e-5, atol=0)


def test_anderson_takes_a_plain_step_when_its_least_squares_is_singular():
    # f(z) = z + 1 repeats one residual: without a ridge the Gram matrix is exactly singular
    sol = solve(lambda z: z + 1.0, torch.zeros(2, 4), "anderson", ridge=0.0, rtol=1e-6, max_iter=5, keep="last")
    assert (sol.status == int(SolverStatus.MAX_ITER)).all()
    torch.testing.assert_close(sol.z, torch.full((2, 4), 4.0))  # x_k = x_{k−1} + g: the fifth point is 4


def mixed_problem(batch=12, dim=8, seed=11):
    """Per-sample contraction 0.05–0.98: samples converge after very different numbers of steps."""
    order = torch.randperm(batch, generator=torch.Generator().manual_seed(seed))
    contraction = torch.linspace(0.05, 0.98, batch, dtype=torch.float64)[order]
    f, (W, U, x, c) = contractive_tanh(batch, dim, contraction, seed=seed)

    def step(z, W, U, x):
        return torch.tanh(torch.bmm(W, z.unsqueeze(2)).squeeze(2) + torch.bmm(U, x.unsqueeze(2)).squeeze(2) + c)

    return f, BatchedMap(step, W, U, x), torch.zeros(batch, dim, dtype=torch.float64)


@pytest.mark.parametrize("method", list(OURS))
@pytest.mark.parametrize("compact_at, check_every", [(0.0, 1), (0.125, 1), (0.5, 3), (1.0, 1), (0.25, 8)])
def test_dropping_converged_samples_changes_no_answer(method, compact_at, check_every):
    closure, batched, z0 = mixed_problem()
    kw = {"method": method, "rtol": 1e-10, "max_iter": 400}
    ref = run_solver(closure, z0, OURS[method](), LoopOptions(check_every=1, **kw))
    sol = run_solver(batched, z0, OURS[method](), LoopOptions(check_every=check_every, compact_at=compact_at, **kw))
    assert ref.converged.all() and len(set(ref.iterations.tolist())) > 4  # a real spread of iteration counts
    assert torch.equal(sol.iterations, ref.iterations)
    assert torch.equal(sol.status, ref.status)
    torch.testing.assert_close(sol.z, ref.z, atol=1e-12, rtol=0)
    torch.testing.assert_close(sol.residual, ref.residual, atol=1e-12, rtol=1e-6)
    assert ref.nfe <= sol.nfe < ref.nfe + check_every  # the host notices the end at a check
    # frozen samples are evaluated until they are dropped, never after; never dropped: every call
    B = z0.shape[0]
    assert int(sol.iterations.sum()) <= sol.sample_evals <= sol.nfe * B
    if compact_at == 0.0 and check_every == 1:
        assert sol.sample_evals == int(sol.iterations.sum())
    if compact_at == 1.0:
        assert sol.sample_evals == sol.nfe * B


@pytest.mark.parametrize("method", list(OURS))
def test_dropping_cadence_keeps_each_samples_outcome(method):
    """Converged, stopped at max_iter, non-finite and diverged samples in one batch: each keeps its
    status, its iterations and its iterate whether frozen samples are dropped early, late or never."""
    scale = torch.tensor([0.3, 0.999, 0.6, 1.5, 0.1, 0.8], dtype=torch.float64)[:, None]  # 1: slow, 3: expanding
    poison = torch.tensor([False, False, True, False, False, False])[:, None]

    def step(z, scale, poison):
        out = scale * z + 1.0 + 0.01 * torch.tanh(z)
        return torch.where(poison & (z.abs().sum(1, keepdim=True) > 0), torch.nan, out)  # 2: NaN after one step

    z0 = torch.zeros(6, 5, dtype=torch.float64)
    outcomes = []
    for compact_at, check_every in [(0.0, 1), (0.5, 2), (1.0, 1), (0.2, 5)]:
        sol = run_solver(BatchedMap(step, scale, poison), z0, OURS[method](), LoopOptions(
            method=method, rtol=1e-12, max_iter=25, check_every=check_every, compact_at=compact_at))
        outcomes.append(sol)
    first = outcomes[0]
    assert first.status[2] == SolverStatus.NONFINITE and first.status[0] == SolverStatus.CONVERGED
    if method == "picard":
        assert first.status[1] == SolverStatus.MAX_ITER and first.status[3] == SolverStatus.DIVERGED
    for sol in outcomes[1:]:
        assert torch.equal(sol.status, first.status)
        assert torch.equal(sol.iterations, first.iterations)
        torch.testing.assert_close(sol.z, first.z, atol=1e-12, rtol=0, equal_nan=True)


@pytest.mark.parametrize("seed", range(6))
def test_moving_rows_in_place_keeps_the_same_rows_as_copying_them(seed):
    g = torch.Generator().manual_seed(seed)
    active = torch.rand(9, generator=g) < 0.6
    active[int(torch.randint(9, (1,), generator=g))] = True
    kept = KeptRows.of(active)
    assert sorted(kept.index.tolist()) == active.nonzero().squeeze(1).tolist()  # exactly the active rows
    assert (kept.holes < len(kept.index)).all() and (kept.donors >= len(kept.index)).all()
    buffer = torch.randn(9, 3, 4, generator=g)
    copied = kept.take(buffer)
    moved = kept.move(buffer.clone())
    assert torch.equal(moved, copied)
    # rows that stay within the new size keep their place: only donors are copied
    assert int((kept.index != torch.arange(len(kept.index))).sum()) == len(kept.holes)


def test_compact_at_is_validated():
    with pytest.raises(ValueError, match=r"compact_at must be a finite number in \[0, 1\], got 1.5"):
        LoopOptions(method="anderson", compact_at=1.5)


@pytest.mark.parametrize("cls", [Anderson, Broyden])
def test_low_precision_states_keep_float32_solver_memory(cls):
    x = torch.randn(4, 6).to(torch.bfloat16)
    solver = cls()
    state = solver.init(x, x, torch.float32)
    for k in range(1, 4):
        fx = (0.5 * x.float() + 0.1).to(torch.bfloat16)
        x_next, state = solver.step(state, x, fx, fx.float() - x.float(), k)
        assert x_next.dtype == torch.float32  # the loop casts back to the state's dtype
        x = x_next.to(torch.bfloat16)
    assert all(v.dtype == torch.float32 for v in state.values())


def rising_and_falling(batch=6, dim=5, seed=2):
    """z ↦ A_b z + b_b with A_b = 0.6·I + s_b·S (S the shift): for large s_b the residual of
    plain iteration rises for a few steps before it falls (A_b is far from normal); s_0 = 0 falls
    from the start."""
    g = torch.Generator().manual_seed(seed)
    shift = torch.diag(torch.ones(dim - 1, dtype=torch.float64), 1)
    A = 0.6 * torch.eye(dim, dtype=torch.float64) + torch.linspace(0, 3, batch, dtype=torch.float64)[:, None, None] * shift
    b = torch.randn(batch, dim, generator=g, dtype=torch.float64)

    def step(z, A, b):
        return torch.bmm(A, z.unsqueeze(2)).squeeze(2) + b

    return (lambda z: step(z, A, b)), BatchedMap(step, A, b), torch.zeros(batch, dim, dtype=torch.float64)


@pytest.mark.parametrize("method", list(OURS))
def test_the_returned_iterate_is_the_best_one_when_residuals_rise_and_fall(method):
    closure, batched, z0 = rising_and_falling()
    alone = batched.select(torch.tensor([5]))  # the sample that rises most, alone: at times no row improves
    for f, z in ((closure, z0), (batched, z0), (alone, z0[5:])):
        sol = solve(f, z, method, rtol=1e-14, max_iter=8, trace=True)
        image = solve(f, z, method, rtol=1e-14, max_iter=8, return_image=True)
        last = solve(f, z, method, rtol=1e-14, max_iter=8, keep="last")
        assert (sol.trace[1:] > sol.trace[:-1]).any()
        # the best iterate is not always the last one ...
        assert (sol.abs_residual <= last.abs_residual).all() and (sol.abs_residual < last.abs_residual).any()
        # ... and the state returned is the one whose residual is reported (not overwritten later)
        fz = f(sol.z)
        expected = (fz - sol.z).norm(dim=1) / fz.norm(dim=1)
        torch.testing.assert_close(sol.residual.double(), expected, rtol=1e-6, atol=0)
        torch.testing.assert_close(image.z, fz, rtol=0, atol=1e-12)  # f of that same iterate


@pytest.mark.parametrize("method", list(OURS))
@pytest.mark.parametrize("return_image", [False, True])
def test_a_sample_whose_map_fails_keeps_its_best_iterate_intact(method, return_image):
    # The map returns NaN at its 5th call: the answer is the best of the first four iterates, and
    # the solver's step after the failure (which writes the next point) must not overwrite it.
    calls = []

    def f(z):
        calls.append(1)
        out = 0.5 * torch.tanh(z) + 1.0
        return out * float("nan") if len(calls) == 5 else out

    z0 = torch.zeros(1, 6, dtype=torch.float64)
    sol = solve(f, z0, method, rtol=1e-14, max_iter=20, return_image=return_image)
    calls.clear()
    ref = solve(f, z0, method, rtol=1e-14, max_iter=4, return_image=return_image)
    assert sol.status.tolist() == [int(SolverStatus.NONFINITE)] and sol.nfe == 5
    assert torch.equal(sol.z, ref.z) and torch.equal(sol.abs_residual, ref.abs_residual)


@pytest.mark.parametrize("method", list(OURS))
@pytest.mark.parametrize("keep, return_image", [("best", False), ("best", True), ("last", False)])
def test_the_branch_free_path_of_accelerators_gives_the_same_answers(monkeypatch, method, keep, return_image):
    # On the CPU the loop and Broyden read masks on the host to skip work (a copy instead of a
    # masked one, no zeroing of skipped updates, rows moved one by one); elsewhere they take the
    # branch-free path. Both must agree exactly, on problems where rows freeze at different times
    # and where the best iterate is not always the last.
    problems = [mixed_problem(), rising_and_falling()]
    kw = {"rtol": 1e-10, "max_iter": 40, "keep": keep, "return_image": return_image, "trace": True}
    for closure, batched, z0 in problems:
        for f in (closure, batched):
            on_cpu = run_solver(f, z0, OURS[method](), LoopOptions(method=method, check_every=1, **kw))
            with monkeypatch.context() as m:
                m.setattr(base, "host_reads_are_free", lambda device: False)
                branch_free = run_solver(f, z0, OURS[method](), LoopOptions(method=method, check_every=1, **kw))
            for name in ("z", "residual", "iterations", "status", "trace"):
                assert torch.equal(getattr(on_cpu, name), getattr(branch_free, name)), name


@pytest.mark.parametrize("method", ["anderson", "broyden", "torchdeq:anderson"])
def test_recording_autograd_history_is_refused_where_the_steps_cannot_be_recorded(method):
    """Anderson and Broyden write their steps into their own buffers (``out=``); a function solver
    runs its own loop: neither can backpropagate through the iterations, so asking is an error at
    construction (it used to fail inside the first step, or be ignored)."""
    with pytest.raises(ConfigError, match=f"method '{method}' cannot record.*use method='picard'"):
        LoopOptions(method=method, differentiable=True)
    with pytest.raises(ConfigError, match="cannot record"):
        LoopOptions(method=method).with_(differentiable=True)
    with pytest.raises(ConfigError, match="cannot record"):
        LoopOptions(method="picard", differentiable=True).with_(method=method)


def test_picard_records_the_loop_written_out_and_its_gradient():
    f, _ = contractive_tanh(3, 10, torch.tensor([0.5, 0.9, 0.97], dtype=torch.float64), seed=6)
    leaf = torch.full((3, 10), 0.1, dtype=torch.float64, requires_grad=True)
    with torch.enable_grad():
        sol = LoopOptions(method="picard", differentiable=True, rtol=1e-300, max_iter=5, keep="last",
                          return_image=True)(f, leaf)  # z_5 = f(z_4)
    z = leaf
    for _ in range(5):
        z = f(z)
    torch.testing.assert_close(sol.z, z, rtol=1e-12, atol=0)
    sol.z.sum().backward()
    want = torch.autograd.grad(z.sum(), leaf)[0]
    torch.testing.assert_close(leaf.grad, want, rtol=1e-12, atol=0)


def test_anderson_mixing_must_lie_in_0_1():
    assert Anderson(beta=1.0).beta == 1.0 and Anderson(beta=0.3).beta == 0.3
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="beta"):
            Anderson(beta=bad)


def test_broyden_takes_the_exact_step_only_when_it_evaluates_its_own_points():
    assert Broyden.evaluates_its_own_points(torch.zeros(2, dtype=torch.float32), torch.float32)
    assert Broyden.evaluates_its_own_points(torch.zeros(2, dtype=torch.float64), torch.float64)
    assert not Broyden.evaluates_its_own_points(torch.zeros(2, dtype=torch.bfloat16), torch.float32)
