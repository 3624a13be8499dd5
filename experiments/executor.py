"""Where a sweep's runs execute (``python -m experiments.sweep --jobs N``, ``--launcher``): in this process,
in N local processes, or as Slurm jobs through submitit (``pip install 'deqloop[cluster]'``), one job per
run, logs and pickles under ``OUT/.submitit``. A job that reaches its time limit or is preempted is
requeued by submitit; :func:`experiments.sweep.run_one` returns at once for a finished run and resumes an
interrupted one from its ``last.pt``. Runs are yielded in the order they complete.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["LAUNCHERS", "RunJob", "SlurmOptions", "run_all"]

LAUNCHERS = ("local", "slurm", "submitit-local", "submitit-debug")


@dataclass(frozen=True)
class SlurmOptions:
    """The Slurm resources of one run (submitit's ``slurm_*`` parameters)."""

    partition: str | None = None
    gpus: int = 1  # GPUs per run
    cpus: int = 8  # CPU cores per run
    mem_gb: int | None = None
    time_min: int = 240  # the job's time limit; a run cut off is requeued and resumes
    parallel: int = 64  # at most this many runs at once (an array's parallelism)
    extra: dict[str, Any] = field(default_factory=dict)  # any other sbatch option, e.g. {"account": "x"}

    def parameters(self) -> dict[str, Any]:
        """submitit's parameters (those unset left out)."""
        optional = {"gpus_per_node": self.gpus, "slurm_partition": self.partition, "mem_gb": self.mem_gb,
                    "slurm_additional_parameters": dict(self.extra)}
        return {"timeout_min": self.time_min, "cpus_per_task": self.cpus, "tasks_per_node": 1, "nodes": 1,
                "slurm_array_parallelism": self.parallel, **{k: v for k, v in optional.items() if v}}


class RunJob:
    """One run of a sweep as a picklable callable; ``checkpoint`` lets submitit requeue it (the
    run resumes from its ``last.pt``)."""

    def __init__(self, fn: Callable[..., dict[str, Any]], *args: Any, **kwargs: Any):
        self.fn, self.args, self.kwargs = fn, args, kwargs

    def __call__(self) -> dict[str, Any]:
        return self.fn(*self.args, **self.kwargs)

    def checkpoint(self, *args: Any, **kwargs: Any):
        from deqloop.extras import require

        submitit = require("submitit", "--launcher slurm")
        return submitit.helpers.DelayedSubmission(RunJob(self.fn, *self.args, **self.kwargs))


def run_all(jobs: Iterable[tuple[str, RunJob]], *, launcher: str = "local", workers: int = 1,
            folder: Path | None = None, slurm: SlurmOptions | None = None,
            poll_seconds: float = 5.0) -> Iterator[tuple[str, dict[str, Any]]]:
    """Run ``(name, job)`` pairs; yield ``(name, result)`` as each finishes.

    ``launcher``: ``"local"`` (``workers`` processes, or this process when 1), ``"slurm"``, or
    submitit's ``"submitit-local"`` (local subprocesses) and ``"submitit-debug"`` (in this
    process), which run the same submission path without a cluster. A run that fails raises its
    error here after the runs already running have finished.
    """
    if launcher not in LAUNCHERS:
        raise ValueError(f"unknown launcher {launcher!r}; allowed: {', '.join(LAUNCHERS)}")
    if launcher == "local" and workers <= 1:
        for name, job in jobs:  # lazily: the caller may stop handing out jobs
            yield name, job()
        return
    jobs = list(jobs)
    if launcher == "local":
        yield from _local(jobs, workers)
        return
    yield from _submitit(jobs, launcher, folder, slurm or SlurmOptions(), poll_seconds)


def _local(jobs: list[tuple[str, RunJob]], workers: int) -> Iterator[tuple[str, dict[str, Any]]]:
    context = multiprocessing.get_context("spawn")  # a fresh interpreter per worker: no inherited threads
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = {pool.submit(job): name for name, job in jobs}
        for future in cf.as_completed(futures):
            yield futures[future], future.result()


def _submitit(jobs: list[tuple[str, RunJob]], launcher: str, folder: Path | None, slurm: SlurmOptions,
              poll_seconds: float) -> Iterator[tuple[str, dict[str, Any]]]:
    from deqloop.extras import require  # here, so that a worker process needs no more than this module

    submitit = require("submitit", f"--launcher {launcher}")
    if folder is None:
        raise ValueError(f"--launcher {launcher} needs a folder for its logs")
    if launcher == "slurm":
        executor = submitit.AutoExecutor(folder=str(folder), cluster="slurm")
        executor.update_parameters(**slurm.parameters())
    elif launcher == "submitit-local":
        executor = submitit.LocalExecutor(folder=str(folder))
        executor.update_parameters(timeout_min=slurm.time_min)
    else:
        executor = submitit.DebugExecutor(folder=str(folder))
    submitted = {}
    for name, job in jobs:
        if launcher == "slurm":
            executor.update_parameters(name=name)
        submitted[name] = executor.submit(job)
    names = {id(j): n for n, j in submitted.items()}
    for job in submitit.helpers.as_completed(list(submitted.values()), poll_frequency=poll_seconds):
        yield names[id(job)], job.result()
