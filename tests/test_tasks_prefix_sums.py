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
