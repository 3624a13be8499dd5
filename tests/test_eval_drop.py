"""The iteration sweep that stops iterating settled examples (``drop_rtol``): the same curves and
settling statistics as the full pass, each example's map evaluations counted, and the answer
carried forward from the drop point."""

from __future__ import annotations

import itertools

import pytest
import torch

from deqloop.errors import ConfigError
from deqloop.eval.curves import iteration_sweep
from deqloop.model import LoopedDEQ


def exact(logits, y, x):
    return (logits.argmax(-1) == y).all(-1)


def cell_fraction(logits, y, x):
    return (logits.argmax(-1) == y).double().mean(-1)


def contractive_model() -> LoopedDEQ:
    """A random tiny model whose iterates contract (relative change ≈ 1e-5 after 40 iterations)."""
    torch.manual_seed(1)
    return LoopedDEQ(vocab_size=3, num_classes=2, grid=(4,), width=8, heads=2, mlp_ratio=2.0).double()


def distinct_inputs(n: int) -> torch.Tensor:
    rows = list(itertools.product(range(3), repeat=4))
    pick = torch.randperm(len(rows), generator=torch.Generator().manual_seed(3))[:n]
    return torch.tensor([rows[i] for i in pick])  # (n, 4), no two rows alike


def trajectory(model, x, steps):
    """States ``(steps + 1, B, N, D)`` and per-token classes ``(steps, B, N)`` of z_t = f(z_{t−1}; e)."""
    with torch.no_grad():
        e = model.embed(x)
        zs = [model.initial_state(e)]
        for _ in range(steps):
            zs.append(model.step(zs[-1], e))
        zs = torch.stack(zs)
        return zs, torch.stack([model.readout(z).argmax(-1) for z in zs[1:]])


def count_evaluations(model, x, monkeypatch) -> torch.Tensor:
    """``(n,)`` counter of how many times ``model.step`` is applied to each example of ``x``
    (identified by its embedding row; the rows of ``x`` are distinct)."""
    with torch.no_grad():
        table = model.embed(x).flatten(1)  # (n, N·D)
    counts = torch.zeros(len(x), dtype=torch.long)
    step = model.step

    def counted(z, e):
        hit = (e.flatten(1)[:, None, :] == table[None]).all(-1)  # (A, n)
        assert (hit.sum(1) == 1).all()
        counts.add_(hit.sum(0))
        return step(z, e)

    monkeypatch.setattr(model, "step", counted)
    return counts


def test_dropping_settled_examples_keeps_the_curves_and_counts_each_examples_evaluations(monkeypatch):
    model = contractive_model()
    x = distinct_inputs(10)
    T, iters = 40, [1, 3, 10, 28, 30, 33, 40]
    zs, classes = trajectory(model, x, T)
    rel = (zs[1:] - zs[:-1]).flatten(2).norm(dim=-1) / zs[1:].flatten(2).norm(dim=-1)  # (T, n)
    # all examples but the slowest settle by T, at different iterations (between the counts asked for)
    tol = 0.7 * float(rel[-1].max())
    small = rel <= tol
    first = torch.where(small.any(0), small.float().argmax(0) + 1, torch.full((len(x),), T))
    assert 0 < int(small.any(0).sum()) < len(x) and len(set(first.tolist())) > 2
    # the answers no longer change after the settling points, so the curves must not either
    y = classes[-1].clone()
    y[::3, 0] = 1 - y[::3, 0]  # some examples wrong at every count
    full = iteration_sweep(model, x, y, exact, iters, rtol=tol, cells=cell_fraction, batch_size=4)
    counts = count_evaluations(model, x, monkeypatch)
    fast = iteration_sweep(model, x, y, exact, iters, rtol=tol, drop_rtol=tol, cells=cell_fraction, batch_size=4)

    assert fast.accuracy == full.accuracy
    assert fast.cell_accuracy == full.cell_accuracy
    assert torch.equal(fast.correct, full.correct)
    assert fast.settle_summary() == full.settle_summary()
    assert torch.equal(fast.settled_at, first) and torch.equal(fast.settled_at, full.settled_at)
    assert torch.equal(fast.settled_correct, full.settled_correct)
    # the state measures are carried from the drop point: off by at most the remaining drift
    assert fast.norm_ratio == pytest.approx(full.norm_ratio, rel=1e-3)
    assert fast.cosine == pytest.approx(full.cosine, abs=1e-6)
    # each example was evaluated up to its settling point and never again; the full pass: T each
    assert counts.tolist() == first.tolist() == fast.evaluations.tolist()
    assert full.evaluations.tolist() == [T] * len(x)
    assert int(counts.sum()) < T * len(x)


class Scripted(torch.nn.Module):
    """States ``[t, 1000 + drift, k]``: example k counts t up to k, then stands still but for a drift
    of 1e-3 per iteration; its answer is right while the drift is below 2.5e-3."""

    iterates = LoopedDEQ.iterates

    def __init__(self, k):
        super().__init__()
        self.k = torch.tensor(k, dtype=torch.float64)
        self.w = torch.nn.Parameter(torch.zeros(1))

    def embed(self, x):
        return torch.stack([torch.zeros_like(self.k), torch.full_like(self.k, 1000.0), self.k], 1)

    def initial_state(self, e):
        return e

    def step(self, z, e):
        t, drift, k = z.unbind(1)
        moving = t < k
        return torch.stack([torch.where(moving, t + 1, t), torch.where(moving, drift, drift + 1e-3), k], 1)

    def readout(self, z):
        return (2.5e-3 - (z[:, 1] - 1000.0))[:, None]  # > 0: right


def test_a_dropped_example_keeps_its_answer_from_the_drop_point():
    """Standing still, an example's relative change is about 1e-6 ≤ 1e-4: it settles (and is
    dropped) at iteration k + 1. Iterated on, the drift turns it wrong 3 iterations later."""
    model = Scripted([0, 1, 2, 10])
    x = y = torch.zeros(4, 1, dtype=torch.long)
    right = lambda logits, y, x: logits[:, 0] > 0  # noqa: E731
    full = iteration_sweep(model, x, y, right, [1, 6], rtol=1e-4, device="cpu")
    assert full.accuracy == [1.0, 0.25]  # after 6 iterations the settled three have drifted wrong
    assert full.evaluations.tolist() == [6, 6, 6, 6]
    fast = iteration_sweep(model, x, y, right, [1, 6], rtol=1e-4, drop_rtol=1e-4, device="cpu")
    assert fast.accuracy == [1.0, 1.0]  # dropped where they settled: their answer there counts
    assert fast.evaluations.tolist() == [1, 2, 3, 6]
    assert fast.settled_at.tolist() == full.settled_at.tolist() == [1, 2, 3, 6]
    assert fast.settle_summary() == full.settle_summary()
    # a stricter drop tolerance than the drift's relative change (1e-3 / 1000): nothing is dropped
    strict = iteration_sweep(model, x, y, right, [1, 6], rtol=1e-4, drop_rtol=1e-7, device="cpu")
    assert strict.accuracy == full.accuracy and strict.evaluations.tolist() == [6, 6, 6, 6]


def test_drop_rtol_is_checked():
    model = contractive_model()
    x = distinct_inputs(3)
    y = torch.zeros(3, 4, dtype=torch.long)
    with pytest.raises(ConfigError, match="drop_rtol"):
        iteration_sweep(model, x, y, exact, [1, 2], rtol=1e-4, drop_rtol=1e-3)
    with pytest.raises(ConfigError, match="drop_rtol must be > 0"):
        iteration_sweep(model, x, y, exact, [1, 2], drop_rtol=0.0)
    # without rtol, dropping alone: the curves, no settling statistics
    sweep = iteration_sweep(model, x, y, exact, [1, 40], drop_rtol=1e-3)
    assert sweep.settled_at is None and int(sweep.evaluations.max()) < 40


class ExactTask:
    name = "exact"
    correct = staticmethod(exact)
    cell_accuracy = staticmethod(cell_fraction)


def test_evaluate_model_drops_where_examples_settle_and_solves_them_as_before():
    from deqloop.eval.curves import adaptive_accuracy
    from deqloop.eval.evaluate import evaluate_model

    model = contractive_model()
    x = distinct_inputs(8)
    y = trajectory(model, x, 40)[1][-1]
    kw = dict(iters=[1, 10, 40], settle_rtol=2e-3, solver="picard", solver_rtol=1e-3, baselines=False, compile=False)
    full = evaluate_model(model, {"val": (x, y)}, ExactTask(), drop_rtol=None, **kw)
    fast = evaluate_model(model, {"val": (x, y)}, ExactTask(), **kw)  # drop_rtol="auto": a tenth of 2e-3
    sweep = iteration_sweep(model, x, y, exact, [1, 10, 40], rtol=2e-3, drop_rtol=2e-4)
    assert (full.drop_rtol, fast.drop_rtol) == (None, pytest.approx(2e-4))
    assert fast.curves.curves == full.curves.curves and fast.cells.curves == full.cells.curves
    assert fast.settling == full.settling
    assert full.evaluations == {"val": 40.0}
    assert fast.evaluations == {"val": pytest.approx(float(sweep.evaluations.double().mean()))} and \
        fast.evaluations["val"] < 40
    solved = adaptive_accuracy(model, x, y, exact, solver="picard", max_iter=40, rtol=1e-3).summary()
    assert fast.solver == full.solver == {"val": solved}
    assert set(fast.seconds["val"]) == {"sweep", "solve"} and all(v > 0 for v in fast.seconds["val"].values())
    assert fast.compiled == {"val": False}
    assert "stopped being iterated once its state changed by at most 0.0002" in fast.text()
    d = fast.to_dict()
    assert (d["drop_rtol"], d["evaluations"], d["seconds"]) == (fast.drop_rtol, fast.evaluations, fast.seconds)
    with pytest.raises(ConfigError, match="drop_rtol"):
        evaluate_model(model, {"val": (x, y)}, ExactTask(), drop_rtol="never", **kw)
    with pytest.raises(ConfigError, match="drop_rtol"):
        evaluate_model(model, {"val": (x, y)}, ExactTask(), drop_rtol=1e-2, **kw)  # > settle_rtol


def test_on_an_accelerator_dropped_examples_leave_the_batch_without_a_sync_every_iteration():
    from fake_cuda import CUDA, fake_cuda

    from deqloop.eval import curves

    x = distinct_inputs(6)
    T, iters = 48, [1, 5, 48]

    def sweep(device, drop_rtol):
        model = contractive_model().float().to(device)
        y = torch.zeros(6, 4, dtype=torch.long, device=device)
        return iteration_sweep(model, x.to(device), y, exact, iters, rtol=1e-3, drop_rtol=drop_rtol, device=device)

    host = sweep(torch.device("cpu"), 1e-3)
    with fake_cuda() as gpu:
        device = sweep(CUDA, 1e-3)
        with_drop = gpu.reads
        gpu.reads = 0
        sweep(CUDA, None)
        without = gpu.reads
    assert device.accuracy == host.accuracy and torch.equal(device.settled_at, host.settled_at)
    assert torch.equal(device.evaluations, host.evaluations) and int(host.evaluations.max()) < T
    # the examples leave the batch at multiples of COMPACT_EVERY and at the counts asked for: a few
    # reads more than the full pass, far fewer than one an iteration
    checks = len({t for t in range(1, T) if t % curves.COMPACT_EVERY == 0} | set(iters[:-1]))
    assert without < with_drop <= without + checks < T


def test_the_kept_readouts_are_the_ones_the_sweep_scored_a_dropped_examples_from_its_drop_point():
    from fake_cuda import CUDA, fake_cuda

    model = Scripted([0, 1, 2, 10])
    x = y = torch.zeros(4, 1, dtype=torch.long)
    right = lambda logits, y, x: logits[:, 0] > 0  # noqa: E731
    # iterated to 6: the drift (1e-3 an iteration once an example stands still) is 6e-3, 5e-3, 4e-3, 0
    full = iteration_sweep(model, x, y, right, [1, 6], rtol=1e-4, keep=(6, 4), device="cpu")
    assert full.kept[:, 0].tolist() == pytest.approx([-3.5e-3, -2.5e-3, -1.5e-3, 2.5e-3], abs=1e-9)  # (read out in float32)
    # dropped at k + 1 with a drift of 1e-3: that readout is their answer at 6
    fast = iteration_sweep(model, x, y, right, [1, 6], rtol=1e-4, drop_rtol=1e-4, keep=(6, 3), device="cpu")
    assert fast.kept[:, 0].tolist() == pytest.approx([1.5e-3] * 3, abs=1e-9)

    contractive, xs = contractive_model(), distinct_inputs(6)
    host = iteration_sweep(contractive, xs, torch.zeros(6, 4, dtype=torch.long), exact, [1, 5, 48], rtol=1e-3,
                           drop_rtol=1e-3, keep=(48, 5))
    with fake_cuda() as gpu:  # on an accelerator: the same readouts, and one host read more (their copy)
        model, yd = contractive_model().float().to(CUDA), torch.zeros(6, 4, dtype=torch.long, device=CUDA)
        plain = iteration_sweep(model, xs.to(CUDA), yd, exact, [1, 5, 48], rtol=1e-3, drop_rtol=1e-3, device=CUDA)
        reads, gpu.reads = gpu.reads, 0
        kept = iteration_sweep(model, xs.to(CUDA), yd, exact, [1, 5, 48], rtol=1e-3, drop_rtol=1e-3, device=CUDA,
                               keep=(48, 5))
        assert gpu.reads == reads + 1 and plain.kept is None
    assert torch.allclose(kept.kept.float(), host.kept.float(), atol=1e-5) and kept.kept.shape == (5, 4, 2)
    assert int(host.evaluations[:5].min()) < 48  # some of the five were dropped before 48
