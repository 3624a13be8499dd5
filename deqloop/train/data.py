"""The training batch of each step, a pure function of ``(seed, step)``."""

from __future__ import annotations

import torch

from deqloop import seeds
from deqloop.tasks import Task

__all__ = ["Batches"]


class Batches:
    """The global batch of every step, sliced for this rank.

    Without a pool (``train_size=0``) each step asks the task for ``task.train_batch(B, seed, step)``
    (a task's curriculum lives there); with a pool of ``train_size`` examples, drawn once, the
    steps walk through shuffled epochs (the last partial batch of an epoch is dropped). Either way
    the task's augmentation is applied with a generator of ``(seed, step)``. Each rank gets its
    slice of the global batch, so one process and many see the same global batches.
    """

    def __init__(self, task: Task, batch_size: int, seed: int, *, train_size: int = 0, rank: int = 0,
                 world: int = 1):
        self.task, self.batch_size, self.seed = task, batch_size, seed
        self.train_size = train_size
        self.rank, self.world = rank, world
        self.pool: tuple[torch.Tensor, torch.Tensor] | None = None
        if train_size:
            self.pool = task.make("train", train_size, seed=seeds.derive_seed(seed, seeds.POOL) % 2**31)
        self.per_epoch = train_size // batch_size if train_size else 0

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        B = self.batch_size
        if self.pool is None:
            x, y = self.task.train_batch(B, self.seed, step)
        else:
            epoch, offset = divmod(step, self.per_epoch)
            order = torch.randperm(self.train_size, generator=seeds.generator(self.seed, seeds.EPOCH, epoch))
            pick = order[offset * B : (offset + 1) * B]
            x, y = self.pool[0][pick], self.pool[1][pick]
        x, y = self.task.augment_batch(x, y, seeds.generator(self.seed, seeds.AUGMENT, step))
        share = B // self.world
        return x[self.rank * share : (self.rank + 1) * share], y[self.rank * share : (self.rank + 1) * share]
