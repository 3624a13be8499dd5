"""LoopedDEQ benchmark: loop throughput per recall mode, and training-step memory per backward.

    .venv/bin/python benchmarks/model.py                 # CPU (or --device cuda)
    .venv/bin/python benchmarks/model.py --quick         # smaller, for a smoke run

1. Throughput of the loop map ``z ← step(z, e)`` without autograd, in token·iterations per
   second, for a realistic size (batch 64, a 9×9 board = 81 tokens, width 128) per recall mode.
2. Peak memory of one training step (forward solve, cross-entropy, backward) with
   ``backward="implicit"`` and with ``backward="unrolled"`` at 10, 50 and 200 forward iterations.
   Both use the picard forward solver with ``rtol=0`` so every iteration runs.

How memory is measured:
- CUDA: ``torch.cuda.max_memory_allocated`` minus what was allocated before the step.
- CPU: every tensor storage that an operator returns during the step is counted from its creation
  until it is freed (a ``TorchDispatchMode`` sees each op's outputs; a finalizer on the storage
  sees it go). Peak = the largest sum of live bytes. This counts everything autograd saves and
  every intermediate result, forward and backward; it does not see scratch buffers that a kernel
  allocates and frees inside one op. Parameters and inputs, live before the step, are excluded.
"""

from __future__ import annotations

import argparse
import time
import weakref

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from deqloop.model import RECALLS, LoopedDEQ


class StorageTracker(TorchDispatchMode):
    """Peak of the bytes held by storages created by operators while the mode is active."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                self._track(t.untyped_storage())
        return out

    def _track(self, storage: torch.UntypedStorage) -> None:
        key = id(storage)  # the Python storage object lives exactly as long as the storage
        if key in self._seen:
            return
        self._seen.add(key)
        nbytes = storage.nbytes()
        self.live += nbytes
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, key, nbytes)

    def _free(self, key: int, nbytes: int) -> None:
        self._seen.discard(key)
        self.live -= nbytes


def build(recall: str, width: int, device: torch.device, **kwargs) -> LoopedDEQ:
    torch.manual_seed(0)
    return LoopedDEQ(vocab_size=13, num_classes=2, grid=(9, 9), width=width, heads=4,
                     recall=recall, norm="post", **kwargs).to(device)


def throughput(recall: str, batch: int, width: int, iters: int, device: torch.device) -> float:
    model = build(recall, width, device)
    x = torch.randint(0, 13, (batch, 9, 9), device=device)
    with torch.no_grad():
        e = model.embed(x)
        z = e
        for _ in range(2):  # warm-up (caches, allocator)
            z = model.step(z, e)
        sync(device)
        start = time.perf_counter()
        for _ in range(iters):
            z = model.step(z, e)
        sync(device)
        elapsed = time.perf_counter() - start
    return batch * 81 * iters / elapsed


def train_step_memory(backward: str, iters: int, batch: int, width: int,
                      device: torch.device) -> tuple[int, float]:
    """(peak bytes above the pre-step baseline, seconds) of one training step."""
    model = build("internal", width, device, solver="picard", backward=backward,
                  max_iter=iters, rtol=0.0)
    x = torch.randint(0, 13, (batch, 9, 9), device=device)
    y = torch.randint(0, 2, (batch, 9, 9), device=device)

    def step() -> None:
        out = model(x)
        loss = F.cross_entropy(out.logits.flatten(0, -2), y.flatten())
        loss.backward()

    start = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        tracker = StorageTracker()
        with tracker:
            step()
        peak = tracker.peak
    return peak, time.perf_counter() - start


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=64, help="batch for throughput")
    parser.add_argument("--mem-batch", type=int, default=16, help="batch for the memory table")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--iters", type=int, default=20, help="loop iterations timed per mode")
    parser.add_argument("--mem-iters", type=int, nargs="+", default=[10, 50, 200])
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU intra-op threads (1 avoids spin-wait collapse on a shared machine)")
    parser.add_argument("--quick", action="store_true", help="batch 8, width 64, iterations 2 and 8")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.mem_batch, args.width, args.iters, args.mem_iters = 8, 4, 64, 4, [2, 8]
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    how = "torch.cuda.max_memory_allocated" if device.type == "cuda" else "live op-output storages"
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")

    print(f"\nLoop throughput: batch {args.batch}, 81 tokens (9x9), width {args.width}, "
          f"4 heads, post norm, full attention, {args.iters} iterations, no autograd")
    print(f"{'recall':>10} | {'token·iter/s':>13}")
    for recall in RECALLS:
        print(f"{recall:>10} | {throughput(recall, args.batch, args.width, args.iters, device):13.3g}")

    print(f"\nPeak memory of one training step ({how}): batch {args.mem_batch}, 81 tokens, "
          f"width {args.width}, internal recall, picard forward with rtol=0")
    print(f"{'iterations':>10} | {'implicit MiB':>12} {'s':>6} | {'unrolled MiB':>12} {'s':>6}")
    peaks = {}
    for iters in args.mem_iters:
        row = []
        for backward in ("implicit", "unrolled"):
            peak, seconds = train_step_memory(backward, iters, args.mem_batch, args.width, device)
            peaks[backward, iters] = peak
            row.append(f"{peak / 2**20:12.1f} {seconds:6.1f}")
        print(f"{iters:>10} | {row[0]} | {row[1]}")
    lo, hi = min(args.mem_iters), max(args.mem_iters)
    for backward in ("implicit", "unrolled"):
        ratio = peaks[backward, hi] / peaks[backward, lo]
        print(f"{backward}: peak at {hi} iterations / peak at {lo} = {ratio:.2f}")


if __name__ == "__main__":
    main()
