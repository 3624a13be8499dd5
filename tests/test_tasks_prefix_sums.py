"""Prefix sums: generation, bands and the exact-match metric."""

from __future__ import annotations

import pytest
import torch

from deqloop.errors import ConfigError
from deqloop.tasks import get_task, prefix_sums
from deqloop.tasks.prefix_sums import PrefixSums


def test_generate_shapes_dtypes_and_targets():
    x, y = prefix_sums.generate(64, 37, seed=3)
    assert x.shape == y.shape == (64, 37)
    assert x.dtype == y.dtype == torch.long
    assert set(x.unique().tolist()) <= {0, 1}
    for row_x, row_y in zip(x.tolist()[:8], y.tolist()[:8]):
        running = 0
        for bit, parity in zip(row_x, row_y):
            running = (running + bit) % 2
            assert parity == running


def test_generate_is_seeded_and_streams_differ():
    a = prefix_sums.generate(32, 64, seed=1)
    b = prefix_sums.generate(32, 64, seed=1)
    c = prefix_sums.generate(32, 64, seed=2)
    d = prefix_sums.generate(32, 64, seed=1, stream=1)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert not torch.equal(a[0], d[0])
    # roughly balanced bits
    assert 0.4 < a[0].float().mean().item() < 0.6


@pytest.mark.parametrize("n, length, message", [
    (-1, 4, "n must be an integer ≥ 0, got -1"),
    (2, 0, "length must be an integer ≥ 1, got 0"),
    (2, -3, "length must be an integer ≥ 1, got -3"),
    (2.0, 4, r"n must be an integer ≥ 0, got 2\.0"),
    (True, 4, "n must be an integer ≥ 0, got True"),
])
def test_generate_rejects_bad_sizes(n, length, message):
    with pytest.raises(ConfigError, match=message):
        prefix_sums.generate(n, length)


def test_task_bands_and_length_override():
    task = get_task("prefix_sums")
    assert isinstance(task, PrefixSums)
    assert (task.vocab_size, task.num_classes, task.grid) == (2, 2, (32,))
    assert task.make("train", 5)[0].shape == (5, 32)
    assert task.make("val", 5)[0].shape == (5, 32)
    assert task.make("hard", 5)[0].shape == (5, 512)
    assert task.make("train", 5, length=8)[0].shape == (5, 8)
    assert not torch.equal(task.make("train", 50, seed=0)[0], task.make("val", 50, seed=0)[0])
    custom = get_task("prefix_sums", length=16, hard_length=100)
    assert custom.grid == (16,) and custom.make("hard", 2)[0].shape == (2, 100)
    with pytest.raises(ValueError, match="'train', 'val', 'hard'"):
        task.make("test", 5)
    with pytest.raises(ValueError, match="hard_length"):
        PrefixSums(hard_length=0)


def test_correct_exact_match_from_logits_and_ids():
    x, y = prefix_sums.generate(10, 20, seed=0)
    logits = torch.nn.functional.one_hot(y, 2).float()
    assert prefix_sums.correct(logits, y, x).all()
    assert prefix_sums.correct(y, y).all()
    wrong = y.clone()
    wrong[3, 19] ^= 1
    ok = prefix_sums.correct(wrong, y)
    assert ok.tolist() == [i != 3 for i in range(10)]
    acc = prefix_sums.cell_accuracy(wrong, y)
    assert acc[3].item() == pytest.approx(19 / 20) and acc[0].item() == 1.0


def test_correct_rejects_ambiguous_shapes():
    _, y = prefix_sums.generate(4, 8)
    with pytest.raises(ValueError, match="floating-point"):
        prefix_sums.correct(y.float(), y)
    with pytest.raises(ValueError, match="shape"):
        prefix_sums.correct(torch.zeros(4, 7, 2), y)


def test_the_difficulty_schedule_grows_the_length_range_linearly():
    task = PrefixSums(length=32, min_length=8, start_length=8, start_min_length=4, ramp_steps=1000)
    # lo = 4 + t·(8 − 4), hi = 8 + t·(32 − 8), t = min(1, step / 1000), each rounded
    assert [task.length_range(s) for s in (0, 250, 500, 999, 1000, 5000)] == \
        [(4, 8), (5, 14), (6, 20), (8, 32), (8, 32), (8, 32)]
    assert task.curriculum(500) == {"train_lengths": [6, 20]}
    lengths = [task.train_length(seed=3, step=s) for s in range(0, 1200, 7)]
    assert all(task.length_range(s)[0] <= n <= task.length_range(s)[1] for s, n in zip(range(0, 1200, 7), lengths))
    assert lengths == [task.train_length(seed=3, step=s) for s in range(0, 1200, 7)]  # a function of (seed, step)
    assert max(lengths[:10]) <= 10 and max(lengths) > 24
    x, _ = task.train_batch(5, seed=3, step=0)
    assert 4 <= x.shape[1] <= 8
    # without a start_min_length the short end stays at min_length
    assert PrefixSums(length=12, min_length=4, start_length=6, ramp_steps=4).length_range(2) == (4, 9)


def test_without_a_schedule_the_length_draws_are_unchanged():
    from deqloop import seeds

    task = PrefixSums(length=12, min_length=4)
    for step in range(5):
        g = seeds.generator(7, seeds.LENGTH, step)
        assert task.train_length(7, step) == int(torch.randint(4, 13, (1,), generator=g))
    assert task.length_range(3) == (4, 12) and task.curriculum(3) == {"train_lengths": [4, 12]}
    assert PrefixSums(length=12).curriculum(3) == {} and PrefixSums(length=12).train_length(0, 3) == 12


@pytest.mark.parametrize("kw, message", [
    (dict(start_length=8), "start_length and ramp_steps > 0 go together"),
    (dict(ramp_steps=10), "start_length and ramp_steps > 0 go together"),
    (dict(start_min_length=2, ramp_steps=10), "start_length and ramp_steps > 0 go together"),
    (dict(start_length=40, ramp_steps=10), r"start_min_length \(8\) ≤ start_length \(40\) ≤ length \(32\)"),
    (dict(start_length=6, start_min_length=7, ramp_steps=10), r"start_min_length \(7\) ≤ start_length \(6\)"),
    (dict(start_length=8, ramp_steps=-1), "ramp_steps"),
])
def test_the_difficulty_schedule_is_validated(kw, message):
    with pytest.raises(ConfigError, match=message):
        PrefixSums(length=32, min_length=8, **kw)


def test_the_metrics_log_shows_the_schedule_and_each_batch_length(tmp_path):
    from deqloop.train import TrainConfig, read_metrics, train

    options = dict(length=10, min_length=4, start_length=5, start_min_length=3, ramp_steps=4, hard_length=12)
    train(TrainConfig.from_flat(task="prefix_sums", task_options=options, width=8, heads=2, attention="local", window=3,
                      loss="progressive", depth_offset=1, steps=6, batch_size=4, log_every=1, eval_size=0,
                      threads=1, progress=False, out=str(tmp_path)))
    task = PrefixSums(**options)
    lines = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "loss" in r]
    assert [r["train_lengths"] for r in lines] == [[3, 5], [3, 6], [4, 8], [4, 9], [4, 10], [4, 10]]
    assert [r["propagation_depth"] for r in lines] == [task.train_length(0, s) for s in range(6)]


def test_training_examples_are_bits_with_their_prefix_parity_and_shard_by_index():
    """Example i of a step is a function of (seed, step, i): a shard [start, stop) is those rows of the
    whole batch; bits of both values, y_t = (x_1 + ... + x_t) mod 2 written out as a running XOR."""
    task = PrefixSums(length=12, min_length=4)
    x, y = task.train_examples(3, 5, 0, 16)
    assert set(x.unique().tolist()) == {0, 1}
    parity = torch.zeros_like(x[:, 0])
    for t in range(x.shape[1]):
        parity = parity ^ x[:, t]
        assert torch.equal(y[:, t], parity)
    xs, ys = task.train_examples(3, 5, 6, 11)
    assert torch.equal(xs, x[6:11]) and torch.equal(ys, y[6:11])


def test_the_three_splits_draw_from_three_streams_and_the_ranges_admit_their_bounds():
    task = PrefixSums(length=16, min_length=16, hard_length=16)  # min_length = length: the paper's split
    train, val, hard = (task.make(s, 20, seed=0)[0] for s in ("train", "val", "hard"))
    assert not torch.equal(train, val) and not torch.equal(val, hard) and not torch.equal(train, hard)
    assert task.length_range(0) == (16, 16)
    # a schedule may start at its shortest length and at the final length
    assert PrefixSums(length=32, min_length=8, start_length=8, ramp_steps=10).length_range(0) == (8, 8)
    assert PrefixSums(length=32, min_length=8, start_length=32, ramp_steps=10).length_range(0) == (8, 32)
