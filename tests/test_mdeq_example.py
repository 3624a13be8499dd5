"""examples/mdeq_digits.py: the multi-branch model trains through its tuple state, weight norm
and fixed-point correction; benchmarks/mdeq.py's torchdeq version is the same model."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT / "benchmarks"))
pytest.importorskip("sklearn")

import mdeq_digits  # noqa: E402


def test_digits_are_split_and_scaled():
    (x, y), (xt, yt) = mdeq_digits.digits(0)
    assert x.shape == (1437, 1, 8, 8) and xt.shape == (360, 1, 8, 8)
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0 and set(y.tolist()) == set(range(10))


def test_a_training_step_grades_two_states_and_reaches_every_parameter():
    torch.manual_seed(0)
    model = mdeq_digits.MDEQ(c=8)
    (x, y), _ = mdeq_digits.digits(0)
    logits, sol = model(x[:16])
    assert len(logits) == 2 and logits[0].shape == (16, 10)
    assert sol.iterations.shape == (16,) and int(sol.iterations.max()) <= 22 + 11  # two segments of 11
    loss = mdeq_digits.loss_of(logits, y[:16])
    w = [4 / 9, 5 / 9]  # γ = 0.8: 0.8 and 1 normalised
    expected = sum(wi * torch.nn.functional.cross_entropy(out, y[:16]) for wi, out in zip(w, logits))
    torch.testing.assert_close(loss, expected)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert missing == []  # the weight-normed g and v included
    model.eval()
    with torch.no_grad():
        logits, sol = model(x[:16])
    assert len(logits) == 1 and sol.iterations.max() <= 22


def test_the_torchdeq_version_is_the_same_model_from_the_same_weights():
    pytest.importorskip("torchdeq")
    import mdeq as bench

    torch.manual_seed(3)
    ours = mdeq_digits.MDEQ(c=8)
    torch.manual_seed(3)
    theirs = bench.TorchdeqMDEQ(c=8)
    x = mdeq_digits.digits(0)[0][0][:4]
    with torch.no_grad():
        assert torch.equal(ours.stem(x), theirs.stem(x))
        u = ours.stem(x)
        z = (torch.randn_like(u), torch.randn(4, 8, 4, 4))
        inj = (u, u.new_zeros(4, 8, 4, 4))
        for a, b in zip(ours.layer(z, inj), theirs.layer(z, inj)):  # weight norm leaves the weights as they were
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert bench.lines(mdeq_digits.MDEQ, mdeq_digits.loss_of) <= bench.lines(bench.TorchdeqMDEQ, bench.torchdeq_loss)
