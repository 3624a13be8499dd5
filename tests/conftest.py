"""Shared test fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# ../shared beside the checkout holds real puzzles; CI has it, a bare clone may not.
SHARED = Path(os.environ.get("DEQLOOP_SHARED", Path(__file__).resolve().parents[2] / "shared"))
SHARED_DATA = SHARED / "data"


@pytest.fixture
def shared_data() -> Path:
    """Path to ``../shared/data``; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA} (set DEQLOOP_SHARED to its parent)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _fresh_backward_warnings():
    """Each test sees the first failed implicit backward solve reported in full."""
    from deqloop.adjoint_warnings import backward_warnings

    backward_warnings.reset()
    yield


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    """Every test starts from the same seed, on one thread: the problems are tiny and
    latency-bound, and extra threads only add contention on a small machine."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
