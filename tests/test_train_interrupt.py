"""Training that survives its environment: SIGTERM/SIGINT stop cleanly with a checkpoint and a
resume command; SIGKILL at any point (a step, a checkpoint write, the evaluation, a metrics
append) loses nothing that resuming cannot redo exactly; a streak of non-finite steps stops the
run with the last good checkpoint kept."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch

from deqloop.checkpoint import load_checkpoint
from deqloop.cli import build_parser
from deqloop.errors import ConfigError, TrainingError, TrainingInterrupted
from deqloop.train import Trainer, read_metrics, train
from deqloop.train.interrupt import StopSignals, resume_command
from test_train import tiny_config, without_timing

REPO = Path(__file__).resolve().parents[1]


def same_parameters(a: Path, b: Path) -> None:
    """The checkpoints ``a`` and ``b`` hold identical parameters and optimizer states."""
    sa, sb = load_checkpoint(a), load_checkpoint(b)
    assert sa["step"] == sb["step"]
    assert sa["model"].keys() == sb["model"].keys()
    for k in sa["model"]:
        assert torch.equal(sa["model"][k], sb["model"][k]), k
    for k, v in sa["optimizer"]["state"].items():
        for name, t in v.items():
            assert torch.equal(t, sb["optimizer"]["state"][k][name]), (k, name)


def same_metrics(a: Path, b: Path) -> None:
    """The runs in ``a`` and ``b`` logged the same records (timings aside), each step once."""
    ra = without_timing(list(read_metrics(a / "metrics.jsonl")))  # a torn line would not parse
    rb = without_timing(list(read_metrics(b / "metrics.jsonl")))
    assert rb == ra
    steps = [r["step"] for r in rb if "kind" not in r]
    assert steps == sorted(set(steps))  # no step twice


class SignalledAt(Trainer):
    """Sends ``signals`` to its own process at the start of step ``at`` (1-based)."""

    def __init__(self, config, at: int, signals: tuple[int, ...]):
        super().__init__(config)
        self.at, self.signals = at, signals

    def step(self, step):
        if step + 1 == self.at:
            for signum in self.signals:
                os.kill(os.getpid(), signum)
                # A signal delivered to another thread (the batch prefetcher's) is handled in the main
                # thread a moment later, and CPython keeps one pending flag a signal: a second one sent
                # before the first is handled would merge with it. Wait for the first to be seen.
                deadline = time.monotonic() + 5
                while self._signals.signal is None and time.monotonic() < deadline:
                    time.sleep(0.001)
        return super().step(step)


# -- SIGINT / SIGTERM in the library -------------------------------------------------------------


def test_sigint_stops_after_the_step_with_a_checkpoint_and_resume_is_exact(tmp_path):
    steps = dict(steps=16, checkpoint_every=5, eval_every=5)
    whole = train(tiny_config(tmp_path / "whole", **steps))
    cut = tiny_config(tmp_path / "cut", **steps)
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingInterrupted) as caught:
        SignalledAt(cut, at=7, signals=(signal.SIGINT,)).run()
    e = caught.value
    last = tmp_path / "cut" / "last.pt"
    assert str(e) == f"interrupted by SIGINT at step 7 of 16; {last} holds it: resume with resume=True"
    assert (e.signal, e.step, e.exit_status, e.checkpoint) == (signal.SIGINT, 7, 130, tmp_path / "cut" / "last.pt")
    assert isinstance(e, TrainingError)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before  # restored
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["step"] == 7  # step 7 finished and saved
    assert max(r["step"] for r in read_metrics(tmp_path / "cut" / "metrics.jsonl")) == 7  # its line is written

    result = Trainer(cut.replace(resume=True)).run()
    assert result.step == 16
    same_parameters(whole.checkpoint, result.checkpoint)
    same_metrics(tmp_path / "whole", tmp_path / "cut")


def test_a_second_signal_stops_at_once_and_keeps_the_previous_checkpoint(tmp_path):
    cut = tiny_config(tmp_path, steps=12, checkpoint_every=4, eval_size=0)
    # Python's own SIGINT handler, as in a process started in the foreground: one started as a
    # background job (CI scripts, `cmd &`) inherits SIGINT ignored, and the second signal is handed
    # on to that instead (nothing happens, as without deqloop)
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):  # what SIGINT does without deqloop
            SignalledAt(cut, at=6, signals=(signal.SIGINT, signal.SIGINT)).run()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, inherited)
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 4


def test_training_in_another_thread_installs_no_handlers(tmp_path):
    seen, results = [], []

    class Watching(Trainer):
        def step(self, step):
            seen.append(signal.getsignal(signal.SIGTERM))
            return super().step(step)

    before = signal.getsignal(signal.SIGTERM)
    worker = threading.Thread(target=lambda: results.append(Watching(tiny_config(tmp_path, steps=3)).run()))
    worker.start()
    worker.join(timeout=60)
    assert results[0].step == 3
    assert seen == [before] * 3 and signal.getsignal(signal.SIGTERM) is before


def test_stop_signals_restore_the_previous_handlers():
    def mine(signum, frame):
        pass

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        with StopSignals() as stop:
            assert signal.getsignal(signal.SIGTERM) == stop._handle
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.signal == signal.SIGTERM
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_resume_command_repeats_the_arguments_with_resume():
    argv = ["train", "--steps", "9", "--overwrite", "--out", "my runs/a", "--ov", "--no-resume", "--resume"]
    assert resume_command(argv) == "deqloop train --steps 9 --out 'my runs/a' --resume"
    assert resume_command(["train", "--recall", "none", "--output-free"]) == \
        "deqloop train --recall none --output-free --resume"  # only resume/overwrite and their abbreviations go


# -- SIGTERM to the command ----------------------------------------------------------------------

SLOW_STEPS = textwrap.dedent(
    """
    import os, time
    from deqloop.train import Trainer
    _step = Trainer.step
    def step(self, i):  # slows the steps when asked, so a signal lands mid-run
        time.sleep(float(os.environ.get("SLOW_STEP_SECONDS", "0")))
        return _step(self, i)
    Trainer.step = step
    """
)

FLAGS = ("--task prefix_sums --length 6 --min-length 3 --hard-length 12 --width 16 --heads 2 --mlp-ratio 2 "
         "--attention local --window 3 --loss progressive --depth-offset 1 --steps 30 --warmup-steps 2 "
         "--batch-size 8 --lr 3e-3 --log-every 1 --checkpoint-every 10 --eval-size 8 --threads 1 --no-progress")


def test_sigterm_to_deqloop_train_checkpoints_prints_the_resume_command_and_exits_143(tmp_path):
    (tmp_path / "slow_steps.py").write_text(SLOW_STEPS)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(tmp_path)]), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "cut"
    argv = ["train", "--import", "slow_steps", *FLAGS.split(), "--out", str(out), "--overwrite"]
    proc = subprocess.Popen([sys.executable, "-m", "deqloop.cli", *argv], cwd=REPO, text=True,
                            env={**env, "SLOW_STEP_SECONDS": "0.2"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            metrics = out / "metrics.jsonl"
            lines = metrics.read_text().splitlines() if metrics.exists() else []
            if any(json.loads(line)["step"] > 3 for line in lines[:-1]):  # the last may be half written
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, stderr
    assert "trained" not in stdout
    state = load_checkpoint(out / "last.pt")
    step = state["step"]
    assert 3 < step < 30
    command = resume_command(argv)
    assert command.endswith(f"--out {out} --resume") and "--overwrite" not in command
    assert stderr.splitlines()[-1] == (f"deqloop train: interrupted by SIGTERM at step {step} of 30; checkpoint "
                                       f"{out / 'last.pt'}; resume with: {command}")
    assert max(r["step"] for r in read_metrics(out / "metrics.jsonl")) == step

    resumed = subprocess.run([sys.executable, "-m", "deqloop.cli", *shlex.split(command)[1:]], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.startswith("trained 30 steps")
    whole = train(tiny_config(tmp_path / "whole", steps=30, checkpoint_every=10))  # the same settings
    whole_config = json.loads((tmp_path / "whole" / "config.json").read_text())
    assert json.loads((out / "config.json").read_text()) == {**whole_config, "run": {**whole_config["run"], "out": str(out),
                                                                                   "resume": True}}
    same_parameters(whole.checkpoint, out / "last.pt")
    same_metrics(tmp_path / "whole", out)


# -- the cap on skipped steps --------------------------------------------------------------------


def test_a_streak_of_skipped_steps_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, steps=20, checkpoint_every=4, keep_every=4, eval_size=0,
                                  max_consecutive_skips=4))
    calls = iter(range(1000))  # the 6th training forward and all after it see NaN embeddings
    trainer.model.embedding.register_forward_hook(lambda m, i, o: o * float("nan") if next(calls) >= 5 else o)
    with pytest.raises(TrainingError) as caught:
        trainer.run()
    assert str(caught.value) == (f"stopped at step 9: 4 steps in a row skipped (steps 6-9; the last for a non-finite "
                                 f"loss; max_consecutive_skips=4); {tmp_path / 'last.pt'} keeps the last good "
                                 "checkpoint (step 4)")
    state = load_checkpoint(tmp_path / "last.pt")  # step 8 was due, but skipped steps write none
    assert (state["step"], state["skipped"], state["skipped_in_a_row"]) == (4, 0, 0)
    kept = load_checkpoint(tmp_path / "step_4.pt")
    assert all(torch.equal(state["model"][k], v) for k, v in kept["model"].items())
    assert sorted(p.name for p in tmp_path.glob("step_*.pt")) == ["step_4.pt"]
    records = list(read_metrics(tmp_path / "metrics.jsonl"))
    assert [(r["step"], r.get("reason")) for r in records[-4:]] == [(s, "non-finite loss") for s in (6, 7, 8, 9)]
    assert records[-1]["skipped_total"] == 4


def test_the_skip_cap_is_a_validated_runtime_setting_with_a_flag(tmp_path):
    with pytest.raises(ConfigError, match="max_consecutive_skips must be an integer ≥ 0, got -1"):
        tiny_config(tmp_path, max_consecutive_skips=-1)
    assert tiny_config(tmp_path).run.max_consecutive_skips == 50
    args = build_parser(["train"]).parse_args(["train", "--max-consecutive-skips", "0"])
    assert args.max_consecutive_skips == 0
    # no cap: any streak goes on (and a run may resume with another cap)
    trainer = Trainer(tiny_config(tmp_path, steps=6, eval_size=0, max_consecutive_skips=0))
    trainer.model.embedding.register_forward_hook(lambda m, i, o: o * float("nan"))
    assert trainer.run().skipped == 6
    resumed = Trainer(tiny_config(tmp_path, steps=6, eval_size=0, max_consecutive_skips=3, resume=True))
    assert (resumed.step_count, resumed.skipped_in_a_row, resumed.checkpoint_step) == (6, 6, 6)


# -- SIGKILL anywhere, then --resume -------------------------------------------------------------

KILLED_RUN = textwrap.dedent(
    """
    import json, os, signal, sys
    import torch
    from deqloop.train import TrainConfig, Trainer
    from deqloop.train import trainer as trainer_module
    from deqloop.train.metrics import MetricsLog

    config = TrainConfig.from_dict(json.loads(sys.argv[1]))
    point, kill_at = sys.argv[2], int(sys.argv[3])  # where, and in which step (1-based)

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    class Doomed(Trainer):
        def step(self, step):
            if point == "step start" and step + 1 == kill_at:
                die()
            return super().step(step)

    doomed = Doomed(config)
    if point == "mid-step":  # parameters updated in memory, the step not yet counted
        update = doomed.optimizer.step
        def update_then_die(*a, **k):
            update(*a, **k)
            if doomed.step_count + 1 == kill_at:
                die()
        doomed.optimizer.step = update_then_die
    elif point == "checkpoint write":  # part of the bytes in the temporary file
        save = torch.save
        def torn_save(obj, f, *a, **k):
            if isinstance(obj, dict) and obj.get("step") == kill_at:
                f.write(b"torn"); f.flush(); die()
            return save(obj, f, *a, **k)
        torch.save = torn_save
    elif point == "evaluation":  # val accuracy measured, hard not yet
        accuracy = trainer_module.accuracy_by_iterations
        calls = []
        def accuracy_then_die(*a, **k):
            if doomed.step_count == kill_at:
                calls.append(1)
                if len(calls) == 2:
                    die()
            return accuracy(*a, **k)
        trainer_module.accuracy_by_iterations = accuracy_then_die
    elif point == "metrics append":  # half a line in metrics.jsonl
        write = MetricsLog.write
        def torn_write(self, record):
            if record.get("step") == kill_at and "loss" in record:
                with open(self.path, "a") as f:
                    line = json.dumps(record)
                    f.write(line[: len(line) // 2])
                die()
            return write(self, record)
        MetricsLog.write = torn_write
    doomed.run()
    """
)

POINTS = {"step start": 8, "mid-step": 8, "checkpoint write": 10, "evaluation": 10, "metrics append": 8}


@pytest.mark.parametrize(
    "point, loss",
    [("step start", "progressive"), pytest.param("step start", "equilibrium", marks=pytest.mark.slow),
     ("checkpoint write", "progressive"), ("metrics append", "progressive")]
    + [pytest.param(p, "progressive", marks=pytest.mark.slow) for p in ("mid-step", "evaluation")],
)
def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path, point, loss):
    extra = dict(alpha=0.5) if loss == "progressive" else dict(depth_offset=None, backward="implicit", max_iter=5)
    steps = dict(steps=14, checkpoint_every=5, eval_every=5, loss=loss, **extra)
    whole = train(tiny_config(tmp_path / "whole", **steps))

    interrupted = tiny_config(tmp_path / "cut", **steps)
    script = tmp_path / "killed.py"
    script.write_text(KILLED_RUN)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    kill_at = POINTS[point]
    proc = subprocess.run([sys.executable, str(script), json.dumps(interrupted.to_dict()), point, str(kill_at)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    cut = tmp_path / "cut"
    assert load_checkpoint(cut / "last.pt")["step"] == 5
    lines = (cut / "metrics.jsonl").read_text().splitlines()
    logged = kill_at - (point in ("step start", "mid-step", "metrics append"))
    assert json.loads(lines[-1 - (point == "metrics append")])["step"] == logged  # logged, then lost
    if point == "metrics append":
        with pytest.raises(json.JSONDecodeError):
            json.loads(lines[-1])
    torn = list(cut.glob(".last.pt.*.tmp"))
    assert len(torn) == (point == "checkpoint write")

    resumed = Trainer(interrupted.replace(resume=True))
    assert resumed.step_count == 5
    assert not list(cut.glob(".*.tmp"))  # the torn temporary file is gone
    result = resumed.run()
    assert result.step == whole.step == 14
    same_parameters(whole.checkpoint, result.checkpoint)
    same_metrics(tmp_path / "whole", cut)
