"""Throughput and model FLOP utilisation (MFU) of the loop's forward iteration.

Times ``iters`` applications of ``model.step`` (no autograd) at batch ``--batch`` and reports
tokens·iterations per second, achieved TFLOP/s (matmul FLOPs counted from the configuration,
attention over all N² pairs as the kernel computes them) and, with ``--peak-tflops``, MFU.
On CUDA it runs under bf16 autocast by default; the host synchronises only around the timed loop.

    python benchmarks/mfu.py --batch 512 --width 256 --heads 8 --grid 9,9 --peak-tflops 989
"""

from __future__ import annotations

import argparse
import time

import torch

from deqloop import LoopedDEQ


def step_flops(tokens: int, width: int, mlp_ratio: float, recall: str) -> float:
    """Matmul FLOPs of one loop step for one example (multiply-add = 2 FLOPs)."""
    N, D = tokens, width
    hidden = round(mlp_ratio * D)
    qkvo = 2 * N * D * 4 * D
    scores = 2 * 2 * N * N * D  # QKᵀ and AV
    mlp = 2 * 2 * N * D * hidden
    injection = {"none": 0, "external": 2, "internal": 4}[recall] * 2 * N * D * D
    return float(qkvo + scores + mlp + injection)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--grid", default="9,9", help="comma-separated grid, e.g. 9,9 or 32")
    p.add_argument("--recall", default="internal", choices=("none", "external", "internal"))
    p.add_argument("--norm", default="post")
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="bf16", choices=("bf16", "fp32"), help="autocast dtype (bf16 needs CUDA to be fast)")
    p.add_argument("--compile", action="store_true", help="compile the block with torch.compile")
    p.add_argument("--peak-tflops", type=float, default=0.0, help="the device's peak dense TFLOP/s for MFU (H200 bf16: 989)")
    a = p.parse_args(argv)
    try:
        grid = tuple(int(g) for g in a.grid.split(","))
    except ValueError:
        p.error(f"--grid takes comma-separated integers, got {a.grid!r}")
    device = torch.device(a.device)
    model = LoopedDEQ(vocab_size=16, num_classes=2, grid=grid, width=a.width, heads=a.heads, recall=a.recall,
                      norm=a.norm, compile=a.compile).to(device).eval()
    x = torch.randint(0, 16, (a.batch, *grid), device=device)
    use_amp = a.dtype == "bf16"
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if use_amp else torch.autocast(device.type, enabled=False)
    with torch.no_grad(), amp:
        e = model.embed(x)
        z = e.float()
        for _ in range(a.warmup):
            z = model.step(z, e)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(a.iters):
            z = model.step(z, e)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t
    tokens = 1
    for g in grid:
        tokens *= g
    flops = step_flops(tokens, a.width, model.config.arch.mlp_ratio, a.recall) * a.batch * a.iters
    tflops = flops / dt / 1e12
    print(f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}), autocast {a.dtype}, "
          f"batch {a.batch}, grid {grid}, width {a.width}, heads {a.heads}, recall {a.recall}, compile {a.compile}")
    print(f"{a.iters} iterations in {dt:.3f} s: {a.batch * tokens * a.iters / dt:.3e} token·iterations/s, "
          f"{1e3 * dt / a.iters:.2f} ms/iteration, {tflops:.2f} TFLOP/s"
          + (f", MFU {100 * tflops / a.peak_tflops:.1f} % of {a.peak_tflops:g} TFLOP/s" if a.peak_tflops else ""))
    if not torch.isfinite(z).all():
        print("warning: the state became non-finite")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
