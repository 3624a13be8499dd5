"""Batched Krylov methods against dense numpy answers, on explicit matrices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deqloop.analysis.gmres import gmres
from deqloop.analysis.krylov import krylov_schur



class MatrixOp:
    """v ↦ A_b v_b for a stack of matrices ``A`` (B, n, n); ``select`` optional; counts calls."""

    def __init__(self, A: torch.Tensor, selectable: bool = True, calls: list | None = None):
        self.A = A
        self.calls = [] if calls is None else calls
        if selectable:
            self.select = lambda index: MatrixOp(self.A[index], True, self.calls)

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        self.calls.append(v.shape[0])
        return torch.bmm(self.A, v.unsqueeze(2)).squeeze(2)


def with_spectrum(eigs: list[list[complex]], seed: int = 0) -> torch.Tensor:
    """Real matrices S D S⁻¹ with the given eigenvalues (conjugate pairs as 2×2 rotation blocks)."""
    rng = np.random.default_rng(seed)
    mats = []
    for vals in eigs:
        n = sum(1 if v.imag == 0 else 2 for v in vals)
        D = np.zeros((n, n))
        i = 0
        for v in vals:
            if v.imag == 0:
                D[i, i] = v.real
                i += 1
            else:
                D[i : i + 2, i : i + 2] = [[v.real, v.imag], [-v.imag, v.real]]
                i += 2
        S = rng.standard_normal((n, n)) + 3 * np.eye(n)
        mats.append(S @ D @ np.linalg.inv(S))
    return torch.tensor(np.stack(mats))


def sorted_by_modulus(w: np.ndarray) -> np.ndarray:
    return w[np.argsort(-np.abs(w), kind="stable")]


def test_krylov_schur_matches_numpy_on_random_nonsymmetric_matrices():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(4, 80, 80, generator=g, dtype=torch.float64) / 80**0.5
    A[1] *= 3.0
    A[2] = A[2] + A[2].T  # symmetric: real spectrum
    v0 = torch.randn(4, 80, generator=g, dtype=torch.float64)
    est = krylov_schur(MatrixOp(A), v0, nev=4, ncv=24, tol=1e-12, maxiter=200)
    assert est.converged.all()
    for b in range(4):
        ref = sorted_by_modulus(np.linalg.eigvals(A[b].numpy()))
        assert est.radius[b].item() == pytest.approx(abs(ref[0]), rel=1e-10)
        lead = est.eigenvalues[b, 0].item()
        assert np.min(np.abs(ref - lead)) < 1e-9 * abs(ref[0])
        assert est.residual[b] <= 1e-12


def test_krylov_schur_dominant_complex_pair_and_its_conjugate():
    rest = [0.5, -0.4, 0.3 + 0.2j, 0.1, -0.2, 0.25, 0.05 + 0.1j, 0.45, -0.35, 0.15, 0.2, -0.1] * 3
    eigs = [[1.2 + 0.5j, *rest], [0.9, 0.0, *rest], [-0.95 + 0.0j, 0.9, *rest]]
    A = with_spectrum(eigs)
    v0 = torch.randn(3, A.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    est = krylov_schur(MatrixOp(A), v0, nev=3, ncv=12, tol=1e-12, maxiter=300)
    assert est.converged.all()
    assert est.radius.tolist() == pytest.approx([abs(1.2 + 0.5j), 0.9, 0.95], rel=1e-10)
    pair = est.eigenvalues[0, :2].numpy()
    assert sorted(pair.imag) == pytest.approx([-0.5, 0.5], abs=1e-9)  # the pair, not one half of it
    assert est.eigenvalues[2, 1].real.item() == pytest.approx(0.9, abs=1e-9)


def test_krylov_schur_smallest_eigenvalue_of_a_positive_definite_operator():
    g = torch.Generator().manual_seed(7)
    M = torch.randn(3, 60, 60, generator=g, dtype=torch.float64) / 60**0.5
    A = torch.eye(60, dtype=torch.float64) - 0.95 * M / torch.linalg.matrix_norm(M, 2)[:, None, None]
    AtA = A.transpose(1, 2) @ A  # σ_min(A)² at the bottom of a positive spectrum
    v0 = torch.randn(3, 60, generator=g, dtype=torch.float64)
    est = krylov_schur(MatrixOp(AtA), v0, nev=2, ncv=20, tol=1e-11, maxiter=300, which="SM")
    assert est.converged.all()
    ref = np.linalg.eigvalsh(AtA.numpy())[:, 0]
    assert est.eigenvalues[:, 0].real.numpy() == pytest.approx(ref, rel=1e-9)
    with pytest.raises(ValueError, match="which"):
        krylov_schur(MatrixOp(AtA), v0, which="LR")


def test_krylov_schur_small_dimension_zero_matrix_and_masking_path_agree():
    g = torch.Generator().manual_seed(2)
    A = torch.randn(3, 5, 5, generator=g, dtype=torch.float64)
    A[1] = 0.0  # invariant subspace at once: ρ = 0
    A[2] = torch.diag(torch.tensor([2.0, 1.0, 0.5, 0.25, 0.125], dtype=torch.float64))  # Krylov space may break down
    v0 = torch.randn(3, 5, generator=g, dtype=torch.float64)
    for selectable in (True, False):
        est = krylov_schur(MatrixOp(A, selectable), v0, nev=2, ncv=20, tol=1e-12, maxiter=20)
        assert est.converged.all()
        assert est.radius[0].item() == pytest.approx(np.abs(np.linalg.eigvals(A[0].numpy())).max(), rel=1e-10)
        assert est.radius[1].item() == 0.0
        assert est.radius[2].item() == pytest.approx(2.0, rel=1e-12)


def test_krylov_schur_finished_examples_leave_the_batch():
    A = with_spectrum([[0.9, *np.linspace(0.2, 0.01, 31)], [*np.linspace(1.0, 0.9, 30), 0.5, 0.4]])
    v0 = torch.randn(2, A.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    op = MatrixOp(A)
    est = krylov_schur(op, v0, nev=1, ncv=8, tol=1e-10, maxiter=500)
    assert est.matvecs[0] < est.matvecs[1]  # the easy one stopped early
    assert 1 in op.calls  # and was evaluated without it afterwards
    assert est.matvecs.sum().item() == sum(op.calls)


def test_krylov_schur_reports_non_convergence_honestly():
    A = with_spectrum([[1.0, -0.999, 0.998, *np.linspace(0.5, 0.99, 40)]])
    v0 = torch.ones(1, A.shape[1], dtype=torch.float64)
    est = krylov_schur(MatrixOp(A), v0, nev=1, ncv=4, tol=1e-14, maxiter=2)
    assert not est.converged[0]
    assert est.residual[0] > 1e-14
    # what it returns is its current best Ritz value, near the eigenvalue −0.999, short of ρ = 1:
    # reported, not passed off as converged
    assert est.eigenvalues[0, 0].item() == pytest.approx(-0.999, abs=1e-3)
    assert est.radius[0].item() < 1.0


def nonnormal(diag: list[float], coupling: float, rest: list[float], seed: int = 0) -> torch.Tensor:
    """Q T Qᵀ with Q a random rotation and T upper triangular: ``diag`` on a bidiagonal (Jordan-like)
    block with ``coupling`` above its diagonal, then the diagonal ``rest``. Its eigenvalues are the
    diagonal entries exactly; ‖Tᵏ‖ grows for a while before it decays."""
    rng = np.random.default_rng(seed)
    s, n = len(diag), len(diag) + len(rest)
    T = np.diag(diag + rest) + np.diag([coupling] * (s - 1) + [0.0] * len(rest), 1)
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return torch.tensor(Q @ T @ Q.T)[None]


def test_krylov_schur_on_a_non_normal_block_where_power_iteration_is_slow():
    A = nonnormal(list(np.linspace(0.9, 0.7, 6)), 2.0, list(np.linspace(-0.6, 0.6, 40)))
    v0 = torch.randn(1, A.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    est = krylov_schur(MatrixOp(A), v0, nev=2, ncv=20, tol=1e-13, maxiter=50)
    assert est.converged.all() and est.matvecs[0] <= 40
    assert est.radius[0].item() == pytest.approx(0.9, rel=1e-7)  # the triangular factor's top entry
    # the power estimate ‖Aᵏ v‖^(1/k) from the same start: over 20 % high after as many products,
    # still over 4 % high after ten times as many
    v = v0[0].numpy()

    def power(k: int) -> float:
        return (np.linalg.norm(np.linalg.matrix_power(A[0].numpy(), k) @ v) / np.linalg.norm(v)) ** (1 / k)

    assert power(int(est.matvecs[0])) > 1.2 * 0.9
    assert power(10 * int(est.matvecs[0])) > 1.04 * 0.9


def test_warm_start_reaches_the_same_estimate_in_fewer_products():
    # three operators, each with a different dominant eigenvalue: real, a complex pair, negative real
    rest = list(np.linspace(-0.7, 0.7, 50))
    A = with_spectrum([[0.95, 0.9 + 0.1j, *rest], [1.1 + 0.3j, 0.8, *rest], [-0.9, 0.85 + 0.05j, *rest]])
    E = torch.randn(A.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) / A.shape[1] ** 0.5
    v0 = torch.randn(3, A.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    gen = lambda: torch.Generator().manual_seed(2)
    before = krylov_schur(MatrixOp(A), v0, nev=2, ncv=20, tol=1e-6, generator=gen())
    assert before.vectors.shape == (3, A.shape[1], 2)
    torch.testing.assert_close(before.vectors.transpose(1, 2) @ before.vectors,
                               torch.eye(2, dtype=torch.float64).expand(3, 2, 2), rtol=0, atol=1e-12)
    A2 = A + 1e-3 * E  # the operator after a small change (one training step)
    ref = np.abs(np.linalg.eigvals(A2.numpy())).max(axis=1)
    cold = krylov_schur(MatrixOp(A2), v0, nev=2, ncv=20, tol=1e-6, generator=gen())
    warm = krylov_schur(MatrixOp(A2), before.vectors, nev=2, ncv=20, tol=1e-6, generator=gen())
    assert cold.converged.all() and warm.converged.all()
    assert cold.radius.numpy() == pytest.approx(ref, rel=1e-6)
    assert warm.radius.numpy() == pytest.approx(ref, rel=1e-6)
    # measured: cold 25 / 17 / 22 products, warm 20 / 15 / 16
    assert (warm.matvecs < cold.matvecs).all()
    assert warm.matvecs.sum() <= 0.85 * cold.matvecs.sum()
    # at the monitor's looser tolerance the saving is larger (measured: 41 products cold, 28 warm)
    loose = [krylov_schur(MatrixOp(A2), s, nev=2, ncv=20, tol=1e-3, generator=gen()) for s in (v0, before.vectors)]
    assert loose[1].matvecs.sum() <= 0.75 * loose[0].matvecs.sum()
    assert loose[1].radius.numpy() == pytest.approx(ref, rel=1e-2)


def test_warm_start_vectors_of_a_dominant_complex_pair():
    rest = list(np.linspace(-0.7, 0.7, 30))
    A = with_spectrum([[0.8 + 0.6j, *rest], [-1.5, 0.0, *rest]])
    v0 = torch.randn(2, A.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    est = krylov_schur(MatrixOp(A), v0, nev=2, ncv=12, tol=1e-10)
    assert est.converged.all()
    assert est.radius.tolist() == pytest.approx([1.0, 1.5], rel=1e-9)
    assert sorted(est.eigenvalues[0].imag.tolist()) == pytest.approx([-0.6, 0.6], abs=1e-9)
    # the vectors span the pair's invariant plane: A maps it into itself
    X = est.vectors[0]
    AX = A[0] @ X
    assert (AX - X @ (X.T @ AX)).norm().item() < 1e-8
    # restarted from them (measured: 22 / 15 products against 25 / 19 from a random vector)
    again = krylov_schur(MatrixOp(A), est.vectors, nev=2, ncv=12, tol=1e-10, generator=torch.Generator().manual_seed(0))
    assert again.converged.all() and again.radius.tolist() == pytest.approx([1.0, 1.5], rel=1e-9)
    assert (again.matvecs < est.matvecs).all()


def test_krylov_schur_stops_at_its_product_budget():
    A = with_spectrum([[1.0, -0.999, 0.998, *np.linspace(0.5, 0.99, 40)]] * 2)
    v0 = torch.randn(2, A.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    op = MatrixOp(A)
    est = krylov_schur(op, v0, nev=2, ncv=6, tol=1e-12, maxiter=100, max_matvecs=9)
    assert est.matvecs.tolist() == [9, 9] and sum(op.calls) == 18
    assert not est.converged.any() and (est.residual > 1e-12).all()
    with pytest.raises(ValueError, match="max_matvecs"):
        krylov_schur(op, v0, max_matvecs=0)
    with pytest.raises(ValueError, match="start"):
        krylov_schur(op, v0[0])


@pytest.mark.parametrize("selectable", [True, False])
def test_gmres_matches_numpy_solve(selectable):
    g = torch.Generator().manual_seed(5)
    n = 50
    A = torch.eye(n, dtype=torch.float64) + 0.9 * torch.randn(4, n, n, generator=g, dtype=torch.float64) / n**0.5
    b = torch.randn(4, n, generator=g, dtype=torch.float64)
    b[2] = 0.0
    sol = gmres(MatrixOp(A, selectable), b, rtol=1e-12, restart=15, maxiter=50)
    ref = np.linalg.solve(A.numpy(), b.numpy()[:, :, None])[..., 0]
    assert sol.converged.all()
    assert np.abs(sol.x.numpy() - ref).max() < 1e-9 * np.abs(ref).max()
    assert sol.residual[2] == 0.0 and sol.matvecs[2] == 0  # zero right-hand side: x = 0 at once
    true = (b - torch.bmm(A, sol.x.unsqueeze(2)).squeeze(2)).norm(dim=1) / b.norm(dim=1).clamp_min(1e-300)
    assert torch.allclose(sol.residual[[0, 1, 3]], true[[0, 1, 3]], rtol=1e-6, atol=1e-15)


def test_gmres_reports_its_true_residual_when_it_runs_out():
    g = torch.Generator().manual_seed(6)
    n = 60
    A = torch.eye(n, dtype=torch.float64) + 2.0 * torch.randn(1, n, n, generator=g, dtype=torch.float64) / n**0.5
    b = torch.randn(1, n, generator=g, dtype=torch.float64)
    sol = gmres(MatrixOp(A), b, rtol=1e-12, restart=3, maxiter=2)
    true = ((b - A[0] @ sol.x[0]).norm() / b.norm()).item()
    assert not sol.converged[0]
    assert sol.residual[0].item() == pytest.approx(true, rel=1e-10)
    assert sol.matvecs[0] == 2 * 3 + 2  # two cycles of 3 steps, plus two true-residual checks


def test_argument_validation():
    A = torch.eye(3, dtype=torch.float64).expand(1, 3, 3)
    v = torch.ones(1, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="ncv"):
        krylov_schur(MatrixOp(A), v, nev=4, ncv=4)
    with pytest.raises(ValueError, match="tol"):
        krylov_schur(MatrixOp(A), v, tol=2.0)
    with pytest.raises(ValueError, match="restart"):
        gmres(MatrixOp(A), v, restart=0)
