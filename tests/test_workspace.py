"""Scratch memory reused across solves: the same buffers come back, none is handed out twice at
once, the cap drops the oldest, and no solve reads a buffer before writing it (a pool filled with
NaN changes no answer)."""

from __future__ import annotations

import pytest
import torch
from helpers import contractive_tanh

from deqloop import solve
from deqloop.solvers import BatchedMap, workspace


@pytest.fixture(autouse=True)
def empty_pool():
    workspace.clear()
    yield
    workspace.clear()
    workspace.set_limit(1 << 30)


def test_a_scope_gets_back_the_buffers_of_the_last_one():
    with workspace.scope():
        a = workspace.empty(3, 4, dtype=torch.float32, device="cpu")
        b = workspace.empty(3, 4, dtype=torch.float32, device="cpu")
        assert a is not b  # both held at once: two buffers
    assert workspace.idle_bytes() == 2 * 3 * 4 * 4
    with workspace.scope():
        again = {id(workspace.empty(3, 4, dtype=torch.float32, device="cpu")) for _ in range(3)}
        other = workspace.empty(3, 4, dtype=torch.float64, device="cpu")  # another dtype: a new one
    assert {id(a), id(b)} < again and id(other) not in again
    assert workspace.idle_bytes() == 3 * 3 * 4 * 4 + 3 * 4 * 8


def test_outside_a_scope_or_off_the_cpu_nothing_is_pooled():
    a = workspace.empty(2, dtype=torch.float32, device="cpu")
    with workspace.scope():
        m = workspace.empty(2, dtype=torch.float32, device="meta")
        with workspace.scope(enabled=False):
            off = workspace.empty(2, dtype=torch.float32, device="cpu")
    assert m.device.type == "meta"
    assert workspace.idle_bytes() == 0 and a is not off


def test_nested_scopes_hold_their_own_buffers_and_return_them_on_error():
    with workspace.scope():
        outer = workspace.empty(5, dtype=torch.float32, device="cpu")
        with pytest.raises(RuntimeError, match="boom"):
            with workspace.scope():
                inner = workspace.empty(5, dtype=torch.float32, device="cpu")
                assert inner is not outer
                raise RuntimeError("boom")
        # the inner buffer is idle again, the outer one still held
        assert workspace.empty(5, dtype=torch.float32, device="cpu") is inner
    assert workspace.idle_bytes() == 2 * 5 * 4


def test_the_limit_drops_the_oldest_idle_buffers():
    workspace.set_limit(100)
    with workspace.scope():
        old = workspace.empty(10, dtype=torch.float32, device="cpu")  # 40 bytes
    with workspace.scope():
        workspace.empty(12, dtype=torch.float32, device="cpu")  # 48 bytes: 88 in all, kept
    assert workspace.idle_bytes() == 88
    with workspace.scope():
        workspace.empty(5, dtype=torch.float32, device="cpu")  # 20 more: 108 > 100, the oldest goes
    assert workspace.idle_bytes() == 68
    with workspace.scope():
        assert workspace.empty(10, dtype=torch.float32, device="cpu") is not old
    workspace.set_limit(0)
    assert workspace.idle_bytes() == 0
    with pytest.raises(ValueError, match=r"workspace limit must be a number of bytes ≥ 0, got -1"):
        workspace.set_limit(-1)


def poison_idle_buffers() -> int:
    """Fill every idle buffer with NaN (and integer ones with a huge value); returns how many."""
    n = 0
    for _, buffer in workspace._idle.values():
        buffer.fill_(float("nan") if buffer.is_floating_point() else 2**40)
        n += 1
    return n


@pytest.mark.parametrize("method", ["picard", "anderson", "broyden"])
@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("return_image", [False, True])
def test_no_solve_reads_a_buffer_before_writing_it(method, batched, return_image):
    contraction = torch.linspace(0.3, 0.97, 10, dtype=torch.float64)
    f, (W, U, x, c) = contractive_tanh(10, 6, contraction, seed=3)

    def step(z, W, U, x):
        return torch.tanh(torch.bmm(W, z.unsqueeze(2)).squeeze(2) + torch.bmm(U, x.unsqueeze(2)).squeeze(2) + c)

    g = BatchedMap(step, W, U, x) if batched else f
    z0 = torch.zeros(10, 6, dtype=torch.float64)
    kw = {"rtol": 1e-9, "max_iter": 60, "trace": True, "return_image": return_image}
    workspace.set_limit(0)
    fresh = solve(g, z0, method, **kw)  # every buffer allocated afresh
    workspace.set_limit(1 << 30)
    solve(g, z0, method, **kw)  # leaves its buffers idle
    assert poison_idle_buffers() >= 2
    reused = solve(g, z0, method, **kw)
    assert fresh.converged.all()
    for name in ("z", "residual", "iterations", "status", "trace"):
        assert torch.equal(getattr(reused, name), getattr(fresh, name)), name
