"""Rotary position embedding over a 1-D sequence or an axial 2-D grid.

Each head vector of size ``d`` is viewed as ``d/2`` planes: plane ``i`` pairs dimension ``i``
with dimension ``i + d/2`` and is rotated by the angle ``position · θ_i``.

- 1-D grid ``(L,)``: all ``d/2`` planes turn with the token's index, ``θ_i = base^(-i/(d/2))``.
- 2-D grid ``(H, W)``: axial. The first ``d/4`` planes turn with the row index, the last ``d/4``
  with the column index, each group with frequencies ``θ_j = base^(-j/(d/4))``. This needs
  ``d % 4 == 0``.

Either way ``⟨rope(q, m), rope(k, n)⟩`` depends on the positions only through ``m − n``, so a
model trained on one length or board size runs on another.

Tables are built once per (grid, head dim, base, device, dtype) and cached.
"""

from __future__ import annotations

import functools
import math

import torch

from deqloop.errors import ConfigError


def check_head_dim(head_dim: int, grid_ndim: int) -> None:
    """Raise ``ValueError`` unless ``head_dim`` can carry RoPE on a grid with ``grid_ndim`` axes."""
    multiple = 2 * grid_ndim
    if head_dim % multiple != 0:
        raise ConfigError(
            f"rotary embedding on a {grid_ndim}-D grid needs a head dim divisible by {multiple}, "
            f"got {head_dim} (head dim = width / heads)"
        )


def grid_coordinates(grid: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """``(N, ndim)`` integer coordinates of the cells of ``grid`` in row-major order."""
    axes = [torch.arange(n, device=device) for n in grid]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(grid))


@functools.lru_cache(maxsize=64)
def rope_table(
    grid: tuple[int, ...], head_dim: int, base: float, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cos, sin)``, each ``(N, head_dim / 2)``, for the tokens of ``grid`` in row-major order.

    The result is cached; callers must not modify it in place.
    """
    check_head_dim(head_dim, len(grid))
    # Built as ordinary tensors even when first asked for under inference_mode or no_grad, so the
    # cached table can later be saved for backward.
    with torch.inference_mode(False), torch.no_grad():
        planes = head_dim // (2 * len(grid))  # planes per axis
        exponent = torch.arange(planes, device=device, dtype=torch.float64) / planes
        theta = torch.exp(-math.log(base) * exponent)  # (planes,)
        coords = grid_coordinates(grid, device).to(torch.float64)  # (N, ndim)
        angles = (coords[:, :, None] * theta).reshape(coords.shape[0], -1)  # (N, ndim·planes)
        return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` of shape ``(..., N, d)`` by the ``(N, d/2)`` tables; same shape and dtype.

    The rotation is computed in the tables' dtype (float32 or float64) and cast back.
    """
    xf = x.to(cos.dtype)
    x1, x2 = xf.chunk(2, dim=-1)  # (..., N, d/2) each
    out = torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out.to(x.dtype)
