"""Banded local attention: the same values and gradients as dense attention under the (N, N) mask,
checked against a per-token loop written out by hand, on 1-D and 2-D grids, edges included."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from deqloop.errors import ConfigError
from deqloop.model import LoopedDEQ
from deqloop.model.local_attention import (
    BANDED_MIN_RATIO,
    LocalWindow,
    banded_attention,
    local_mask,
    local_pattern,
)

CPU = torch.device("cpu")
GRIDS = [((7,), 3), ((9,), 5), ((3,), 7), ((6,), 1), ((4, 5), 3), ((5, 3), 5), ((2, 6), 3)]


def by_hand(q, k, v, grid, window):
    """For each token: the cells within window // 2 on every axis, softmax of q·k/√d over them."""
    B, H, N, d = q.shape
    r = window // 2
    cells = list(itertools.product(*[range(g) for g in grid]))  # row-major
    out = torch.zeros_like(q)
    for i, ci in enumerate(cells):
        js = [j for j, cj in enumerate(cells) if all(abs(a - b) <= r for a, b in zip(ci, cj))]
        s = torch.stack([(q[:, :, i] * k[:, :, j]).sum(-1) / math.sqrt(d) for j in js], -1)  # (B, H, |js|)
        p = torch.softmax(s, -1)
        out[:, :, i] = sum(p[..., n : n + 1] * v[:, :, j] for n, j in enumerate(js))
    return out


def qkv(grid, B=2, H=3, d=4, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    N = math.prod(grid)
    return [torch.randn(B, H, N, d, generator=g, dtype=dtype, requires_grad=True) for _ in range(3)]


@pytest.mark.parametrize("grid, window", GRIDS, ids=str)
def test_banded_equals_the_formula_and_dense_masked_attention(grid, window):
    q, k, v = qkv(grid)
    banded = banded_attention(q, k, v, LocalWindow(grid, window))
    dense = F.scaled_dot_product_attention(q, k, v, attn_mask=local_mask(grid, window, CPU))
    torch.testing.assert_close(banded, by_hand(q, k, v, grid, window), atol=1e-12, rtol=0)
    torch.testing.assert_close(banded, dense, atol=1e-6, rtol=0)
    w = torch.randn_like(banded)  # gradients of a random projection, all three inputs
    gb = torch.autograd.grad((banded * w).sum(), (q, k, v))
    gd = torch.autograd.grad((dense * w).sum(), (q, k, v))
    for a, b in zip(gb, gd):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_an_edge_token_sees_only_the_cells_inside_the_grid():
    # 1-D, window 3: token 0 attends to tokens 0 and 1 only. With q = 0 its weights are equal,
    # so its output is the mean of v_0 and v_1; the last token's the mean of the last two.
    q, k, v = qkv((5,), B=1, H=1, d=2)
    with torch.no_grad():
        q.zero_()
    y = banded_attention(q, k, v, LocalWindow((5,), 3))
    torch.testing.assert_close(y[0, 0, 0], (v[0, 0, 0] + v[0, 0, 1]) / 2)
    torch.testing.assert_close(y[0, 0, 2], (v[0, 0, 1] + v[0, 0, 2] + v[0, 0, 3]) / 3)
    torch.testing.assert_close(y[0, 0, 4], (v[0, 0, 3] + v[0, 0, 4]) / 2)
    # 2-D 3×3, window 3: the corner sees its 2×2 block, the centre all nine cells.
    q, k, v = qkv((3, 3), B=1, H=1, d=4)
    with torch.no_grad():
        q.zero_()
    y = banded_attention(q, k, v, LocalWindow((3, 3), 3))
    torch.testing.assert_close(y[0, 0, 0], v[0, 0, [0, 1, 3, 4]].mean(0))
    torch.testing.assert_close(y[0, 0, 4], v[0, 0].mean(0))


def test_second_order_and_forward_mode_derivatives_match_the_dense_math_form():
    grid, window = (4, 5), 3
    q, k, v = qkv(grid)
    pattern, mask = LocalWindow(grid, window), local_mask(grid, window, CPU)

    def dense(q, k, v):
        att = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).masked_fill(~mask, float("-inf"))
        return torch.softmax(att, -1) @ v

    t = [torch.randn_like(q) for _ in range(3)]
    _, jb = torch.func.jvp(lambda *a: banded_attention(*a, pattern), (q, k, v), tuple(t))
    _, jd = torch.func.jvp(dense, (q, k, v), tuple(t))
    torch.testing.assert_close(jb, jd, atol=1e-10, rtol=0)
    (gb,) = torch.autograd.grad(banded_attention(q, k, v, pattern).pow(2).sum(), q, create_graph=True)
    (gd,) = torch.autograd.grad(dense(q, k, v).pow(2).sum(), q, create_graph=True)
    torch.testing.assert_close(torch.autograd.grad(gb.sum(), k)[0], torch.autograd.grad(gd.sum(), k)[0],
                               atol=1e-10, rtol=0)


def test_bf16_inputs_softmax_in_float32():
    q, k, v = qkv((40,), dtype=torch.float32)
    ref = banded_attention(q, k, v, LocalWindow((40,), 5))
    low = banded_attention(*(t.bfloat16() for t in (q, k, v)), LocalWindow((40,), 5))
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), ref, atol=3e-2, rtol=3e-2)


def test_the_pattern_is_chosen_by_size():
    small, large = BANDED_MIN_RATIO * 3 - 1, BANDED_MIN_RATIO * 3
    assert isinstance(local_pattern((small,), 3, CPU), torch.Tensor)
    assert local_pattern((large,), 3, CPU) == LocalWindow((large,), 3)
    assert isinstance(local_pattern((9, 9), 3, CPU), torch.Tensor)  # 81 < 48 · 9
    assert local_pattern((21, 21), 3, CPU) == LocalWindow((21, 21), 3)  # 441 ≥ 432
    assert isinstance(local_pattern((600,), 3, CPU, banded=False), torch.Tensor)
    assert local_pattern((6,), 3, CPU, banded=True) == LocalWindow((6,), 3)
    with pytest.raises(ConfigError, match="odd positive kernel size, got 4"):
        local_pattern((600,), 4, CPU)
    with pytest.raises(ConfigError, match=r"grid \(6,\) needs 6 tokens, got 7"):
        banded_attention(*qkv((7,)), LocalWindow((6,), 3))


@pytest.mark.parametrize("grid", [(160,), (3, 150)], ids=str)
def test_the_model_step_is_the_same_with_either_pattern(grid):
    model = LoopedDEQ(vocab_size=4, num_classes=2, grid=grid, width=16, heads=2, attention="local",
                      window=3, recall="internal").double()
    x = torch.randint(0, 4, (2, *grid))
    e = model.embed(x)
    z = torch.randn_like(e, requires_grad=True)
    cos, sin, pattern = model._geometry(grid, CPU)
    assert pattern == LocalWindow(grid, 3)  # large enough for the banded form
    flat = [t.reshape(2, -1, 16) for t in (z, e)]
    banded = model.block(*flat, cos, sin, pattern)
    dense = model.block(*flat, cos, sin, local_mask(grid, 3, CPU))
    torch.testing.assert_close(banded, dense, atol=1e-6, rtol=0)
    torch.testing.assert_close(model.step(z, e).reshape(2, -1, 16), banded)
    ga = torch.autograd.grad(banded.square().sum(), [z, *model.parameters()], allow_unused=True, retain_graph=True)
    gb = torch.autograd.grad(dense.square().sum(), [z, *model.parameters()], allow_unused=True)
    for a, b in zip(ga, gb):
        if a is not None:
            torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_banded_attention_compiles_without_tracing_its_cache():
    """Under torch.compile the window mask is computed in the graph, not read from the eager cache
    (dynamo warns on a call to an lru_cache-wrapped function); the values stay the dense ones."""
    import warnings

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 40, 8) for _ in range(3))
    compiled = torch.compile(lambda q, k, v: banded_attention(q, k, v, LocalWindow((40,), 5)), backend="eager")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y = compiled(q, k, v)
    assert not [w for w in caught if "lru_cache" in str(w.message)]
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=local_mask((40,), 5, CPU))
    torch.testing.assert_close(y, ref, atol=1e-6, rtol=1e-5)
