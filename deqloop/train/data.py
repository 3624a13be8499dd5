"""The training batch of each step, a pure function of ``(seed, step)``, and the threads that make
the coming steps' batches while the current one trains."""

from __future__ import annotations

from typing import Any

import torch

from deqloop import seeds
from deqloop.tasks import Task

__all__ = ["Batches", "Prefetcher"]


class Batches:
    """This rank's shard of the global batch of every step.

    The global batch of ``B`` examples is split into ``world`` equal shards; rank ``r`` makes only
    examples ``[r·B/W, (r+1)·B/W)``, and example ``i`` is the same whichever rank makes it, so one
    process and many see the same global batches. Without a pool (``train_size=0``) the task makes
    them: ``task.train_examples(seed, step, start, stop)`` (a task's curriculum lives there); with a
    pool of ``train_size`` examples, drawn once, the steps walk through shuffled epochs (the last
    partial batch of an epoch is dropped) and the shard gathers its part. Each example then gets
    the task's augmentation with a generator of its own seed (``seeds.example_seeds`` of ``(seed,
    AUGMENT, step)`` at its index).
    """

    def __init__(self, task: Task, batch_size: int, seed: int, *, train_size: int = 0, rank: int = 0,
                 world: int = 1):
        if world < 1 or not 0 <= rank < world or batch_size % world:
            raise ValueError(f"rank {rank} of {world} processes cannot take an equal shard of batch {batch_size}")
        self.task, self.batch_size, self.seed = task, batch_size, seed
        self.train_size = train_size
        self.rank, self.world = rank, world
        self.pool: tuple[torch.Tensor, torch.Tensor] | None = None
        if train_size:
            self.pool = task.make("train", train_size, seed=seeds.derive_seed(seed, seeds.POOL) % 2**31)
        self.per_epoch = train_size // batch_size if train_size else 0
        self.augments = type(task).augment_batch is not Task.augment_batch

    @property
    def shard(self) -> tuple[int, int]:
        """``(start, stop)``: the indices of the global batch this rank makes."""
        share = self.batch_size // self.world
        return self.rank * share, (self.rank + 1) * share

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        start, stop = self.shard
        if self.pool is None:
            x, y = self.task.train_examples(self.seed, step, start, stop)
        else:
            epoch, offset = divmod(step, self.per_epoch)
            order = torch.randperm(self.train_size, generator=seeds.generator(self.seed, seeds.EPOCH, epoch))
            pick = order[offset * self.batch_size + start : offset * self.batch_size + stop]
            x, y = self.pool[0][pick], self.pool[1][pick]
        if len(x) != stop - start:
            raise RuntimeError(f"task {self.task.name!r} made {len(x)} training examples for indices "
                               f"[{start}, {stop}) of step {step}")
        if self.augments:
            pairs = [self.task.augment_batch(x[i : i + 1], y[i : i + 1], torch.Generator().manual_seed(s))
                     for i, s in enumerate(seeds.example_seeds(start, stop, self.seed, seeds.AUGMENT, step))]
            x, y = torch.cat([a for a, _ in pairs]), torch.cat([b for _, b in pairs])
        return x, y


class Prefetcher:
    """``batches(step)`` of the coming steps, made ahead by ``depth`` background threads.

    ``prefetcher(step)`` returns exactly ``batches(step)`` (a batch is a pure function of the step,
    so making it early or in another thread changes nothing, and a resumed run continues the same
    stream); steps asked in order find their batch made while the previous steps trained, and the
    next ``depth`` steps are queued. A step out of order (a test calling ``Trainer.step(i)``, a
    resume) is made at once and the queue restarts after it. On CUDA the batches are pinned, so the
    copy to the GPU can overlap the step. An exception while making a batch is raised by the call
    that asks for it. ``close()`` stops the threads (the object is also a context manager).
    """

    def __init__(self, batches: Batches, depth: int, *, pin: bool = False):
        from concurrent.futures import ThreadPoolExecutor

        self.batches, self.depth, self.pin = batches, depth, pin
        self.pool = ThreadPoolExecutor(max_workers=depth, thread_name_prefix="deqloop-batches") if depth else None
        self.queue: dict[int, Any] = {}  # step -> future

    def _make(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.batches(step)
        return (x.pin_memory(), y.pin_memory()) if self.pin else (x, y)

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pool is None:
            return self._make(step)
        future = self.queue.pop(step, None)
        if future is None:  # out of order: drop what was queued for other steps
            for pending in self.queue.values():
                pending.cancel()
            self.queue.clear()
        for ahead in range(step + 1, step + 1 + self.depth):
            if ahead not in self.queue:
                self.queue[ahead] = self.pool.submit(self._make, ahead)
        return future.result() if future is not None else self._make(step)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.queue.clear()
            self.pool = None

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
