"""A run folder loses nothing: files are replaced atomically (a kill at the first write leaves the
old file whole), one process at a time trains into it, a fresh start never deletes an earlier
run's snapshots or metrics without ``overwrite``, ``resume`` falls back to the newest snapshot,
and a changed data file or a malformed ``metrics.jsonl`` stops a resume with a named error."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from deqloop.cli import main
from deqloop.demo import run_demo
from deqloop.errors import ConfigError, TrainingError
from deqloop.files import RunLock, RunLocked, atomic_write
from deqloop.train import Trainer, read_metrics, train
from deqloop.train.metrics import MetricsError, MetricsLog
from test_train import tiny_config, without_timing
from test_train_interrupt import same_metrics, same_parameters

REPO = Path(__file__).resolve().parents[1]


def killed_at_first_write(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a child whose first write that grows a file kills it (SIGXFSZ, as a
    ``kill -9`` at that moment): RLIMIT_FSIZE 0."""
    prelude = "import resource; resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))\n"
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def snapshot(folder: Path) -> dict[str, bytes]:
    """The bytes of every file under ``folder`` (the lock file aside)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


# -- atomic replacement ---------------------------------------------------------------------------

def test_a_kill_at_the_first_write_of_the_metrics_rewrite_keeps_the_whole_log(tmp_path):
    log = tmp_path / "metrics.jsonl"
    lines = "".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 41))
    log.write_text(lines)
    child = killed_at_first_write(f"""
        from pathlib import Path
        from deqloop.train.metrics import MetricsLog
        MetricsLog(Path({str(log)!r})).start(resume_step=30)
    """)
    assert child.returncode != 0  # it was killed
    assert log.read_text() == lines  # before atomic replacement: 0 bytes
    MetricsLog(log).start(resume_step=30)
    assert [r["step"] for r in read_metrics(log)] == list(range(1, 31))


def test_a_kill_at_the_first_write_of_config_json_keeps_the_old_file(tmp_path):
    config = tmp_path / "config.json"
    config.write_text('{"steps": 200}\n')
    child = killed_at_first_write(f"""
        from deqloop.files import atomic_write
        atomic_write({str(config)!r}, '{{"steps": 400}}\\n')
    """)
    assert child.returncode != 0
    assert config.read_text() == '{"steps": 200}\n'


def test_atomic_write_leaves_no_temporary_file_behind_a_failed_writer(tmp_path):
    target = tmp_path / "x.json"
    target.write_text("old")

    def fail(f):
        f.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic_write(target, writer=fail)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["x.json"]


# -- one writer ---------------------------------------------------------------------------------

def test_a_second_trainer_into_the_same_folder_is_refused_while_the_first_lives(tmp_path):
    first = Trainer(tiny_config(tmp_path, steps=2, warmup_steps=0))
    with pytest.raises(RunLocked, match=rf"{tmp_path} is in use by another deqloop process \(pid \d+\)"):
        Trainer(tiny_config(tmp_path, steps=2, warmup_steps=0, overwrite=True))
    first.run()  # releases the lock when it ends
    Trainer(tiny_config(tmp_path, steps=2, warmup_steps=0, resume=True)).close()


def test_a_second_process_gets_a_one_line_error_and_changes_nothing(tmp_path, capsys):
    train(tiny_config(tmp_path, steps=2, warmup_steps=0, eval_size=0))
    before = snapshot(tmp_path)
    with RunLock(tmp_path):  # another process training into it (flock is per open file)
        code = main(["train", "--task", "prefix_sums", "--length", "6", "--out", str(tmp_path), "--resume",
                     "--steps", "4", "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is in use by another deqloop process" in err[0]
    assert snapshot(tmp_path) == before


@pytest.mark.slow
def test_a_double_launch_of_deqloop_train_runs_once(tmp_path):
    """Two ``deqloop train`` processes into one folder: the second stops in one line, the first's
    metrics hold each step once."""
    flags = ("--task prefix_sums --length 6 --hard-length 8 --width 8 --heads 2 --attention local --window 3 "
             "--batch-size 4 --no-progress --checkpoint-every 50 --log-every 1 --eval-size 0 --threads 1 "
             f"--steps 300 --out {tmp_path}").split()
    command = [sys.executable, "-m", "deqloop.cli", "train", *flags]
    first = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "metrics.jsonl"
    for _ in range(600):  # until the first one trains
        if log.is_file() and log.stat().st_size:
            break
        subprocess.run(["sleep", "0.1"])
    second = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert first.wait(timeout=300) == 0
    assert second.returncode == 2
    assert second.stderr.strip().splitlines() == [
        f"deqloop train: error: {tmp_path} is in use by another deqloop process (pid {first.pid}); wait for it to "
        "finish or choose another --out"]
    steps = [r["step"] for r in read_metrics(log)]
    assert steps == list(range(1, 301))


def test_the_lock_is_dropped_when_its_holder_is_killed(tmp_path):
    child = subprocess.run([sys.executable, "-c", "import os, sys; from deqloop.files import RunLock; "
                            f"RunLock({str(tmp_path)!r}); os.kill(os.getpid(), 9)"], cwd=REPO, timeout=120)
    assert child.returncode == -9 and (tmp_path / ".lock").exists()
    RunLock(tmp_path).release()  # a stale lock file blocks nothing


# -- fresh start and resume --------------------------------------------------------------------

class CrashesAt(Trainer):
    """Dies (as a kill would) at the start of step ``at`` (1-based)."""

    def __init__(self, config, at: int):
        super().__init__(config)
        self.at = at

    def step(self, step):
        if step + 1 == self.at:
            raise SystemExit("killed")
        return super().step(step)


def test_a_fresh_start_keeps_snapshots_and_resume_continues_from_the_newest(tmp_path):
    config = tiny_config(tmp_path / "cut", steps=8, keep_every=2, checkpoint_every=1000, eval_size=0)
    with pytest.raises(SystemExit):
        CrashesAt(config, at=6).run()  # snapshots at 2 and 4, no last.pt
    cut = tmp_path / "cut"
    assert not (cut / "last.pt").exists() and (cut / "step_4.pt").exists()
    before = snapshot(cut)
    with pytest.raises(TrainingError, match=r"already holds a run \(2 step_N.pt snapshot\(s\), metrics.jsonl\)"):
        Trainer(config)
    assert snapshot(cut) == before
    resumed = Trainer(config.replace(resume=True))
    assert resumed.step_count == 4
    assert max(r["step"] for r in read_metrics(cut / "metrics.jsonl")) == 4
    resumed.run()
    train(config.replace(out=str(tmp_path / "whole")))
    same_parameters(cut / "last.pt", tmp_path / "whole" / "last.pt")
    same_metrics(tmp_path / "whole", cut)


def test_resume_takes_the_newest_readable_checkpoint(tmp_path, caplog):
    config = tiny_config(tmp_path, steps=8, keep_every=3, checkpoint_every=4, eval_size=0)
    with pytest.raises(SystemExit):
        CrashesAt(config, at=8).run()  # last.pt at step 4, snapshots at 3 and 6
    assert Trainer(config.replace(resume=True)).step_count == 6
    (tmp_path / "step_7.pt").write_bytes(b"damaged")
    assert Trainer(config.replace(resume=True)).step_count == 6
    assert "not resuming from" in caplog.text and "step_7.pt" in caplog.text


def test_resume_with_nothing_to_resume_names_the_folder(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(TrainingError, match="nothing to resume: no checkpoint in .*neither last.pt nor"):
        Trainer(tiny_config(tmp_path, resume=True))
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1}\n'


def test_overwrite_is_the_explicit_opt_in_that_deletes_them(tmp_path):
    config = tiny_config(tmp_path, steps=4, keep_every=2, eval_size=0)
    train(config)
    assert (tmp_path / "step_2.pt").exists()
    Trainer(config.replace(overwrite=True)).close()
    assert not (tmp_path / "step_2.pt").exists() and (tmp_path / "metrics.jsonl").read_text() == ""


@pytest.mark.parametrize("content, problem", [
    (b"[1, 2]\n{\"step\": 3}\n", r"metrics.jsonl:1: not a metrics record"),
    (b"{\"step\": \"abc\"}\n{\"step\": 3}\n", r"metrics.jsonl:1: not a metrics record"),
    (b"{\"step\": 1}\n\xff\xfe\n", r"metrics.jsonl:2: not UTF-8"),
    (b"{\"step\": 1}\nnot json\n{\"step\": 3}\n", r"metrics.jsonl:2: not JSON"),
])
def test_a_malformed_metrics_log_stops_resume_with_file_and_line_and_is_kept(tmp_path, content, problem):
    train(tiny_config(tmp_path, steps=2, warmup_steps=0, eval_size=0))
    (tmp_path / "metrics.jsonl").write_bytes(content)
    with pytest.raises(MetricsError, match=problem):
        Trainer(tiny_config(tmp_path, steps=2, warmup_steps=0, eval_size=0, resume=True))
    assert (tmp_path / "metrics.jsonl").read_bytes() == content


def test_a_metrics_log_that_is_a_folder_is_named(tmp_path):
    (tmp_path / "metrics.jsonl").mkdir()
    with pytest.raises(MetricsError, match="is a folder, not a metrics file"):
        list(read_metrics(tmp_path / "metrics.jsonl"))


def test_a_torn_last_line_is_dropped_on_resume(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo')
    MetricsLog(log).start(resume_step=2)
    assert log.read_text() == '{"step": 1}\n{"step": 2}\n'


def test_resume_refuses_a_changed_data_file(tmp_path):
    from deqloop.tasks.sudoku_data import generate

    x, y = generate(24, "easy", seed=0)
    data = tmp_path / "puzzles.txt"
    lines = ["".join(map(str, row.flatten().tolist())).replace("0", ".") for row in x]
    data.write_text("\n".join(lines) + "\n")
    config = tiny_config(tmp_path / "run", task="sudoku", task_options={"data": str(data), "easy_quantile": 1.0,
                                                                          "hard_quantile": 1.0},
                         steps=2, warmup_steps=0, eval_size=0, depth_offset=None, max_iter=2, attention="full")
    train(config)
    data.write_text("\n".join(lines[:-1] + [lines[0]]) + "\n")  # same size, other content
    with pytest.raises(TrainingError, match=r"the data file .*puzzles.txt changed since the run started"):
        Trainer(config.replace(resume=True))


# -- the demo ----------------------------------------------------------------------------------

def test_the_demo_refuses_a_folder_holding_a_run(tmp_path, capsys):
    (tmp_path / "last.pt").write_bytes(b"an earlier run")
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    before = snapshot(tmp_path)
    with pytest.raises(ConfigError, match="already holds last.pt, metrics.jsonl; .* --overwrite"):
        run_demo(quick=True, out=tmp_path, echo=lambda *a: None)
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert snapshot(tmp_path) == before
