"""DistributedDataParallel on CPU: two gloo processes under torchrun train like one process, and stop
together when one of them is signalled."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from deqloop.checkpoint import load_checkpoint
from deqloop.train import TrainConfig, read_metrics, train
from deqloop.train.metrics import TIMING_FIELDS

REPO = Path(__file__).resolve().parents[1]

WORKER = textwrap.dedent(
    """
    import json, sys, torch
    from deqloop.train import TrainConfig, Trainer
    trainer = Trainer(TrainConfig.from_dict(json.loads(sys.argv[1])))
    trainer.run()
    torch.save(trainer.model.state_dict(), f"{sys.argv[2]}/rank{trainer.rank}.pt")
    with open(f"{sys.argv[2]}/rank{trainer.rank}.txt", "w") as f:
        f.write(f"rank {trainer.rank} of {trainer.world} on {trainer.device}")
    torch.distributed.destroy_process_group()
    """
)


def config(out: Path, **overrides) -> TrainConfig:
    values = dict(task="prefix_sums", task_options={"length": 6, "min_length": 3, "hard_length": 12}, width=16,
                  heads=2, mlp_ratio=2.0, attention="local", window=3, loss="progressive", alpha=0.5, depth_offset=1, steps=4,
                  warmup_steps=1, batch_size=8, log_every=1, checkpoint_every=2, eval_size=8, threads=1,
                  progress=False, out=str(out))
    values.update(overrides)
    return TrainConfig.from_flat(**values)


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["progressive", "equilibrium"])
def test_two_gloo_ranks_end_with_identical_parameters(tmp_path, loss):
    # max_iter 30: the forward solves converge, so the implicit backward is taken at fixed points
    # and its solves converge too (at 5 some did not, and a diverging solve amplifies the rounding
    # that differs between a half batch and the whole one)
    extra = {} if loss == "progressive" else dict(alpha=0.0, depth_offset=None, backward="implicit", pretrain_steps=0,
                                                  max_iter=30)
    extra["stability_every"] = 2  # the monitor: rank 0 measures, every rank stays in step
    torchrun(WORKER, tmp_path, "worker", config(tmp_path / "ddp", loss=loss, **extra))
    for r in (0, 1):
        assert (tmp_path / f"rank{r}.txt").read_text() == f"rank {r} of 2 on cpu"
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    for k in ranks[0]:
        assert torch.equal(ranks[0][k], ranks[1][k]), k
    saved = load_checkpoint(tmp_path / "ddp" / "last.pt")
    assert saved["world_size"] == 2
    assert all(torch.equal(saved["model"][k], ranks[0][k]) for k in ranks[0])
    records = [r for r in read_metrics(tmp_path / "ddp" / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in records] == [1, 2, 3, 4]  # written once, by rank 0

    # One process on the same global batches reaches the same parameters (up to summation order).
    single = train(config(tmp_path / "single", loss=loss, **extra))
    one = load_checkpoint(single.checkpoint)["model"]
    if loss == "progressive":
        for k in one:
            torch.testing.assert_close(one[k], ranks[0][k], rtol=1e-4, atol=1e-5, msg=k)
    else:
        # Each rank solves its half of the batch on its own (forward rtol 1e-4, implicit backward
        # 1e-6), so gradients agree only to the solves' tolerance; where a component's gradient is
        # near zero that is enough to flip its sign, and AdamW's normalised step turns a flip into
        # up to 2·lr a step (measured: 2 of 512 entries of one weight, 2.2e-3 after 4 steps; every
        # other entry within 7.4e-5). All but 1 % of the entries agree to 1e-4, none by more than
        # 2·lr·steps.
        lr, steps = config(tmp_path).optim.lr, single.step
        for k in one:
            d = (one[k] - ranks[0][k]).abs()
            assert (d > 1e-4).float().mean() <= 0.01 and d.max() <= 2 * lr * steps, (k, d.max().item())
    single_records = [r for r in read_metrics(tmp_path / "single" / "metrics.jsonl") if "loss" in r]
    for a, b in zip(records, single_records):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    # the stability records: written once, at the same steps, with the single process's values
    stab = [r for r in read_metrics(tmp_path / "ddp" / "metrics.jsonl") if r.get("kind") == "stability"]
    single_stab = [r for r in read_metrics(tmp_path / "single" / "metrics.jsonl") if r.get("kind") == "stability"]
    assert [r["step"] for r in stab] == [r["step"] for r in single_stab] == [2, 4]
    for a, b in zip(stab, single_stab):
        for key in ("rho", "forward_converged", "plain_converged"):
            assert a[key] == pytest.approx(b[key], rel=1e-3, abs=1e-5), key
        # the gap between two fixed points, each solved to rtol 1e-4, is resolved to about that
        assert a["init_distance"] == pytest.approx(b["init_distance"], abs=1e-4)


@pytest.mark.slow
def test_the_train_command_runs_unchanged_under_torchrun(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "deqloop.cli",
         "train", "--length", "6", "--min-length", "3", "--depth-offset", "1", "--loss", "progressive", "--width", "16",
         "--heads", "2", "--attention", "local", "--window", "3", "--steps", "3", "--batch-size", "8",
         "--eval-size", "4", "--no-progress", "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=240, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("trained 3 steps") == 1  # rank 0 reports
    assert load_checkpoint(out / "last.pt")["world_size"] == 2


SIGNALLED_WORKER = textwrap.dedent(
    """
    import json, os, signal, sys, torch
    from deqloop.errors import TrainingInterrupted
    from deqloop.train import TrainConfig, Trainer

    class SignalledRank1(Trainer):  # only rank 1 is signalled, at the start of step 3
        def step(self, step):
            if self.rank == 1 and step + 1 == 3:
                os.kill(os.getpid(), signal.SIGTERM)
            return super().step(step)

    trainer = SignalledRank1(TrainConfig.from_dict(json.loads(sys.argv[1])))
    try:
        trainer.run()
        stopped = "finished"
    except TrainingInterrupted as e:
        stopped = f"interrupted at step {e.step}, status {e.exit_status}"
    with open(f"{sys.argv[2]}/rank{trainer.rank}.txt", "w") as f:
        f.write(stopped)
    torch.distributed.destroy_process_group()
    """
)


def torchrun(script: str, tmp_path: Path, name: str, config: TrainConfig) -> None:
    path = tmp_path / f"{name}.py"
    path.write_text(script)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(path),
         json.dumps(config.to_dict()), str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


HELPERS = textwrap.dedent(
    """
    import json, sys, torch
    from deqloop.train import runtime
    rank, world, local = runtime.distributed_env()
    runtime.init_distributed(torch.device("cpu"), world)
    mean = runtime.mean_over_ranks(torch.tensor(1.0 + 2 * rank), world)  # ranks hold 1 and 3
    finite = runtime.agree(rank == 0, 0, world, torch.device("cpu"))  # rank 1 saw a non-finite loss
    stop = runtime.agree(True, 15 * rank, world, torch.device("cpu"))  # rank 1 was signalled (SIGTERM)
    alone = runtime.agree(False, 2, 1, torch.device("cpu")), runtime.mean_over_ranks(torch.tensor(5.0), 1)
    backend = torch.distributed.get_backend()
    with open(f"{sys.argv[2]}/rank{rank}.json", "w") as f:
        json.dump([rank, world, local, mean, finite, stop, alone, backend], f)
    torch.distributed.destroy_process_group()
    """
)


def test_the_rank_helpers_reduce_over_two_gloo_processes(tmp_path):
    """distributed_env, init_distributed (gloo on CPU), mean_over_ranks ((1 + 3) / 2 on each rank)
    and agree (finite only where every rank is; the largest signal of any rank) over two
    processes; one process keeps its own values."""
    torchrun(HELPERS, tmp_path, "helpers", config(tmp_path / "unused"))
    for r in (0, 1):
        got = json.loads((tmp_path / f"rank{r}.json").read_text())
        assert got == [r, 2, r, 2.0, [False, 0], [True, 15], [[False, 2], 5.0], "gloo"], got


@pytest.mark.slow
def test_a_signal_to_one_rank_stops_every_rank_at_the_same_step_and_resume_is_exact(tmp_path):
    torchrun(WORKER, tmp_path, "whole", config(tmp_path / "whole", steps=6))
    cut = config(tmp_path / "cut", steps=6)
    torchrun(SIGNALLED_WORKER, tmp_path, "signalled", cut)
    for r in (0, 1):
        assert (tmp_path / f"rank{r}.txt").read_text() == "interrupted at step 3, status 143"
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["step"] == 3
    torchrun(WORKER, tmp_path, "resumed", cut.replace(resume=True))
    whole, resumed = load_checkpoint(tmp_path / "whole" / "last.pt"), load_checkpoint(tmp_path / "cut" / "last.pt")
    assert resumed["step"] == 6
    for k in whole["model"]:
        assert torch.equal(whole["model"][k], resumed["model"][k]), k
    records = [[{k: v for k, v in r.items() if k not in TIMING_FIELDS}
                for r in read_metrics(tmp_path / run / "metrics.jsonl")] for run in ("whole", "cut")]
    assert records[1] == records[0]
