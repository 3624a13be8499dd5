"""The stability framework against dense computations on tiny float64 models.

Every matrix-free quantity (Jacobian products, ρ, σ_max, ‖(I − J)⁻¹‖, the implicit-function
sensitivity) is compared with ``torch.autograd.functional.jacobian`` of ``model.step`` (with its
default fused attention, so the math-attention path of the analysis is checked too) followed by
numpy eigenvalues, singular values and solves.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deqloop import solve
from deqloop.analysis import (
    AnalysisOptions,
    LoopJacobian,
    analyze,
    input_sensitivity,
    leading_eigenvalues,
    local_smoothness,
    resolvent_norm,
    sigma_max,
)
from deqloop.model import LoopedDEQ
from deqloop.solvers import BatchedMap

RECALLS = ("none", "external", "internal")
GRIDS = ((3,), (2, 2))
TIGHT = dict(rtol=1e-12, max_iter=200)



def tiny_model(recall: str, grid=(3,), seed: int = 0, **kwargs) -> LoopedDEQ:
    """Width 8, 2 heads, float64, post-norm. The MLP output bias is drawn large (std 1) so the
    normalized state depends on z only weakly: the loop map contracts (ρ ≈ 0.5–0.9)."""
    torch.manual_seed(seed)
    model = LoopedDEQ(vocab_size=5, num_classes=2, grid=grid, width=8, heads=2, recall=recall, **kwargs).double()
    with torch.no_grad():
        model.block.mlp.proj.bias.normal_(0, 1.0)
    return model


def distinct_inputs(batch: int, grid, seed: int = 0) -> torch.Tensor:
    """``batch`` different token grids over a vocabulary of 5."""
    g = torch.Generator().manual_seed(seed)
    seen, rows = set(), []
    while len(rows) < batch:
        x = torch.randint(0, 5, grid, generator=g)
        key = tuple(x.reshape(-1).tolist())
        if key not in seen:
            seen.add(key)
            rows.append(x)
    return torch.stack(rows)


def fixed_points(model, x, init="zeros"):
    with torch.no_grad():
        e = model.embed(x)
        z0 = model.initial_state(e, init)
        sol = solve(BatchedMap(model.step, e), z0, "anderson", **TIGHT)
    assert sol.converged.all()
    return sol.z, e


def dense(model, z, e):
    """Per-example dense ∂f/∂z and ∂f/∂e, ``(B, n, n)`` float64 numpy."""
    shape = (1, *z.shape[1:])
    Jz, Je = [], []
    for b in range(z.shape[0]):
        fz = lambda v, b=b: model.step(v.reshape(shape), e[b : b + 1]).reshape(-1)
        fe = lambda v, b=b: model.step(z[b : b + 1], v.reshape(shape)).reshape(-1)
        Jz.append(torch.autograd.functional.jacobian(fz, z[b].reshape(-1)))
        Je.append(torch.autograd.functional.jacobian(fe, e[b].reshape(-1)))
    return torch.stack(Jz).numpy(), torch.stack(Je).numpy()


def spectral_radius(J):
    return np.abs(np.linalg.eigvals(J)).max(axis=-1)


def resolvent(J):
    eye = np.eye(J.shape[-1])
    return np.array([np.linalg.norm(np.linalg.inv(eye - Jb), 2) for Jb in J])


def close(a, b, rel=1e-6):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    assert np.all(np.abs(a - b) <= rel * np.abs(b)), f"{a} vs {b}"


# ----------------------------------------------------------------------------------------------
# Jacobian products


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("recall", RECALLS)
def test_jacobian_products_match_dense(recall, grid):
    model = tiny_model(recall, grid)
    x = distinct_inputs(3, grid)
    z, e = fixed_points(model, x)
    jac = LoopJacobian.from_model(model, z, e)
    Jz, Je = dense(model, z, e)
    g = torch.Generator().manual_seed(1)
    v = torch.randn(3, jac.dim, generator=g, dtype=torch.float64)
    vn = v.numpy()[:, :, None]
    tr = lambda A: A.transpose(0, 2, 1)
    assert np.abs(jac.jvp(v).numpy() - (Jz @ vn)[..., 0]).max() < 1e-12
    assert np.abs(jac.vjp(v).numpy() - (tr(Jz) @ vn)[..., 0]).max() < 1e-12
    assert np.abs(jac.jvp_e(v).numpy() - (Je @ vn)[..., 0]).max() < 1e-12
    assert np.abs(jac.vjp_e(v).numpy() - (tr(Je) @ vn)[..., 0]).max() < 1e-12
    if recall == "none":
        assert np.abs(Je).max() == 0 and jac.jvp_e(v).abs().max() == 0  # e enters only through z₀
    sub = jac.select(torch.tensor([2, 0]))
    assert torch.allclose(sub.jvp(v[[2, 0]]), jac.jvp(v)[[2, 0]], rtol=0, atol=1e-13)
    assert model.block.attn.backend == "sdpa"  # the math backend was only borrowed


@pytest.mark.parametrize(
    "arch",
    [
        dict(norm="sandwich", attention="local", window=3, grid=(5,)),
        dict(norm="pre", qk_norm=False, grid=(2, 2)),
        dict(norm="peri", recall="external", grid=(3,)),
    ],
)
def test_jacobian_products_match_dense_for_other_architectures(arch):
    arch = dict(arch)
    model = tiny_model(arch.pop("recall", "internal"), arch.pop("grid"), **arch)
    x = distinct_inputs(2, model.config.arch.grid)
    with torch.no_grad():
        e = model.embed(x)
    z = torch.randn(e.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)  # any state
    jac = LoopJacobian.from_model(model, z, e)
    Jz, Je = dense(model, z, e)
    v = torch.randn(2, jac.dim, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    vn = v.numpy()[:, :, None]
    assert np.abs(jac.jvp(v).numpy() - (Jz @ vn)[..., 0]).max() < 1e-12
    assert np.abs(jac.vjp(v).numpy() - (Jz.transpose(0, 2, 1) @ vn)[..., 0]).max() < 1e-12
    assert np.abs(jac.jvp_e(v).numpy() - (Je @ vn)[..., 0]).max() < 1e-12


def test_jacobian_of_a_compiled_model_runs_eagerly_and_bad_vectors_are_refused(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda *a, **k: pytest.fail("the Jacobian products must not compile"))
    eager = tiny_model("internal")
    model = tiny_model("internal", compile=True)
    model.load_state_dict(eager.state_dict())
    x = distinct_inputs(2, (3,))
    with torch.no_grad():
        e = model.embed(x)
    v = torch.randn(2, e[0].numel(), dtype=e.dtype)
    torch.testing.assert_close(LoopJacobian.from_model(model, e, e).jvp(v), LoopJacobian.from_model(eager, e, e).jvp(v))
    jac = LoopJacobian.from_model(tiny_model("internal"), e, e)
    with pytest.raises(ValueError, match="expected vectors of shape"):
        jac.jvp(torch.zeros(2, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="unknown operator kind"):
        jac.operator("J^2")


# ----------------------------------------------------------------------------------------------
# Geometry of J


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("recall", RECALLS)
def test_spectral_radius_and_sigma_max_match_dense(recall, grid):
    model = tiny_model(recall, grid)
    z, e = fixed_points(model, distinct_inputs(4, grid))
    jac = LoopJacobian.from_model(model, z, e)
    Jz, _ = dense(model, z, e)
    est = leading_eigenvalues(jac, method="krylov", k=3, ncv=10, tol=1e-10, maxiter=200)
    assert est.converged.all()
    close(est.radius, spectral_radius(Jz))
    for b in range(4):  # the leading eigenvalue itself, not only its modulus
        ref = np.linalg.eigvals(Jz[b])
        assert np.min(np.abs(ref - est.eigenvalues[b, 0].item())) < 1e-6 * np.abs(ref).max()
    s = sigma_max(jac, ncv=10, tol=1e-12)
    assert s.converged.all()
    close(s.value, np.linalg.svd(Jz, compute_uv=False)[:, 0])


@pytest.mark.parametrize(
    "recall", [pytest.param("none", marks=pytest.mark.slow), pytest.param("external", marks=pytest.mark.slow), "internal"]
)
def test_arpack_matches_dense(recall):
    model = tiny_model(recall)
    z, e = fixed_points(model, distinct_inputs(3, (3,)))
    Jz, _ = dense(model, z, e)
    est = leading_eigenvalues(LoopJacobian.from_model(model, z, e), method="arpack", k=3, ncv=12, tol=1e-12, maxiter=500)
    assert est.converged.all() and est.method == ["arpack"] * 3
    close(est.radius, spectral_radius(Jz))


def test_the_arpack_fallback_matches_dense():
    model = tiny_model("external")
    z, e = fixed_points(model, distinct_inputs(2, (3,)))
    Jz, _ = dense(model, z, e)
    jac = LoopJacobian.from_model(model, z, e)
    # ARPACK allowed a single restart gives up; Krylov–Schur takes over.
    fallback = leading_eigenvalues(jac, method="arpack", k=2, ncv=5, tol=1e-14, maxiter=1)
    assert set(fallback.method) == {"arpack→krylov"}
    assert fallback.converged.all()  # else the comparison below would check nothing
    close(fallback.radius, spectral_radius(Jz))


@pytest.mark.parametrize("method", ["normal", pytest.param("inverse", marks=pytest.mark.slow)])
def test_resolvent_norm_matches_dense(method):
    model = tiny_model("external")
    z, e = fixed_points(model, distinct_inputs(3, (3,)))
    Jz, _ = dense(model, z, e)
    jac = LoopJacobian.from_model(model, z, e)
    if method == "normal":
        r = resolvent_norm(jac, method="normal", ncv=12, tol=1e-12, maxiter=100)
    else:
        r = resolvent_norm(jac, method="inverse", ncv=8, tol=1e-12, maxiter=50, linear_rtol=1e-13)
        assert (r.inner_residual <= 1e-13).all()
    assert r.converged.all()
    close(r.value, resolvent(Jz))
    with pytest.raises(ValueError, match="unknown resolvent method 'svd'; allowed: 'normal', 'inverse'"):
        resolvent_norm(jac, method="svd")


# ----------------------------------------------------------------------------------------------
# Input dependence


@pytest.mark.parametrize("recall", RECALLS)
def test_ift_sensitivity_matches_dense_solve(recall):
    model = tiny_model(recall)
    z, e = fixed_points(model, distinct_inputs(3, (3,)))
    Jz, Je = dense(model, z, e)
    jac = LoopJacobian.from_model(model, z, e)
    V = torch.randn(3, 2, jac.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    V = V / V.norm(dim=2, keepdim=True)
    sens = input_sensitivity(jac, V, rtol=1e-13, restart=30, maxiter=20)
    eye = np.eye(jac.dim)
    ref = np.stack([[np.linalg.norm(np.linalg.solve(eye - Jz[b], Je[b] @ V[b, j].numpy())) for j in range(2)] for b in range(3)])
    if recall == "none":
        assert sens.norms.abs().max() == 0 and np.abs(ref).max() == 0
    else:
        assert sens.converged.all()
        close(sens.norms, ref)
        close(sens.rms, np.sqrt((ref**2).mean(axis=1)))


def test_ift_sensitivity_draws_its_directions_from_the_seed_and_checks_them():
    """directions=k draws k unit directions per example from ``seed`` (the same as passing
    unit_directions of that seed); k = 1 is allowed; anything else names the shape or the value."""
    from deqloop.analysis.sensitivity import unit_directions

    model = tiny_model("external")
    z, e = fixed_points(model, distinct_inputs(2, (3,)))
    jac = LoopJacobian.from_model(model, z, e)
    V = unit_directions(2, 1, jac.dim, torch.Generator().manual_seed(5))
    torch.testing.assert_close(V.norm(dim=2), torch.ones(2, 1, dtype=torch.float64))
    by_count = input_sensitivity(jac, 1, rtol=1e-12, seed=5)
    by_tensor = input_sensitivity(jac, V, rtol=1e-12)
    torch.testing.assert_close(by_count.norms, by_tensor.norms)
    assert by_count.norms.shape == (2, 1)
    # one example: its products are the GMRES solve's applications of I − J plus one J_e v a direction
    one = LoopJacobian.from_model(model, z[:1], e[:1])
    calls = {"jvp": 0, "jvp_e": 0}
    for name in calls:
        def counted(v, name=name, inner=getattr(one, name)):
            calls[name] += 1
            return inner(v)
        setattr(one, name, counted)
    sens = input_sensitivity(one, 3, rtol=1e-12)
    assert calls["jvp_e"] == 3 and calls["jvp"] > 0
    assert sens.matvecs.tolist() == [calls["jvp"] + calls["jvp_e"]]
    for bad in (0, True, 1.5):
        with pytest.raises(ValueError, match="directions must be a positive integer or a"):
            input_sensitivity(jac, bad)
    from deqloop.analysis import local_smoothness

    for eps in (0.0, -1e-2, float("nan")):
        with pytest.raises(ValueError, match="eps must be > 0"):
            local_smoothness(model, e, z, eps=eps)
    for shape in ((2, 1), (3, 1, jac.dim), (2, 1, jac.dim + 1)):
        with pytest.raises(ValueError, match=r"directions must have shape \(B, d, n\)"):
            input_sensitivity(jac, torch.ones(shape, dtype=torch.float64))


@pytest.mark.parametrize("recall", ("external", "internal"))
def test_local_smoothness_is_the_finite_difference_of_the_ift_derivative(recall):
    model = tiny_model(recall)
    z, e = fixed_points(model, distinct_inputs(3, (3,)))
    Jz, Je = dense(model, z, e)
    u = torch.randn(3, z[0].numel(), dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    u = u / u.norm(dim=1, keepdim=True)
    sm = local_smoothness(model, e, z, eps=1e-6, direction=u, solver="anderson", rtol=1e-14, max_iter=300)
    assert sm.converged.all()
    eye = np.eye(Jz.shape[-1])
    ref = [np.linalg.norm(np.linalg.solve(eye - Jz[b], Je[b] @ u[b].numpy())) for b in range(3)]
    close(sm.ratio, ref, rel=1e-4)  # first order in eps
    # a direction of any length is made a unit one; none given: the first of unit_directions(seed)
    long = local_smoothness(model, e, z, eps=1e-6, direction=10 * u, solver="anderson", rtol=1e-14, max_iter=300)
    torch.testing.assert_close(long.ratio, sm.ratio)
    from deqloop.analysis.sensitivity import unit_directions

    drawn = unit_directions(3, 1, z[0].numel(), torch.Generator().manual_seed(4))[:, 0]
    by_seed = local_smoothness(model, e, z, eps=1e-6, seed=4, solver="anderson", rtol=1e-14, max_iter=300)
    by_hand = local_smoothness(model, e, z, eps=1e-6, direction=drawn, solver="anderson", rtol=1e-14, max_iter=300)
    torch.testing.assert_close(by_seed.ratio, by_hand.ratio)


# ----------------------------------------------------------------------------------------------
# analyze


EXACT = dict(
    max_iter=200, rtol=1e-12, eig_tol=1e-10, eig_maxiter=200, eig_ncv=10, eig_k=3, resolvent_maxiter=50,
    linear_rtol=1e-13, linear_maxiter=20, refine_rtol=1e-13, progress=False,
)


@pytest.mark.parametrize("recall", RECALLS)
def test_analyze_matches_dense_computations(recall):
    model = tiny_model(recall, (2, 2))
    x = distinct_inputs(5, (2, 2))
    report = analyze(model, x, inits=("zeros", "embed"), directions=3, **EXACT)
    z, e = fixed_points(model, x, "zeros")
    Jz, Je = dense(model, z, e)
    assert report.batch == 5 and report.grid == [2, 2] and report.state_dim == 32 and report.reference_init == "zeros"
    assert report.converged_fraction == 1.0
    close(report.spectral_radius, spectral_radius(Jz))
    close(report.sigma_max, np.linalg.svd(Jz, compute_uv=False)[:, 0])
    close(report.resolvent_norm, resolvent(Jz))
    assert report.eig_converged.all() and report.sigma_converged.all() and report.resolvent_converged.all()
    rho = spectral_radius(Jz)
    assert report.regime == ["contractive" if r < 0.95 else "expansive" if r > 1.05 else "critical" for r in rho]
    # The IFT sensitivity: the RMS of ‖(I − J)⁻¹ J_e v‖ over 3 unit directions drawn from the
    # options' seed (0), zero without recall.
    eye = np.eye(32)
    V = torch.randn(5, 3, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    V = (V / V.norm(dim=2, keepdim=True)).numpy()
    sens = np.array([np.sqrt(np.mean([np.linalg.norm(np.linalg.solve(eye - Jz[b], Je[b] @ V[b, j])) ** 2
                                      for j in range(3)])) for b in range(5)])
    flat = z.reshape(5, -1).double()
    spread = float((flat - flat.mean(0)).pow(2).sum(1).mean().sqrt() / flat.pow(2).sum(1).mean().sqrt())
    if recall == "none":
        assert report.input_sensitivity.abs().max() == 0 and np.abs(sens).max() == 0
        assert report.distinct_fixed_points == 1 and report.fixed_point_spread < 1e-12
    else:
        close(report.input_sensitivity, sens)
        assert report.distinct_fixed_points == 5 and report.fixed_point_spread == pytest.approx(spread, rel=1e-6)
    # Contractive maps: the backward solve converges, and both inits reach the same point.
    assert report.backward_converged.all()
    assert (report.backward_iterations > 0).all()
    assert report.agreement == {"zeros/embed": 1.0}
    assert set(report.timings) >= {"solve[zeros]", "solve[embed]", "spectrum", "backward"}


def test_input_sensitivity_of_analyze_uses_the_seeded_directions():
    model = tiny_model("internal")
    x = distinct_inputs(3, (3,))
    opts = AnalysisOptions(inits=("zeros",), measures=("sensitivity",), directions=2, seed=7, **{k: v for k, v in EXACT.items() if k != "progress"}, progress=False)
    report = analyze(model, x, opts)
    z, e = fixed_points(model, x)
    Jz, Je = dense(model, z, e)
    g = torch.Generator().manual_seed(7)
    V = torch.randn(3, 2, 24, generator=g, dtype=torch.float64)
    V = V / V.norm(dim=2, keepdim=True)
    eye = np.eye(24)
    ref = [np.sqrt(np.mean([np.linalg.norm(np.linalg.solve(eye - Jz[b], Je[b] @ V[b, j].numpy())) ** 2 for j in range(2)])) for b in range(3)]
    close(report.input_sensitivity, ref)
    assert report.spectral_radius is None and report.regime is None  # not asked for


def test_recall_none_fixed_points_are_input_independent_internal_recall_are_not():
    x = distinct_inputs(8, (3,))
    fast = dict(inits=("zeros", "embed", "noise"), measures=(), progress=False, max_iter=100, rtol=1e-10)
    none = analyze(tiny_model("none"), x, **fast)
    internal = analyze(tiny_model("internal"), x, **fast)
    assert none.distinct_fixed_points == 1
    assert internal.distinct_fixed_points == 8
    assert none.fixed_point_spread < 1e-9 < 1e-3 < internal.fixed_point_spread
    for report in (none, internal):
        assert set(report.reachability) == {"zeros", "embed", "noise"}
        for r in report.reachability.values():
            assert r.converged.all()
            assert r.trace.shape == (int(r.iterations.max()), 8)
            # the geometric-mean decay (r_T / r_1)^(1/(T−1)) over each example's own T iterations
            T = r.iterations
            last = r.trace[T - 1, torch.arange(8)]
            expected = (last / r.trace[0]) ** (1.0 / (T - 1).double())
            torch.testing.assert_close(r.contraction, expected, rtol=1e-12, atol=0)
            torch.testing.assert_close(last, r.residual, rtol=0, atol=0)
            assert (r.contraction < 1).all()
        assert report.agreement == {"zeros/embed": 1.0, "zeros/noise": 1.0, "embed/noise": 1.0}


def test_non_convergence_is_reported_not_hidden():
    model = tiny_model("internal")
    x = distinct_inputs(4, (3,))
    report = analyze(model, x, inits=("embed",), max_iter=3, rtol=1e-12, measures=("spectrum",), progress=False)
    r = report.reachability["embed"]
    assert report.converged_fraction == 0.0 and not r.converged.any()
    assert (r.iterations == 3).all() and (r.residual > 1e-12).all()
    assert report.distinct_fixed_points == 0 and np.isnan(report.fixed_point_spread)
    # geometry still evaluated, at the best iterates: those of the same 3-iteration solve
    with torch.no_grad():
        e = model.embed(x)
        sol = solve(BatchedMap(model.step, e), e, model.config.solve.solver, rtol=1e-12, max_iter=3)
    Jz, _ = dense(model, sol.z, e)
    close(report.spectral_radius, spectral_radius(Jz), rel=1e-4)  # the default eig_tol is 1e-4


def test_options_are_validated_with_the_allowed_values():
    model = tiny_model("internal")
    x = distinct_inputs(2, (3,))
    with pytest.raises(TypeError, match=r"analyze got unknown key\(s\) \[.bogus.\]; allowed: inits"):
        analyze(model, x, bogus=1)
    with pytest.raises(ValueError, match="unknown init 'ones'; allowed: 'embed', 'zeros', 'noise'"):
        AnalysisOptions(inits=("ones",))
    with pytest.raises(ValueError, match="unknown measure"):
        AnalysisOptions(measures=("spectrum", "vibes"))
    with pytest.raises(ValueError, match="unknown eig_method 'lanczos'; allowed"):
        AnalysisOptions(eig_method="lanczos")
    with pytest.raises(ValueError, match="eig_ncv must be an integer ≥ 7"):
        AnalysisOptions(eig_k=6, eig_ncv=6)
    with pytest.raises(ValueError, match="delta"):
        AnalysisOptions(delta=0)
    with pytest.raises(ValueError, match="unknown solver"):
        AnalysisOptions(solver="newton")
    with pytest.raises(ValueError, match="must not repeat"):
        AnalysisOptions(inits=("zeros", "zeros"))
    assert AnalysisOptions(inits="zeros").inits == ("zeros",)


# ----------------------------------------------------------------------------------------------
# Larger problems (slow)


@pytest.mark.slow
def test_krylov_arpack_and_dense_agree_on_a_medium_model():
    # n = 16 tokens × width 16 = 256 per example.
    torch.manual_seed(3)
    model = LoopedDEQ(vocab_size=5, num_classes=2, grid=(4, 4), width=16, heads=2, recall="internal").double()
    with torch.no_grad():
        model.block.mlp.proj.bias.normal_(0, 1.0)
    x = distinct_inputs(2, (4, 4))
    z, e = fixed_points(model, x)
    Jz, _ = dense(model, z, e)
    jac = LoopJacobian.from_model(model, z, e)
    krylov = leading_eigenvalues(jac, method="krylov", k=4, ncv=20, tol=1e-10, maxiter=300)
    arpack = leading_eigenvalues(jac, method="arpack", k=4, ncv=20, tol=1e-12, maxiter=1000)
    assert krylov.converged.all() and arpack.converged.all()
    close(krylov.radius, spectral_radius(Jz))
    close(arpack.radius, spectral_radius(Jz))
    close(sigma_max(jac, ncv=20, tol=1e-12, maxiter=300).value, np.linalg.svd(Jz, compute_uv=False)[:, 0])
    r = resolvent_norm(jac, ncv=30, tol=1e-12, maxiter=300)
    assert r.converged.all()
    close(r.value, resolvent(Jz))


@pytest.mark.slow
def test_float32_analysis_with_default_options_agrees_with_float64():
    torch.manual_seed(4)
    model = LoopedDEQ(vocab_size=5, num_classes=2, grid=(4, 4), width=16, heads=2, recall="internal")
    with torch.no_grad():
        model.block.mlp.proj.bias.normal_(0, 1.0)
    x = distinct_inputs(6, (4, 4))
    r32 = analyze(model, x, progress=False)
    r64 = analyze(model.double(), x, progress=False, rtol=1e-10, max_iter=100, eig_tol=1e-8, linear_rtol=1e-10,
                  resolvent_maxiter=50)
    assert r32.converged_fraction == r64.converged_fraction == 1.0
    assert r32.distinct_fixed_points == r64.distinct_fixed_points == 6
    assert torch.allclose(r32.spectral_radius, r64.spectral_radius, rtol=1e-3)
    assert torch.allclose(r32.sigma_max, r64.sigma_max, rtol=1e-3)
    assert torch.allclose(r32.resolvent_norm, r64.resolvent_norm, rtol=1e-2)
    assert torch.allclose(r32.input_sensitivity, r64.input_sensitivity, rtol=1e-3)
    assert r32.regime == r64.regime
    assert r32.backward_converged.all()


class _Map:
    """A loop map ``f(z; e)`` given as a function, with the ``step`` that the analysis calls."""

    def __init__(self, f):
        self.step = f


def test_input_fd_starts_each_solve_at_its_own_input():
    # e: 2 examples of 3 values; Δe = eps·‖e‖·u with u the first basis vector
    e = torch.tensor([[1.0, 2.0, 2.0], [0.5, -1.0, 0.25]], dtype=torch.float64)
    u = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    kw = dict(eps=1e-2, direction=u, solver="anderson", rtol=1e-12, max_iter=200)
    # the loop that does nothing: every point is fixed, so z* = z₀; from its input it follows e exactly
    identity = _Map(lambda z, e: z)
    assert local_smoothness(identity, e, e, start="input", **kw).ratio.tolist() == pytest.approx([1.0, 1.0])
    assert local_smoothness(identity, e, e, **kw).ratio.tolist() == [0.0, 0.0]  # from z*: 0 by construction
    # two attracting fixed points ±a per coordinate (a = 3 tanh a), the map blind to e: locally constant
    wells = _Map(lambda z, e: 3 * torch.tanh(z))
    a = 2.984704585357887  # 3 tanh(a) = a
    sm = local_smoothness(wells, e, e, start="input", **kw)
    assert sm.converged.all() and sm.ratio.tolist() == pytest.approx([0.0, 0.0], abs=1e-8)
    # with recall, z* = 2e for f(z; e) = z/2 + e from any start: the ratio is ‖2Δe‖/‖Δe‖ = 2
    assert local_smoothness(_Map(lambda z, e: 0.5 * z + e), e, e, start="input", **kw).ratio.tolist() == \
        pytest.approx([2.0, 2.0], rel=1e-8)
    with torch.no_grad():
        z = solve(BatchedMap(wells.step, e), e, "anderson", rtol=1e-12, max_iter=200).z
    assert z.abs().reshape(-1).tolist() == pytest.approx([a] * 6, rel=1e-9)  # each coordinate at one of the wells
    with pytest.raises(ValueError, match="start must be one of fixed_point, input, got 'zeros'"):
        local_smoothness(identity, e, e, start="zeros", **kw)


def test_analyze_reports_the_finite_difference_from_the_input():
    model = tiny_model("none")
    x = distinct_inputs(3, (3,))
    report = analyze(model, x, inits=("embed",), measures=("input_fd",), **EXACT)
    e = model.embed(x).detach()
    u = torch.randn(3, e[0].numel(), dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ref = local_smoothness(model, e, e, eps=1e-2, direction=u, start="input", solver="anderson", rtol=1e-13,
                           max_iter=200)
    assert report.input_fd.tolist() == pytest.approx(ref.ratio.tolist(), rel=1e-6, abs=1e-9)
    assert report.local_smoothness is None and report.to_dict()["input_fd"] == pytest.approx(ref.ratio.tolist(),
                                                                                            rel=1e-6, abs=1e-9)


def test_contraction_factor_by_hand_and_where_it_is_undefined():
    """(r_T / r_1)^(1/(T−1)) over each example's own T iterations; NaN below two iterations and where a
    residual is zero or not finite."""
    from deqloop.analysis.reachability import contraction_factor

    trace = torch.tensor([[0.8, 1.0, 1.0, 0.0, 1.0, 1.0],
                          [0.2, 0.5, 0.5, 0.5, 0.0, float("inf")],
                          [0.0, 0.0, 0.25, 0.1, 0.0, 0.0],
                          [0.0, 0.0, 0.125, 0.1, 0.0, 0.0]], dtype=torch.float64)
    got = contraction_factor(trace, torch.tensor([1, 2, 4, 4, 2, 2]))
    assert torch.isnan(got[0]) and got[1].item() == pytest.approx(0.5)
    assert got[2].item() == pytest.approx(0.125 ** (1 / 3))
    assert torch.isnan(got[3:]).all()  # r_1 = 0, r_T = 0, r_T = inf


def test_noise_and_mixed_starts_draw_from_the_generator():
    """"noise": scale · N(0, I); "mixed": N(0, I) entries kept where U(0, 1) < 1/2 — both drawn from the
    generator in that order."""
    from deqloop.analysis.reachability import initial_state

    e = torch.zeros(2, 3, 4)
    got = initial_state(None, e, "noise", scale=0.3, generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    torch.testing.assert_close(got, (0.3 * torch.randn(e.shape, generator=g, dtype=torch.float64)).float())
    got = initial_state(None, e, "mixed", scale=0.3, generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    noise = torch.randn(e.shape, generator=g, dtype=torch.float64)
    keep = torch.rand(e.shape, generator=g, dtype=torch.float64) < 0.5
    torch.testing.assert_close(got, (noise * keep).float())
    assert 0 < int(keep.sum()) < keep.numel()


def test_count_distinct_clusters_by_relative_distance():
    """‖a − b‖ / max(‖a‖, ‖b‖) ≤ rtol joins the leader's cluster: 10.5 joins 10 (0.5 / 10.5 = 0.048), 12
    does not (2 / 12 = 0.17), the origin is 1 away from each (and 0 from itself)."""
    from deqloop.analysis.reachability import count_distinct

    z = torch.tensor([[10.0, 0.0], [10.5, 0.0], [12.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    assert count_distinct(z, 0.1) == 3
    assert count_distinct(z, 0.2) == 2
    assert count_distinct(z[:0], 0.1) == 0


def test_agreement_counts_the_examples_converged_in_both_within_rtol():
    """Relative distances 0.25 (2 against 1.5: at rtol, which counts), 0 and 0.75 over the three examples
    converged in both solves: 2 of 3; none converged in both: NaN of 0; one: 1 of 1."""
    from deqloop.analysis.reachability import agreement

    za = torch.tensor([[2.0, 0.0], [1.0, 0.0], [4.0, 0.0], [1.0, 1.0]])
    zb = torch.tensor([[1.5, 0.0], [1.0, 0.0], [1.0, 0.0], [5.0, 5.0]])
    ok_a, ok_b = torch.tensor([True, True, True, False]), torch.ones(4, dtype=torch.bool)
    fraction, n = agreement(za, zb, ok_a, ok_b, rtol=0.25)
    assert (fraction, n) == (pytest.approx(2 / 3), 3)
    fraction, n = agreement(za, zb, torch.zeros(4, dtype=torch.bool), ok_b, rtol=0.25)
    assert np.isnan(fraction) and n == 0
    assert agreement(za, zb, torch.tensor([False, True, False, False]), ok_b, rtol=0.25) == (1.0, 1)
