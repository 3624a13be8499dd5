"""experiments.executor: runs side by side in local processes, through submitit's local and debug
executors, and the sbatch script a Slurm submission writes (with a stand-in srun)."""

from __future__ import annotations

import json
import operator
import os
import stat
import time

import pytest

from experiments import sweep
from experiments.executor import RunJob, SlurmOptions, run_all

submitit = pytest.importorskip("submitit")


def napping(seconds: float, value: int) -> dict:
    time.sleep(seconds)
    return {"value": value, "pid": os.getpid()}


def test_inline_runs_in_order_in_this_process():
    jobs = [(f"r{i}", RunJob(napping, 0.0, i)) for i in range(3)]
    out = list(run_all(jobs))
    assert [n for n, _ in out] == ["r0", "r1", "r2"] and {r["pid"] for _, r in out} == {os.getpid()}


def test_local_processes_yield_runs_as_they_finish():
    # builtins, so that the worker processes import nothing heavy
    jobs = [("slow", RunJob(time.sleep, 3.0)), ("fast", RunJob(os.getpid)), ("add", RunJob(operator.add, 2, 3))]
    out = list(run_all(jobs, workers=2))
    assert [n for n, _ in out][-1] == "slow"  # the order they finished, not the order given
    results = dict(out)
    assert results["slow"] is None and results["add"] == 5 and results["fast"] != os.getpid()


@pytest.mark.parametrize("launcher", ["submitit-debug", "submitit-local"])
def test_submitit_executors_return_each_result(tmp_path, launcher):
    jobs = [("a", RunJob(operator.add, 1, 2)), ("b", RunJob(operator.mul, 3, 4))]
    assert dict(run_all(jobs, launcher=launcher, folder=tmp_path, poll_seconds=0.2)) == {"a": 3, "b": 12}


def test_a_preempted_job_is_resubmitted_as_the_same_run():
    job = RunJob(operator.add, 1, 2)
    again = job.checkpoint()
    assert isinstance(again, submitit.helpers.DelayedSubmission)
    assert again.function() == 3  # the same call: the run resumes from its last.pt


def test_slurm_options_reach_the_sbatch_script(tmp_path, monkeypatch):
    fake = tmp_path / "bin" / "srun"  # submitit asks for srun before it builds a Slurm executor
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    executor = submitit.AutoExecutor(folder=str(tmp_path / "logs"), cluster="slurm")
    options = SlurmOptions(partition="gpu", gpus=1, cpus=8, mem_gb=32, time_min=240, parallel=16,
                           extra={"account": "lab"})
    executor.update_parameters(**options.parameters())
    script = executor._executor._make_submission_file_text("python run.py", "uid")
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1", "#SBATCH --cpus-per-task=8",
                 "#SBATCH --mem=32GB", "#SBATCH --time=240", "#SBATCH --account=lab"):
        assert line in script, line
    assert options.parameters()["slurm_array_parallelism"] == 16


def test_the_sweep_refuses_bad_executor_flags(capsys):
    for args, message in ((["--jobs", "0"], "--jobs must be ≥ 1, got 0"),
                          (["--jobs", "2", "--time-limit", "60"], "--time-limit stops a sweep that runs one run"),
                          (["--slurm-extra", "[1]"], "--slurm-extra takes a JSON object")):
        with pytest.raises(SystemExit):
            sweep.main(["--preset", "tiny", *args])
        assert message in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("how", [["--jobs", "2"], ["--launcher", "submitit-debug"]], ids=" ".join)
def test_a_sweep_through_an_executor_gives_the_runs_of_the_inline_one(tmp_path, how):
    cell = ["--preset", "tiny", "--recalls", "none,internal", "--norms", "post", "--regimes", "progressive"]
    assert sweep.main([*cell, "--out", str(tmp_path / "inline"), "--results", str(tmp_path / "s1")]) == 0
    assert sweep.main([*cell, *how, "--out", str(tmp_path / "exec"), "--results", str(tmp_path / "s2")]) == 0
    names = sorted(p.name for p in (tmp_path / "s1").rglob("*.json"))
    assert names and names == sorted(p.name for p in (tmp_path / "s2").rglob("*.json"))
    for path in (tmp_path / "inline").rglob("result.json"):
        a = json.loads(path.read_text())
        b = json.loads((tmp_path / "exec" / path.relative_to(tmp_path / "inline")).read_text())
        assert a["eval"]["curves"] == b["eval"]["curves"] and a["train"]["steps"] == b["train"]["steps"]
