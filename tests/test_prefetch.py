"""Batches made ahead in background threads are the batches made in the step; sudoku's training
batches write no cache file."""

from __future__ import annotations

import pytest
import torch

from deqloop.tasks import get_task
from deqloop.train import Batches, Trainer, read_metrics
from deqloop.train.data import Prefetcher
from deqloop.train.metrics import TIMING_FIELDS
from test_train import tiny_config


class Recording:
    """``Batches`` that records which steps it made, and fails on ``fail_at``."""

    def __init__(self, batches: Batches, fail_at: int = -1):
        self.batches, self.made, self.fail_at = batches, [], fail_at

    def __call__(self, step: int):
        if step == self.fail_at:
            raise ValueError(f"no batch at step {step}")
        self.made.append(step)
        return self.batches(step)


def test_prefetched_batches_are_the_steps_batches_in_and_out_of_order():
    batches = Batches(get_task("prefix_sums", length=8, min_length=3), 16, seed=5)
    recording = Recording(batches)
    with Prefetcher(recording, 3) as ahead:
        for step in [0, 1, 2, 3, 7, 8, 2]:  # a jump forward, then back (a resume)
            x, y = ahead(step)
            assert torch.equal(x, batches(step)[0]) and torch.equal(y, batches(step)[1])
            assert sorted(ahead.queue) == [step + 1, step + 2, step + 3]  # the next steps, being made
        ahead.queue[3].result()
        assert {1, 2, 3} <= set(recording.made)
    with pytest.raises(ValueError, match="no batch at step 2"), Prefetcher(Recording(batches, fail_at=2), 2) as ahead:
        for step in range(4):
            ahead(step)


def test_a_prefetching_run_equals_one_without(tmp_path):
    runs = []
    for prefetch in (0, 3):
        out = tmp_path / f"p{prefetch}"
        result = Trainer(tiny_config(out, prefetch=prefetch, steps=6)).run()
        runs.append(([{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in read_metrics(out / "metrics.jsonl")],
                     result))
    assert runs[0][0] == runs[1][0]
    # the prefetch depth is how a run executes, not what it computes: a run resumes with another
    Trainer(tiny_config(tmp_path / "p0", prefetch=1, steps=6, resume=True))


def test_sudoku_training_batches_write_no_cache_file(tmp_path):
    task = get_task("sudoku", blanks=(4, 8), cache_dir=str(tmp_path))
    x, y = task.train_batch(4, seed=0, step=0)
    again = task.train_batch(4, seed=0, step=0)
    assert torch.equal(x, again[0]) and torch.equal(y, again[1])
    for step in range(1, 4):
        task.train_batch(4, seed=0, step=step)
    assert not list(tmp_path.rglob("*.npz"))
    task.make("val", 4, seed=1)  # a fixed split is cached, once
    assert len(list(tmp_path.rglob("*.npz"))) == 1
