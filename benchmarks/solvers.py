"""Our solvers next to torchdeq's, side by side in one run.

For (a) a synthetic contractive map and (b) a realistic map — one pre-norm transformer block with
input injection, batch 64, 81 tokens, width 128, per-example contraction spread over 0.2–0.95 —
prints for each method: function evaluations (NFE), wall time, the relative residual of the
returned z (measured afterwards), and the ratios ours / torchdeq. Also: our time beyond
NFE × (time of one f call), and what freezing converged examples saves when f can be restricted
to the unconverged examples (BatchedMap).

    python benchmarks/solvers.py [--repeats 3] [--threads 2] [--rtol 1e-4]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from deqloop import solve
from deqloop.solvers import BatchedMap

PAIRS = (("picard", "torchdeq:fixed_point_iter"), ("anderson", "torchdeq:anderson"), ("broyden", "torchdeq:broyden"))


def synthetic(batch=64, dim=2048, seed=0):
    """z ↦ tanh(c_b·W z + x_b) with ‖W‖₂ = 1 and per-sample c_b ∈ [0.2, 0.95]."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(dim, dim, generator=g) / dim**0.5
    W = W / torch.linalg.matrix_norm(W, 2)
    c = torch.linspace(0.2, 0.95, batch)[:, None]
    x = torch.randn(batch, dim, generator=g)

    def step(z, c, x):
        return torch.tanh(c * (z @ W.T) + x)

    return step, (c, x), torch.zeros(batch, dim)


class InjectedBlock(nn.Module):
    """c_b · PreNormBlock(z + e): torch's pre-norm encoder layer (default initialisation) with input
    injection, scaled per example by c_b so the map is contractive (Picard converges for every c_b)."""

    def __init__(self, width=128, heads=8):
        super().__init__()
        self.block = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True)

    def forward(self, z, c, e):
        return c[:, None, None] * self.block(z + e)


def realistic(batch=64, tokens=81, width=128, seed=0):
    torch.manual_seed(seed)
    model = InjectedBlock(width).eval()
    c = torch.linspace(0.2, 0.95, batch)
    e = torch.randn(batch, tokens, width)
    return model, (c, e), torch.zeros(batch, tokens, width)


def relative_residual(f, z):
    with torch.no_grad():
        fz = f(z)
    return float(((fz - z).flatten(1).norm(dim=1) / fz.flatten(1).norm(dim=1)).max())


def time_call(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def bench(name, step, args, z0, rtol, max_iter, repeats):
    closure = lambda z: step(z, *args)  # noqa: E731 — what torchdeq sees: the whole batch every call
    with torch.no_grad():
        t_f, _ = time_call(lambda: closure(z0), max(5, repeats))
    print(f"\n== {name}: batch {z0.shape[0]}, state {tuple(z0.shape[1:])}, rtol {rtol:g}, one f call {1e3 * t_f:.2f} ms")
    header = f"{'method':<28}{'NFE':>6}{'time s':>9}{'resid':>10}{'ovh %':>8}{'NFE/td':>8}{'time/td':>9}{'resid/td':>10}"
    print(header)
    print("-" * len(header))
    rows = {}
    for ours, theirs in PAIRS:
        for method in (ours, theirs):
            dt, sol = time_call(lambda: solve(closure, z0, method, rtol=rtol, max_iter=max_iter), repeats)
            rows[method] = (sol.nfe, dt, relative_residual(closure, sol.z))
        for method in (ours, theirs):
            nfe, dt, res = rows[method]
            overhead = 100 * (dt - nfe * t_f) / (nfe * t_f)
            line = f"{method:<28}{nfe:>6}{dt:>9.3f}{res:>10.2e}{overhead:>8.1f}"
            if method == ours:
                tn, tt, tr = rows[theirs]
                line += f"{nfe / tn:>8.2f}{dt / tt:>9.2f}{res / tr:>10.2f}"
            print(line)
    print("\nadaptive compute (BatchedMap: converged examples are no longer evaluated):")
    for method, _ in PAIRS:
        dt, sol = time_call(lambda: solve(BatchedMap(step, *args), z0, method, rtol=rtol, max_iter=max_iter), repeats)
        full = rows[method]
        print(f"  {method:<10} NFE {sol.nfe:>4}  example-evaluations {sol.sample_evals:>6} of {sol.nfe * z0.shape[0]:>6}"
              f"  time {dt:.3f} s ({dt / full[1]:.2f}× the closure)  iterations min/median/max "
              f"{int(sol.iterations.min())}/{int(sol.iterations.median())}/{int(sol.iterations.max())}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rtol", type=float, default=1e-4)
    p.add_argument("--max-iter", type=int, default=200)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    step, args, z0 = synthetic()
    bench("synthetic tanh map", step, args, z0, a.rtol, a.max_iter, a.repeats)
    model, args, z0 = realistic()
    bench("pre-norm transformer block with injection", model, args, z0, a.rtol, a.max_iter, a.repeats)


if __name__ == "__main__":
    main()
