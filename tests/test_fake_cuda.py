"""The code paths a GPU run takes, on a fake ``cuda:0`` (tests/fake_cuda.py): a tensor made on the
CPU and mixed with a device tensor, a CPU generator given to a CUDA draw, or ``.numpy()`` of a
device tensor fails here as it would on a GPU."""

from __future__ import annotations

import pytest
import torch

from deqloop.analysis.krylov import krylov_schur
from deqloop.tasks.sudoku_solver import is_valid_solution
from fake_cuda import CUDA, OnDevice, fake_cuda


def test_the_fake_device_enforces_cudas_rules_and_counts_host_reads():
    with fake_cuda() as gpu:
        d = torch.ones(3, device=CUDA)
        assert d.device == CUDA and isinstance(d, OnDevice)
        with pytest.raises(RuntimeError, match="same device"):
            torch.zeros(3) + d
        with pytest.raises(RuntimeError, match="generator"):
            torch.randn(3, device=CUDA, generator=torch.Generator().manual_seed(0))
        with pytest.raises(TypeError, match="numpy"):
            d.numpy()
        assert (torch.tensor(2.0) * d).device == CUDA  # a 0-dim host tensor is a legal operand
        assert torch.zeros(3).to(CUDA).device == CUDA and d.cpu().device.type == "cpu"
        assert gpu.reads == 0
        assert float(d.sum()) == 3.0 and bool(d.all()) and d.tolist() == [1.0, 1.0, 1.0]
        assert gpu.reads == 3
        model = torch.nn.Linear(3, 2).to(CUDA)
        assert model.weight.device == CUDA and isinstance(model.weight, torch.nn.Parameter)
        model(d).sum().backward()
        assert model.weight.grad.device == CUDA
    assert not torch.cuda.is_available()  # restored


def test_sudoku_validity_runs_on_the_device():
    solved = torch.tensor([[(3 * (r % 3) + r // 3 + c) % 9 + 1 for c in range(9)] for r in range(9)])
    broken = solved.clone()
    broken[0, :2] = broken[0, :2].flip(0)
    with fake_cuda():
        ok = is_valid_solution(torch.stack([solved, broken]).to(CUDA))
        assert ok.device == CUDA
        assert ok.cpu().tolist() == [True, False]


def test_krylov_schur_draws_a_fresh_direction_on_the_device_after_a_breakdown():
    g = torch.Generator().manual_seed(2)
    A = torch.randn(2, 5, 5, generator=g, dtype=torch.float64)
    A[1] = 0.0  # the Krylov space breaks down at once: a random direction replaces it
    v0 = torch.randn(2, 5, generator=g, dtype=torch.float64)
    on_cpu = krylov_schur(lambda v: torch.bmm(A, v.unsqueeze(2)).squeeze(2), v0, nev=1, ncv=5, tol=1e-12,
                          maxiter=5, generator=torch.Generator().manual_seed(0))
    with fake_cuda():
        Ad = A.to(CUDA)
        est = krylov_schur(lambda v: torch.bmm(Ad, v.unsqueeze(2)).squeeze(2), v0.to(CUDA), nev=1, ncv=5,
                           tol=1e-12, maxiter=5, generator=torch.Generator().manual_seed(0))
    assert est.radius.tolist() == pytest.approx(on_cpu.radius.tolist(), rel=1e-12)
    assert est.radius[1].item() == 0.0
