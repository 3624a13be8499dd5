"""What a GPU run decides before its first step, checked with ``torch.cuda`` mocked: the device of
each torchrun process, bf16 by compute capability, RNG states restored on fewer GPUs; autocast and
the seeds of every generator; and the Jacobian penalty with a compiled block."""

from __future__ import annotations

import random
import warnings

import numpy as np
import pytest
import torch

from deqloop.device import resolve_device
from deqloop.model.compiled import CompiledBlock
from deqloop.errors import ConfigError
from deqloop.train import Trainer, runtime
from test_train import tiny_config


@pytest.fixture
def gpus(monkeypatch):
    """A machine with two visible GPUs of compute capability ``gpus.capability`` (mocked)."""

    class Gpus:
        capability = (9, 0)
        rng: dict[int, torch.Tensor] = {}

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: Gpus.capability)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, index: Gpus.rng.__setitem__(index, state))
    return Gpus


def test_each_torchrun_process_takes_its_local_gpu(gpus):
    assert resolve_device("cuda", local_rank=1) == torch.device("cuda", 1)
    assert resolve_device("auto", local_rank=1) == torch.device("cuda", 1)
    assert resolve_device("cuda:1", local_rank=1) == torch.device("cuda", 1)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)  # one process: any GPU
    with pytest.raises(ConfigError, match=r"'cuda:0' under torchrun.*cuda:1 here"):
        resolve_device("cuda:0", local_rank=1)


def test_bf16_autocast_by_compute_capability(gpus):
    gpu = torch.device("cuda", 0)
    assert runtime.amp_dtype("auto", gpu) is torch.bfloat16
    assert runtime.amp_dtype("bf16", gpu) is torch.bfloat16
    assert runtime.amp_dtype("none", gpu) is None
    assert runtime.amp_dtype("auto", torch.device("cpu")) is None
    assert runtime.amp_dtype("bf16", torch.device("cpu")) is torch.bfloat16  # CPU autocast
    gpus.capability = (8, 0)  # A100, the first with bf16 in hardware
    assert runtime.amp_dtype("auto", gpu) is torch.bfloat16
    gpus.capability = (7, 5)  # T4: none
    with pytest.warns(UserWarning, match=r"capability 7\.5, below 8\.0.*float32"):
        assert runtime.amp_dtype("auto", gpu) is None
    gpus.capability = (7, 0)  # V100: no bf16 in hardware
    with pytest.warns(UserWarning, match=r"capability 7\.0.*float32"):
        assert runtime.amp_dtype("auto", gpu) is None
    with pytest.raises(ConfigError, match=r"amp='bf16'.*capability 7\.0"):
        runtime.amp_dtype("bf16", gpu)


def test_resuming_with_fewer_gpus_restores_those_visible(gpus):
    state = runtime.rng_state()
    saved = [torch.full((16,), i, dtype=torch.uint8) for i in range(4)]  # saved on a 4-GPU machine
    with pytest.warns(UserWarning, match="4 GPU.*2 are visible: restoring the first 2;"):
        runtime.set_rng_state({**state, "cuda": saved})
    assert sorted(gpus.rng) == [0, 1] and all(torch.equal(gpus.rng[i], saved[i]) for i in (0, 1))
    gpus.rng.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        runtime.set_rng_state({**state, "cuda": saved[:2]})
    assert sorted(gpus.rng) == [0, 1]
    gpus.rng.clear()
    runtime.set_rng_state({k: v for k, v in state.items() if k != "cuda"})  # saved on a CPU machine
    assert not gpus.rng


def test_autocast_and_the_seeds_of_every_generator():
    a = torch.randn(4, 4)
    with runtime.autocast(torch.bfloat16, torch.device("cpu")):
        assert (a @ a).dtype is torch.bfloat16
    with runtime.autocast(None, torch.device("cpu")):
        assert (a @ a).dtype is torch.float32
    before = runtime.rng_state()  # the global generators are left as they were found
    try:
        runtime.seed_everything(2**32 + 5)  # numpy takes seeds below 2**32: the seed modulo 2**32
        drawn = (np.random.rand(), random.random(), torch.rand(1).item())
        np.random.seed(5)
        random.seed(2**32 + 5)
        torch.manual_seed(2**32 + 5)
        assert drawn == (np.random.rand(), random.random(), torch.rand(1).item())
    finally:
        runtime.set_rng_state(before)


def test_the_jacobian_penalty_trains_a_compiled_block(monkeypatch):
    # AOTAutograd (what every torch.compile backend but 'eager' uses) has no double backward: the
    # penalty's ‖εᵀJ‖² must be taken through the eager block
    from deqloop import LoopedDEQ
    from deqloop.train.objectives import Equilibrium

    monkeypatch.setattr(CompiledBlock, "backend", "aot_eager")
    torch.manual_seed(0)
    eager = LoopedDEQ(vocab_size=4, num_classes=2, grid=(5,), width=16, heads=2)
    compiled = LoopedDEQ(eager.config, compile=True)
    compiled.load_state_dict(eager.state_dict())
    x = torch.randint(0, 4, (3, 5), generator=torch.Generator().manual_seed(0))
    z = torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(1))
    grads = []
    for model in (compiled, eager):
        Equilibrium(model, seed=0, jac_reg=0.5).jacobian_penalty(x, z, step=0).backward()
        grads.append([p.grad for p in model.parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1]) > 0
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
