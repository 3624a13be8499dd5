"""Local attention in O(N · window^ndim): each token attends only to the cells of its window.

``attention="local"`` lets token i see token j when ``|i_a − j_a| ≤ r`` on every grid axis a
(``r = window // 2``). Dense attention with an ``(N, N)`` mask computes all N² scores and throws
most away; the banded form here gathers, for each token, the ``window^ndim`` keys and values of
its neighbourhood (shifted views of the zero-padded grid, one per offset in the window), takes ``window^ndim`` scores per token, masks the neighbours that fall outside the grid and
softmaxes over the rest. It computes the same function as the masked dense form (the
tests compare the two to 1e-6, at the edges and in the gradients), in plain tensor ops, so it
also supports forward-mode AD and double backward.

Which form is faster depends on the size: on short sequences the fused dense kernel wins, on long
ones the banded form (its cost grows as N, the dense form's as N²). :func:`local_pattern` picks
one by the rule :data:`BANDED_MIN_RATIO` (measured by ``benchmarks/throughput.py --local``) and
returns either the dense mask or a :class:`LocalWindow`, which the attention layer dispatches on.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from deqloop.errors import ConfigError
from deqloop.model.rope import grid_coordinates

__all__ = ["BANDED_MIN_RATIO", "LocalWindow", "banded_attention", "local_mask", "local_pattern"]

# The banded form is used when N / window^ndim (tokens per neighbourhood) is at least this. Measured
# on the 2-core CPU (fp32, 1 thread, forward + backward, head dim 8, 4 heads): see
# benchmarks/throughput.py --local and README ("Local attention").
BANDED_MIN_RATIO = 48


@dataclass(frozen=True)
class LocalWindow:
    """The banded local-attention pattern of ``grid`` with an odd kernel size ``window``.

    Passed to the attention layer in place of a dense mask; hashable, so ``torch.compile``
    treats it as a constant.
    """

    grid: tuple[int, ...]
    window: int

    @property
    def neighbours(self) -> int:
        """``window ** ndim``: the scores each token takes."""
        return self.window ** len(self.grid)


def _check_window(window: int) -> None:
    if window < 1 or window % 2 == 0:
        raise ConfigError(f"window must be an odd positive kernel size, got {window}")


@functools.lru_cache(maxsize=64)
def local_mask(grid: tuple[int, ...], window: int, device: torch.device) -> torch.Tensor:
    """``(N, N)`` bool, True where token j lies within ``window // 2`` of token i on every axis.

    Tokens are the cells of ``grid`` in row-major order. The result is cached; do not modify it.
    """
    _check_window(window)
    with torch.inference_mode(False), torch.no_grad():
        coords = grid_coordinates(grid, device)  # (N, ndim)
        dist = (coords[:, None, :] - coords[None, :, :]).abs()  # (N, N, ndim)
        return (dist <= window // 2).all(dim=-1)  # (N, N)


def local_pattern(
    grid: tuple[int, ...], window: int, device: torch.device, banded: bool | None = None
) -> torch.Tensor | LocalWindow:
    """The local-attention pattern for ``grid``: a :class:`LocalWindow` (banded) where it is faster,
    else the dense ``(N, N)`` :func:`local_mask`. ``banded`` forces one form (None: by size)."""
    _check_window(window)
    if banded is None:
        banded = math.prod(grid) >= BANDED_MIN_RATIO * window ** len(grid)
    return LocalWindow(tuple(grid), window) if banded else local_mask(tuple(grid), window, device)


def _offsets(grid: tuple[int, ...], window: int) -> list[tuple[slice, ...]]:
    """Index of each neighbour's cells in the zero-padded grid: for offset o (row-major over the
    window box), ``padded[:, *slices[o]]`` holds, at cell n, the neighbour n + o − r."""
    return [(slice(None),) + tuple(slice(o, o + g) for o, g in zip(off, grid))
            for off in itertools.product(range(window), repeat=len(grid))]


def _pad(t: torch.Tensor, nd: int, r: int) -> torch.Tensor:
    """``(M, *grid, d)`` zero-padded by r cells on both sides of every grid axis."""
    return F.pad(t, (0, 0) + (r, r) * nd)


@functools.lru_cache(maxsize=64)
def _inside(grid: tuple[int, ...], window: int, device: torch.device) -> torch.Tensor:
    """``(N, window^ndim)`` bool: is neighbour o of token n inside the grid (not padding)?"""
    with torch.inference_mode(False), torch.no_grad():
        ones = _pad(torch.ones(1, *grid, 1, device=device), len(grid), window // 2)
        inside = torch.stack([ones[idx][..., 0] for idx in _offsets(grid, window)], dim=-1)  # (1, *grid, K)
        return inside.reshape(-1, window ** len(grid)) > 0


def banded_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: LocalWindow) -> torch.Tensor:
    """softmax over each token's window of ``q · k / √d``, times v; ``(B, H, N, d)`` inputs.

    The same values as dense attention under :func:`local_mask` (row-major tokens of
    ``pattern.grid``); neighbours outside the grid get no weight. Softmax runs in at least float32.
    Keys and values are zero-padded once; each of the ``window^ndim`` neighbours is a shifted view
    of the padded grid, so the work is O(N · window^ndim · d).
    """
    B, H, N, d = q.shape
    grid, w = pattern.grid, pattern.window
    if math.prod(grid) != N:
        raise ConfigError(f"local attention over grid {grid} needs {math.prod(grid)} tokens, got {N}")
    nd, r = len(grid), w // 2
    offsets = _offsets(grid, w)
    qg = q.reshape(B * H, *grid, d)  # (BH, *grid, d)
    kp = _pad(k.reshape(B * H, *grid, d), nd, r)  # (BH, *(grid + 2r), d)
    vp = _pad(v.reshape(B * H, *grid, d), nd, r)  # (BH, *(grid + 2r), d)
    scores = torch.stack([(qg * kp[idx]).sum(-1) for idx in offsets], dim=-1)  # (BH, *grid, K)
    scores = scores * (1.0 / math.sqrt(d))
    acc = torch.promote_types(scores.dtype, torch.float32)  # bf16 scores softmax in float32
    # the cache is for eager calls; a compiled graph computes the mask once, as a constant of its own
    inside = (_inside.__wrapped__ if torch.compiler.is_compiling() else _inside)(grid, w, q.device)  # (N, K)
    scores = scores.reshape(B * H, N, -1).to(acc).masked_fill(~inside, float("-inf"))
    p = torch.softmax(scores, dim=-1).to(v.dtype).reshape(B * H, *grid, -1)  # (BH, *grid, K)
    y = p[..., 0:1] * vp[offsets[0]]
    for i, idx in enumerate(offsets[1:], start=1):
        y = y + p[..., i : i + 1] * vp[idx]  # (BH, *grid, d)
    return y.reshape(B, H, N, d)
