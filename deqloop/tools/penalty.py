"""The Jacobian penalty (Bai et al. 2021): a Hutchinson estimate of ‖∂f/∂z‖²_F per dimension."""

from __future__ import annotations

from typing import Any, Callable

import torch

from deqloop.solvers.packing import Packing, packed_map

__all__ = ["jacobian_penalty"]


def jacobian_penalty(f: Callable[[Any], Any], z: Any, *, generator: torch.Generator | None = None,
                     eps: torch.Tensor | None = None) -> torch.Tensor:
    """‖εᵀ ∂f/∂z‖² / numel(ε) at the state ``z`` (detached), ε ~ N(0, I): an unbiased estimate of
    ‖∂f/∂z‖²_F / dim over the batch, differentiable in what ``f`` closes over (one
    vector-Jacobian product with ``create_graph=True``; ``f`` must be twice differentiable).

    ``generator`` draws ε (where it lives, then moved to ``z``'s device and dtype: a generator on
    ``z``'s device draws without a copy, see :func:`deqloop.seeds.generator`); ``eps`` gives it
    instead, shaped as ``f(z)`` (packed to ``(B, N)`` when ``z`` is a tuple, list or dict). A
    scalar, at least float32. Add it to the loss with a weight (deq-seq uses 0.1).
    """
    if not isinstance(z, torch.Tensor):
        packing = Packing.of("z", z)
        f, z = packed_map(f, packing), packing.pack(z, "z")
    z_in = z.detach().requires_grad_()
    fz = f(z_in)
    if eps is None:  # drawn where the generator lives, then given fz's device and dtype
        eps = torch.randn(fz.shape, generator=generator, device=generator.device if generator is not None else fz.device)
    eps = eps.to(fz)
    (vjp,) = torch.autograd.grad(fz, z_in, eps, create_graph=True)
    return vjp.to(torch.promote_types(vjp.dtype, torch.float32)).pow(2).sum() / eps.numel()
