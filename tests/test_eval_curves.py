"""deqloop.eval.curves on values: batch sizing, iteration-count parsing, the iteration sweep against
the loop written out by hand, and the summaries' statistics."""

from __future__ import annotations

import math

import pytest
import torch

from deqloop.errors import ConfigError
from deqloop.eval.curves import (
    TOKENS_PER_BATCH,
    AdaptiveResult,
    Sweep,
    accuracy_by_iterations,
    auto_batch_size,
    check_iters,
    iteration_sweep,
    parse_iters,
)
from deqloop.model import LoopedDEQ


# -- batch size and iteration counts -------------------------------------------------------------


def test_auto_batch_size_keeps_about_tokens_cells_per_batch():
    assert TOKENS_PER_BATCH == 2**15
    assert auto_batch_size(torch.zeros(3, 8, 8)) == 2**15 // 64  # 2-D grid: cells = H·W
    assert auto_batch_size(torch.zeros(3, 100), tokens=1000) == 10  # 1-D grid: cells = L
    assert auto_batch_size(torch.zeros(3, 7), tokens=50) == 7  # floor(50 / 7)
    assert auto_batch_size(torch.zeros(3, 1)) == 2**15  # one cell per example
    assert auto_batch_size(torch.zeros(3)) == 2**15  # no grid axes: one cell
    assert auto_batch_size(torch.zeros(3, 0)) == 2**15  # an empty grid counts as one cell
    assert auto_batch_size(torch.zeros(3, 100), tokens=50) == 1  # never below one example


def test_parse_iters_reads_sorted_distinct_positive_counts():
    assert parse_iters("30,1,10") == [1, 10, 30]
    assert parse_iters(" 1, 10 ,30, 10,") == [1, 10, 30]  # spaces and repeats and a trailing comma
    assert parse_iters("5") == [5]
    for bad in ("", ",", "1,two", "0,3", "-1", "1.5"):
        with pytest.raises(ConfigError):
            parse_iters(bad)


def test_check_iters_rejects_empty_and_non_positive_lists():
    assert check_iters([3, 1, 3, 2]) == [1, 2, 3]
    assert check_iters((4.0, 2)) == [2, 4]
    for bad in ([], [0], [0, 1], [1, -5], [2, 0, 3]):
        with pytest.raises(ConfigError):
            check_iters(bad)


# -- the sweep against the loop written out by hand ----------------------------------------------


def tiny_model() -> LoopedDEQ:
    torch.manual_seed(0)
    return LoopedDEQ(vocab_size=3, num_classes=2, grid=(4,), width=8, heads=2, mlp_ratio=2.0).double()


def exact(logits, y, x):
    return (logits.argmax(-1) == y).all(-1)


def cell_fraction(logits, y, x):
    return (logits.argmax(-1) == y).double().mean(-1)


def by_hand(model, x, steps):
    """Readouts ``(steps, B, N, C)`` and states ``(steps + 1, B, N, D)`` of z_t = f(z_{t-1}; e)."""
    with torch.no_grad():
        e = model.embed(x)
        zs, outs = [model.initial_state(e)], []
        for _ in range(steps):
            zs.append(model.step(zs[-1], e))
            outs.append(model.readout(zs[-1]).float())
    return torch.stack(outs), torch.stack(zs)


def test_iteration_sweep_scores_each_requested_count_like_the_plain_loop():
    model = tiny_model()
    gen = torch.Generator().manual_seed(4)
    x = torch.randint(0, 3, (7, 4), generator=gen)
    outs, _ = by_hand(model, x, 5)
    # targets: the readout after 2 iterations for examples 0-3, noise for the rest
    y = torch.where(torch.arange(7)[:, None] < 4, outs[1].argmax(-1), torch.randint(0, 2, (7, 4), generator=gen))
    model.train()
    sweep = iteration_sweep(model, x, y, exact, [5, 2, 1, 2], cells=cell_fraction, batch_size=3)  # no device
    assert model.training  # restored
    assert sweep.iters == [1, 2, 5]
    want = [exact(outs[t - 1], y, x).double().mean().item() for t in (1, 2, 5)]
    assert sweep.accuracy == pytest.approx(want, abs=1e-12)
    assert sweep.accuracy[1] >= 4 / 7
    cells = [cell_fraction(outs[t - 1], y, x).mean().item() for t in (1, 2, 5)]
    assert sweep.cell_accuracy == pytest.approx(cells, abs=1e-12)
    assert sweep.rtol is None and sweep.settled_at is None
    with pytest.raises(ConfigError):
        sweep.settle_summary()
    assert accuracy_by_iterations(model, x, y, exact, [5, 2, 1], batch_size=2) == pytest.approx(want, abs=1e-12)


def test_iteration_sweep_keeps_the_first_examples_readouts_at_one_count():
    model = tiny_model()
    x = torch.randint(0, 3, (7, 4), generator=torch.Generator().manual_seed(4))
    y = torch.zeros(7, 4, dtype=torch.long)
    outs, _ = by_hand(model, x, 5)
    assert not torch.allclose(outs[1][:5], outs[4][:5])  # the counts give different readouts
    sweep = iteration_sweep(model, x, y, exact, [1, 2, 5], keep=(2, 5), batch_size=2)  # over three batches
    assert torch.allclose(sweep.kept, outs[1][:5], atol=1e-12) and sweep.kept.shape == (5, 4, 2)
    assert torch.allclose(iteration_sweep(model, x, y, exact, [2, 5], keep=(5, 9), rtol=1e-3).kept, outs[4])
    assert iteration_sweep(model, x, y, exact, [2]).kept is None
    assert iteration_sweep(model, x, y, exact, [2], keep=(2, 0)).kept is None
    for bad in ((3, 2), (2, -1)):
        with pytest.raises(ConfigError, match="keep"):
            iteration_sweep(model, x, y, exact, [1, 2], keep=bad)
    # one example kept, and exactly the first batch's examples (k = the batch size: none of the next)
    assert torch.equal(iteration_sweep(model, x, y, exact, [2], keep=(2, 1), batch_size=2).kept, outs[1][:1])
    assert torch.equal(iteration_sweep(model, x, y, exact, [2], keep=(2, 2), batch_size=2).kept, outs[1][:2])
    with pytest.raises(ConfigError, match="no examples to evaluate"):
        iteration_sweep(model, x[:0], y[:0], exact, [1, 2])


def test_iteration_sweep_settles_at_the_first_small_relative_change():
    model = tiny_model()
    x = torch.randint(0, 3, (6, 4), generator=torch.Generator().manual_seed(5))
    T = 12
    outs, zs = by_hand(model, x, T)
    change = (zs[1:] - zs[:-1]).flatten(2).norm(dim=-1)  # (T, B)
    size = zs[1:].flatten(2).norm(dim=-1)
    rel = change / size
    lows = rel.min(0).values.sort().values
    rtol = float((lows[2] * lows[3]).sqrt())  # three examples settle within T iterations, three do not
    y = outs[-1].argmax(-1)
    sweep = iteration_sweep(model, x, y, exact, [1, T], rtol=rtol, batch_size=4, device="cpu")
    small = change <= rtol * size
    settled = small.any(0)
    first = small.float().argmax(0) + 1
    at = torch.where(settled, first, torch.full_like(first, T))
    assert 0 < int(settled.sum()) < len(x)
    assert sweep.settled.tolist() == settled.tolist()
    assert sweep.settled_at.tolist() == at.tolist()
    right = torch.stack([exact(outs[t - 1], y, x) for t in range(1, T + 1)])  # (T, B)
    assert sweep.settled_correct.tolist() == right[at - 1, torch.arange(len(x))].tolist()
    summary = sweep.settle_summary()
    assert summary == {
        "accuracy": pytest.approx(right[at - 1, torch.arange(len(x))].double().mean().item()),
        "iterations_mean": pytest.approx(at.double().mean().item()),
        "iterations_median": float(at.float().median()),
        "iterations_max": int(at.max()),
        "converged": pytest.approx(settled.double().mean().item()),
    }


class LinearLoop(torch.nn.Module):
    """z ← A z with A = blockdiag(2 R(θ), ½ R(θ)) on 4-dim states (one token), z₀ the input row."""

    theta = 0.3

    def __init__(self):
        super().__init__()
        c, s = math.cos(self.theta), math.sin(self.theta)
        rot = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
        self.A = torch.nn.Parameter(torch.block_diag(2 * rot, 0.5 * rot), requires_grad=False)
        self.starts = torch.tensor([[1.0, 0, 0, 0], [0, 0, 1.0, 0], [1.0, 0, 1.0, 0]], dtype=torch.float64)

    def embed(self, x):
        return self.starts[x][:, None, :]  # (B, 1, 4)

    def initial_state(self, e):
        return e

    def iterates(self, z, e, steps):
        for _ in range(steps):
            z = z @ self.A.T
            yield z

    def readout(self, z):
        return z[..., :2]  # (B, 1, 2)


def test_state_dynamics_of_a_linear_map_by_hand():
    """Example 0 grows as 2^t, example 1 shrinks as 2^−t, example 2 is both; R turns each half by θ.
    ‖z_T‖/‖z_1‖ is the ratio of the mean norms (not the mean of per-example ratios)."""
    x = torch.tensor([0, 1, 2, 2])
    y = torch.zeros(4, 1, dtype=torch.long)
    iters = [1, 2, 5, 9]
    sweep = iteration_sweep(LinearLoop(), x, y, exact, iters, batch_size=3)

    def norm(i, t):  # ‖z_t‖ of example i (0, 1 or 2)
        return [2.0**t, 0.5**t, math.hypot(2.0**t, 0.5**t)][i]

    def mean_norm(t):
        return (norm(0, t) + norm(1, t) + 2 * norm(2, t)) / 4

    assert sweep.norm_ratio == pytest.approx([mean_norm(t) / mean_norm(1) for t in iters], rel=1e-12)
    c = math.cos(LinearLoop.theta)

    def cos_mixed(t):  # ⟨z_{t−1}, z_t⟩ = (4^t/2 + 4^−t·2) cos θ for example 2
        return (4.0**t / 2 + 2 * 4.0**-t) * c / (norm(2, t - 1) * norm(2, t))

    assert sweep.cosine == pytest.approx([(2 * c + 2 * cos_mixed(t)) / 4 for t in iters], rel=1e-12)
    assert sweep.norm_ratio[0] == 1.0


class ScaledLinearLoop(LinearLoop):
    """LinearLoop with its starts scaled by ``scale`` (set per test)."""

    scale = 1e-3

    def __init__(self):
        super().__init__()
        self.starts = self.starts * self.scale


def test_the_norm_ratio_is_scale_free_and_undefined_for_a_zero_state(monkeypatch):
    """Norms summing below 1 give the same ratios as LinearLoop's; a loop whose state is 0 has no ratio
    (NaN), and its zero fixed point settles and is dropped at once: a change of 0 ≤ rtol × 0."""
    x = torch.tensor([0, 1, 2, 2])
    y = torch.zeros(4, 1, dtype=torch.long)
    iters = [1, 2, 5, 9]
    want = iteration_sweep(LinearLoop(), x, y, exact, iters).norm_ratio
    assert iteration_sweep(ScaledLinearLoop(), x, y, exact, iters).norm_ratio == pytest.approx(want, rel=1e-9)
    monkeypatch.setattr(ScaledLinearLoop, "scale", 0.0)
    zero = iteration_sweep(ScaledLinearLoop(), x, y, exact, iters, rtol=1e-3, drop_rtol=1e-4)
    assert all(math.isnan(r) for r in zero.norm_ratio)
    assert zero.settled.tolist() == [True] * 4 and zero.settled_at.tolist() == [1] * 4
    assert zero.evaluations.tolist() == [1] * 4


# -- the summaries ---------------------------------------------------------------------------------


def test_settle_summary_statistics():
    sweep = Sweep([1, 8], [0.25, 0.5], rtol=1e-3, settled_at=torch.tensor([2, 3, 8, 5]),
                  settled=torch.tensor([True, True, False, True]),
                  settled_correct=torch.tensor([True, False, False, True]))
    s = sweep.settle_summary()
    assert s == {"accuracy": 0.5, "iterations_mean": 4.5, "iterations_median": 3.0, "iterations_max": 8,
                 "converged": 0.75}
    assert isinstance(s["iterations_max"], int)


def test_adaptive_result_summary_statistics():
    res = AdaptiveResult(accuracy=0.4, iterations=torch.tensor([4, 9, 1, 6, 10]),
                         converged=torch.tensor([True, False, True, True, False]),
                         residual=torch.tensor([1e-5, 0.25, 2e-6, 5e-5, 0.5]),
                         correct=torch.tensor([True, False, True, False, False]))
    s = res.summary()
    assert s == {"accuracy": 0.4, "iterations_mean": 6.0, "iterations_median": 6.0, "iterations_max": 10,
                 "converged": pytest.approx(0.6), "residual_median": pytest.approx(5e-5)}
    assert isinstance(s["iterations_max"], int)
