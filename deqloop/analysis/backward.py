"""The implicit backward solve at a batch of fixed points, run once as training would run it."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from deqloop.adjoint import BackwardWarning, Implicit, fixed_point
from deqloop.analysis.sensitivity import unit_directions
from deqloop.solvers import BatchedMap

__all__ = ["backward_stats"]


def backward_stats(
    model,
    e: Tensor,
    z_star: Tensor,
    *,
    solver: str,
    solver_options: dict[str, Any],
    options: dict[str, Any] | None,
    seed: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Run the implicit backward pass once, as training would, for a random unit cotangent.

    The forward "solve" starts at ``z_star`` and takes one step (``max_iter=1``), so the
    backward solve sees exactly the reference fixed point. Gradients flow to ``e`` and to the
    trainable parameters; the statistics recorded by :func:`deqloop.fixed_point` are returned as
    ``(converged, iterations, residual)`` ``(B,)`` tensors.
    """
    adjoint = model.config.solve.adjoint
    bopts = adjoint.options() if isinstance(adjoint, Implicit) else {}
    bopts.update(options or {})
    B = e.shape[0]
    gen = torch.Generator().manual_seed(seed + 2)
    v = unit_directions(B, 1, e[0].numel(), gen)[:, 0].to(dtype=z_star.dtype, device=z_star.device).reshape(z_star.shape)
    with torch.enable_grad():
        e_in = e.detach().requires_grad_(True)
        z, sol = fixed_point(BatchedMap(model.step, e_in), z_star.detach(), method=solver, backward="implicit",
                             max_iter=1, backward_options=bopts, **solver_options)
        inputs = [e_in] + [p for p in model.parameters() if p.requires_grad]
        if z.requires_grad:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", BackwardWarning)
                torch.autograd.grad(z, inputs, v, allow_unused=True)
    st = sol.backward
    if st.converged is None:  # nothing upstream needs a gradient: no backward solve to run
        return (torch.ones(B, dtype=torch.bool), torch.zeros(B, dtype=torch.long), torch.zeros(B, dtype=torch.float64))
    return st.converged.cpu(), st.iterations.cpu(), st.residual.double().cpu()
