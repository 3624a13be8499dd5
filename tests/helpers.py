"""Problems shared by the solver and autograd tests."""

from __future__ import annotations

import torch


def contractive_tanh(batch: int, dim: int, contraction: float, dtype=torch.float64, seed: int = 0):
    """Per-sample maps z ↦ tanh(W_b z + U_b x_b + c) with ‖W_b‖₂ = contraction (a contraction)."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(batch, dim, dim, generator=g, dtype=torch.float64)
    W = W / torch.linalg.matrix_norm(W, 2)[:, None, None] * torch.as_tensor(contraction, dtype=torch.float64).reshape(-1, 1, 1)
    U = torch.randn(batch, dim, dim, generator=g, dtype=torch.float64) / dim**0.5
    x = torch.randn(batch, dim, generator=g, dtype=torch.float64)
    c = 0.1 * torch.randn(dim, generator=g, dtype=torch.float64)
    W, U, x, c = (t.to(dtype) for t in (W, U, x, c))

    def f(z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(torch.bmm(W, z.unsqueeze(2)).squeeze(2) + torch.bmm(U, x.unsqueeze(2)).squeeze(2) + c)

    return f, (W, U, x, c)


def linear_map(batch: int, dim: int, contraction: float, dtype=torch.float64, seed: int = 0):
    """z ↦ A z + b with ‖A‖₂ = contraction, and its fixed point (I − A)⁻¹ b."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(batch, dim, dim, generator=g, dtype=torch.float64)
    A = A / torch.linalg.matrix_norm(A, 2)[:, None, None] * contraction
    b = torch.randn(batch, dim, generator=g, dtype=torch.float64)
    exact = torch.linalg.solve(torch.eye(dim, dtype=torch.float64) - A, b)
    A, b = A.to(dtype), b.to(dtype)

    def f(z: torch.Tensor) -> torch.Tensor:
        return torch.bmm(A, z.unsqueeze(2)).squeeze(2) + b

    return f, exact.to(dtype)


@torch.no_grad()
def plain_iteration_scores(model, x: torch.Tensor, y: torch.Tensor, iters, rtol: float):
    """An evaluation written out by hand, independent of ``deqloop.eval``: plain iterations
    z ← f(z; e) from the model's own z₀; after each count in ``iters`` the fraction of examples
    with every cell right and the fraction of cells right; and the mean over examples of the
    first iteration t with ‖z_t − z_{t−1}‖ ≤ rtol·‖z_t‖ (the last iteration for those that never
    settle). Returns ``(exact, cells, settled_mean)``."""
    was_training = model.training
    model.eval()
    e = model.embed(x)
    z = model.initial_state(e)
    last = max(iters)
    settle = torch.full((len(x),), float(last))
    done = torch.zeros(len(x), dtype=torch.bool)
    exact, cells = [], []
    for t in range(1, last + 1):
        z_next = model.step(z, e)
        change = (z_next - z).flatten(1).float().norm(dim=1)
        newly = ~done & (change <= rtol * z_next.flatten(1).float().norm(dim=1))
        settle[newly] = float(t)
        done |= newly
        z = z_next
        if t in iters:
            right = model.readout(z).argmax(-1) == y
            exact.append(float(right.flatten(1).all(1).double().mean()))
            cells.append(float(right.double().mean()))
    model.train(was_training)
    return exact, cells, float(settle.mean())
