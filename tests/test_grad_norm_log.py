"""Every applied step's gradient norm reaches the metrics log: each training record carries the
norms of the steps since the previous record (``grad_norms``), and a resumed run logs the same."""

from __future__ import annotations

import math
import signal

import pytest
import torch

from deqloop.errors import TrainingInterrupted
from deqloop.train import Trainer, read_metrics, train
from test_train import tiny_config
from test_train_interrupt import SignalledAt, same_metrics


def test_each_record_holds_the_norms_of_the_steps_since_the_last(tmp_path, monkeypatch):
    seen = []
    clip = torch.nn.utils.clip_grad_norm_

    def recording(parameters, max_norm, *args, **kwargs):
        parameters = list(parameters)
        by_hand = math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in parameters if p.grad is not None))
        seen.append(by_hand)
        return clip(parameters, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording)
    train(tiny_config(tmp_path, steps=7, log_every=3, eval_size=0))
    logged = {r["step"]: r for r in read_metrics(tmp_path / "metrics.jsonl") if "loss" in r}
    assert sorted(logged) == [3, 6, 7]  # every 3rd step and the last
    assert len(seen) == 7
    for step, window in ((3, seen[0:3]), (6, seen[3:6]), (7, seen[6:7])):
        norms = logged[step]["grad_norms"]
        assert len(norms) == len(window)
        for got, want in zip(norms, window):
            assert got == pytest.approx(want, rel=1e-3)  # four significant digits of ‖∇‖₂
        assert logged[step]["grad_norm"] == pytest.approx(window[-1], rel=1e-5)


def test_a_run_resumed_between_records_logs_the_same_norms(tmp_path):
    settings = dict(steps=9, log_every=3, checkpoint_every=100, eval_size=0)
    train(tiny_config(tmp_path / "whole", **settings))
    cut = tiny_config(tmp_path / "cut", **settings)
    with pytest.raises(TrainingInterrupted):
        SignalledAt(cut, at=5, signals=(signal.SIGINT,)).run()  # steps 4 and 5 not yet logged
    Trainer(cut.replace(resume=True)).run()
    same_metrics(tmp_path / "whole", tmp_path / "cut")
    records = [r for r in read_metrics(tmp_path / "cut" / "metrics.jsonl") if "loss" in r]
    assert [len(r["grad_norms"]) for r in records] == [3, 3, 3]
