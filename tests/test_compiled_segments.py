"""Compiled segments (``compile_segment``): the progressive loss's graded iterations as compiled runs
of 1, 2, 4, … iterations. Which lengths run for a count, the same loss and gradients as the eager
step, and a bounded number of graphs whatever the count."""

from __future__ import annotations

import copy

import pytest
import torch

from deqloop import LoopedDEQ
from deqloop.errors import ConfigError
from deqloop.model.compiled import CompiledBlock, CompiledSegments, segment_lengths
from deqloop.train.objectives import Progressive, progressive_draw
from test_train import tiny_config

SEED, DEPTH = 3, 14


def test_segment_lengths_are_whole_longest_segments_then_the_binary_digits():
    expected = {  # (steps, longest): lengths, written out by hand
        (1, 16): [1], (2, 16): [2], (3, 16): [2, 1], (7, 16): [4, 2, 1], (13, 16): [8, 4, 1],
        (16, 16): [16], (30, 16): [16, 8, 4, 2], (31, 16): [16, 8, 4, 2, 1], (40, 16): [16, 16, 8],
        (13, 4): [4, 4, 4, 1], (6, 1): [1] * 6, (5, 2): [2, 2, 1],
    }
    for (steps, longest), lengths in expected.items():
        assert segment_lengths(steps, longest) == lengths, (steps, longest)
    for steps in range(1, 31):  # at most 5 calls for the progressive loss's k ≤ 30
        assert len(segment_lengths(steps, 16)) <= 5
    with pytest.raises(ValueError, match="power of two ≥ 1, got 12"):
        segment_lengths(5, 12)


def test_compile_segment_is_zero_or_a_power_of_two(tmp_path):
    assert tiny_config(tmp_path, compile=True, compile_segment=8).model_config().arch.compile_segment == 8
    for bad in (3, -2, 1.5, True):
        with pytest.raises(ConfigError, match="compile_segment must be"):
            tiny_config(tmp_path, compile_segment=bad)


def tiny_model(**arch) -> LoopedDEQ:
    torch.manual_seed(0)
    return LoopedDEQ(vocab_size=2, num_classes=2, grid=(6,), width=16, heads=2, mlp_ratio=2.0, attention="local",
                     window=3, recall="internal", norm="post", **arch)


def test_unroll_without_segments_is_the_last_two_iterates():
    model = tiny_model()
    x = torch.randint(0, 2, (3, 6))
    e = model.embed(x)
    states = [e, *model.iterates(e, e, 5)]
    prev, last = model.unroll(e, e, 5)
    torch.testing.assert_close(prev, states[-2], rtol=0, atol=0)
    torch.testing.assert_close(last, states[-1], rtol=0, atol=0)
    prev, last = model.unroll(e, e, 1)
    assert prev is e and torch.equal(last, states[1])


def steps_with(draws: list[tuple[int, int]]) -> list[int]:
    """The first training steps whose progressive draw at DEPTH is each of ``draws``."""
    found = {}
    for step in range(20000):
        found.setdefault(progressive_draw(SEED, step, DEPTH), step)
    return [found[d] for d in draws]


# n = 0 (z0 = e with its gradient), counts that are not powers of two, one longer than the longest segment
DRAWS = [(0, 7), (0, 1), (3, 5), (1, 13), (6, 8)]


def segment_and_eager_steps(backend: str, monkeypatch, longest: int = 4):
    """Loss and parameter gradients of the progressive step at each draw of DRAWS, through compiled
    segments and eagerly, from the same weights; and the segment lengths each compiled step ran."""
    monkeypatch.setattr(CompiledBlock, "backend", backend)
    torch._dynamo.reset()
    eager = tiny_model()
    compiled = copy.deepcopy(eager)
    compiled.config = compiled.config.replace(compile=True, compile_segment=longest)
    x = torch.randint(0, 2, (4, 6), generator=torch.Generator().manual_seed(1))
    y = torch.cumsum(x, 1) % 2
    results, runs = [], []
    for (n, k), step in zip(DRAWS, steps_with(DRAWS)):
        pair = []
        for model in (compiled, eager):
            model.zero_grad(set_to_none=True)
            loss, _, stats = Progressive(model, alpha=1.0, seed=SEED)(x, y, DEPTH, step)
            assert (stats["n"], stats["k"]) == (n, k)
            loss.backward()
            pair.append((loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}))
        results.append(pair)
        ran = []
        for length, block in compiled._compiled_segments.segments.items():
            ran += [length] * block.calls
            block.calls = 0
        runs.append(sorted(ran, reverse=True))
    return results, runs, compiled


@pytest.fixture
def counted_calls(monkeypatch):
    """Each CompiledBlock counts its calls in ``calls``."""
    call = CompiledBlock.__call__

    def counting(self, *args):
        self.calls = getattr(self, "calls", 0) + 1
        return call(self, *args)

    monkeypatch.setattr(CompiledBlock, "__call__", counting)
    monkeypatch.setattr(CompiledBlock, "calls", 0, raising=False)


def check_same(results, rtol_loss, atol_loss, rtol, atol):
    for (lc, gc), (le, ge) in results:
        torch.testing.assert_close(lc, le, rtol=rtol_loss, atol=atol_loss)
        assert gc.keys() == ge.keys() and gc["embedding.weight"].abs().sum() > 0
        for name in ge:
            torch.testing.assert_close(gc[name], ge[name], rtol=rtol, atol=atol, msg=name)


@pytest.mark.slow  # 18–50 s of tracing on a loaded machine
def test_the_segment_step_gives_the_eager_loss_and_gradients(monkeypatch, counted_calls):
    results, runs, _ = segment_and_eager_steps("aot_eager", monkeypatch)  # AOTAutograd, no code generation
    check_same(results, 1e-5, 1e-7, 1e-4, 1e-6)
    assert runs == [[4, 2, 1], [1], [4, 1], [4, 4, 4, 1], [4, 4]]  # k's decomposition, nothing else


@pytest.mark.slow  # inductor compiles three segment lengths, forward and backward: about 60 s
def test_the_inductor_segment_step_gives_the_eager_loss_and_gradients(monkeypatch, counted_calls):
    results, _, _ = segment_and_eager_steps("inductor", monkeypatch)
    check_same(results, 1e-4, 1e-6, 1e-3, 1e-5)


def test_segments_of_a_small_map_compile_one_graph_per_length_and_match_the_loop(monkeypatch):
    monkeypatch.setattr(CompiledBlock, "backend", "aot_eager")
    torch._dynamo.reset()

    def f(z, e, cos, sin, mask):  # (B, N, D) ↦ (B, N, D); cos, sin (N, 1)
        return torch.tanh(z * cos + e * sin)

    segments = CompiledSegments(f, 4)
    cos, sin = torch.rand(3, 1), torch.rand(3, 1)
    for k in range(1, 12):
        e = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(k), requires_grad=True)
        start = e if k % 2 else (2 * e).detach()  # z0 = e with its gradient, or a detached state
        prev, last = segments(start, e, cos, sin, None, k)
        (last.square().sum() + prev.sum()).backward()
        grad, e.grad = e.grad, None
        z = [start]
        for _ in range(k):
            z.append(f(z[-1], e, cos, sin, None))
        (z[-1].square().sum() + z[-2].sum()).backward()
        torch.testing.assert_close(last, z[-1], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(prev, z[-2], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(grad, e.grad, rtol=1e-5, atol=1e-7)
    # one graph per length, whether the start is e itself or a detached state
    assert {length: s.graphs for length, s in segments.segments.items()} == {1: 1, 2: 1, 4: 1}


@pytest.mark.slow  # 30 s of tracing on a loaded machine
def test_the_graphs_stay_one_per_segment_length_for_every_count(monkeypatch):
    monkeypatch.setattr(CompiledBlock, "backend", "aot_eager")
    torch._dynamo.reset()
    model = tiny_model(compile=True, compile_segment=16)
    x = torch.randint(0, 2, (4, 6))
    for k in range(1, 31):
        e = model.embed(x)
        start = e if k % 2 else e.detach() * 0.5  # z0 = e with its gradient, or a detached state
        model.unroll(start, e, k)[1].square().mean().backward()
    segments = model._compiled_segments
    assert {length: s.graphs for length, s in segments.segments.items()} == {1: 1, 2: 1, 4: 1, 8: 1, 16: 1}
    assert segments.graphs == 5 and model._compiled_block is None
