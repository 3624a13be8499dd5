"""Where and how a run executes: processes (torchrun), RNG states, mixed precision, the optimizer's
parameter groups and learning-rate schedule."""

from __future__ import annotations

import contextlib
import math
import os
import random
import warnings
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

__all__ = ["agree", "amp_dtype", "autocast", "distributed_env", "lr_schedule", "mean_over_ranks", "param_groups",
           "rng_state", "seed_everything", "set_rng_state"]


def distributed_env() -> tuple[int, int, int]:
    """``(rank, world size, local rank)`` from torchrun's environment (``(0, 1, 0)`` alone)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def init_distributed(device: torch.device, world: int) -> None:
    """Join torchrun's process group (gloo on CPU, nccl on CUDA) when there are several processes."""
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend=backend, device_id=device if backend == "nccl" else None)


def mean_over_ranks(value: torch.Tensor, world: int) -> float:
    """The mean of a scalar over all processes (the value itself in one process)."""
    if world > 1:
        value = value.detach().clone().float()
        torch.distributed.all_reduce(value)
        value /= world
    return float(value)


def agree(finite: bool, stop: int, world: int, device: torch.device) -> tuple[bool, int]:
    """Whether ``finite`` holds on every process, and the largest ``stop`` of any process (a
    signal's number; 0: none), in one all-reduce; the values themselves in one process."""
    if world == 1:
        return finite, stop
    t = torch.tensor([0.0 if finite else 1.0, float(stop)], device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    bad, signum = t.tolist()
    return bad == 0.0, int(signum)


BF16_CAPABILITY = (8, 0)  # Ampere on: bf16 in hardware


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a run (``None``: float32). ``"none"``: float32. ``"bf16"``: bfloat16 — on
    the CPU its autocast (useful where the CPU has bf16 units, and to check a GPU run's dtypes), on
    CUDA only on a GPU of compute capability ≥ 8.0 (an error on older ones, which emulate it).
    ``"auto"``: bfloat16 on a CUDA GPU of capability ≥ 8.0, float32 on the CPU and, with a warning,
    on an older GPU (whose fp16 would need loss scaling, which deqloop does not do)."""
    if amp == "none" or (amp == "auto" and device.type != "cuda"):
        return None
    if device.type == "cuda":
        capability = tuple(torch.cuda.get_device_capability(device))
        if capability < BF16_CAPABILITY:
            message = (f"the GPU {device} has compute capability {capability[0]}.{capability[1]}, below "
                       f"{BF16_CAPABILITY[0]}.{BF16_CAPABILITY[1]}: no bf16 in hardware")
            if amp == "bf16":
                from deqloop.errors import ConfigError

                raise ConfigError(f"amp='bf16': {message}; use amp='none' (or 'auto', float32 there)")
            warnings.warn(f"amp='auto': {message}, so the run trains in float32", stacklevel=2)
            return None
    return torch.bfloat16


def autocast(dtype: torch.dtype | None, device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast to ``dtype`` on ``device``'s kind; a no-op for ``None``."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every RNG's state as tensors and plain values (loadable with ``weights_only=True``)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        saved, visible = state["cuda"], torch.cuda.device_count()
        if len(saved) != visible:
            warnings.warn(f"the checkpoint holds the RNG states of {len(saved)} GPU(s), {visible} are visible: "
                          f"restoring the first {min(len(saved), visible)}; random draws on the others differ "
                          "from the uninterrupted run", stacklevel=2)
        for index, gpu_state in enumerate(saved[:visible]):
            torch.cuda.set_rng_state(gpu_state, index)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on matrices, none on norms and biases (the 1-D parameters)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


PAPER_DECAY_AT = 0.6  # the paper's schedule: ×PAPER_DECAY from this fraction of training on
PAPER_DECAY = 0.1


def lr_schedule(schedule: str, warmup: int, total: int, floor: float, tick: int = 1) -> Callable[[int], float]:
    """The learning-rate multiplier of optimizer step ``step`` (0-based).

    ``cosine``, ``linear``, ``constant``: linear warmup over ``warmup`` steps, then that decay down
    to ``floor``.

    ``paper``: the schedule of the paper's runs, an exponential warm-up, then constant, ×0.1 from
    60 % of training on (``deepthinking/utils/warmup.py:115-133``, ``ExponentialWarmup``, and
    ``MultiStepLR(milestones=[60, 100], gamma=0.1)`` over 100 epochs with ``warmup_period=10``,
    ``deepthinking/utils/tools.py:205-211`` and ``config/problem/hyp/_default_hyperparameters.yaml``).
    Its clock ticks once every ``tick`` steps (the authors step both schedulers once per epoch,
    ``deepthinking/utils/training.py:535-536``; the trainer passes the steps of an epoch for a run
    over a fixed pool, else 1). With
    ``u = ⌊step / tick⌋``, ``P = warmup / tick`` and ``M = round(0.6 · total / tick)`` (both in
    ticks): ``(1 − exp(−(u + 1) / P) if u + 1 < P else 1) × (0.1 if u ≥ M else 1)``.
    ``floor`` is not used.
    """
    if schedule == "paper":
        period = warmup / tick
        milestone = round(PAPER_DECAY_AT * total / tick)

        def paper(step: int) -> float:
            u = step // tick
            warm = 1.0 - math.exp(-(u + 1) / period) if u + 1 < period else 1.0
            return warm * (PAPER_DECAY if u >= milestone else 1.0)

        return paper

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if schedule == "linear":
            return floor + (1.0 - floor) * (1.0 - progress)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor
