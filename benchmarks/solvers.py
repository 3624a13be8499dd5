"""Our solvers next to torchdeq's, side by side in one run, and their distance to the physical limit.

Two maps: (a) a synthetic contractive tanh map and (b) a realistic one — one pre-norm transformer
block with input injection, batch 64, 81 tokens, width 128, per-example contraction spread over
0.2–0.95. Every method solves the same f to the same relative tolerance. Ours runs twice: on a
``BatchedMap`` (converged examples are no longer evaluated) and on a plain closure (the whole
batch every call, like torchdeq). The repeats are interleaved (ours, ours, theirs, ours, ...) and
the medians compared, so the ratios are measured under the same machine load.

The cost of f is measured on sub-batches of 1, 2, 4, ... B rows before every solve, and its
medians are printed per example above each map's table (it is not linear in the batch size: small
batches run at another efficiency than the full one). The columns:

    NFE        calls of f (each on the rows still being solved)
    it/smp     mean over examples of the iterations each needed (torchdeq: the steps it reports)
    evals      example-evaluations: Σ over calls of the rows evaluated
    time s     median wall time of the solve
    resid      largest relative residual ‖f(z) − z‖/‖f(z)‖ of the returned state, measured afterwards
    ×td        ours / torchdeq's same method: wall time, NFE, residual
    in f s     time spent inside f during the solve (timed around each call)
    out %      (time − in f) / in f: the loop's own cost, measured within the same solves
    limit s    physical limit: Σ over calls of the cost of f on that many rows, from the measured
               curve, i.e. Σ over examples of (evaluations × per-example cost at the batch size it
               was evaluated in). This is what f alone would cost with a loop that cost nothing.
    ovh %      (time − limit) / limit
    ovh@B %    the same with the full-batch cost per example, t_f(B)/B, for every evaluation

A line under each table gives, per method, our time inside f over torchdeq's whole time: the ratio
a loop that cost nothing would reach with the same evaluations, so the floor of ×td t that only
fewer (or cheaper) evaluations of f can lower.

The limit takes the curve, not t_f(B)/B, because the curve is what f costs on the rows the solver
actually hands it (a BatchedMap's later calls run on a few rows, at another cost per example);
ovh@B shows how much the figure depends on that choice. For a closure both are NFE × t_f(B).

torchdeq returns f(x) of its best iterate x, one plain step beyond the point its tolerance was
checked at; ours returns the same (``return_image=True``), so both residuals are of f(x*). Ours
certifies ‖f(z) − z‖ ≤ rtol·‖f(z)‖ at z itself; torchdeq's own reported residual is that of x.

    python benchmarks/solvers.py [--repeats 5] [--threads 1] [--rtol 1e-4] [--only realistic]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
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


class Recorder:
    """Wraps f: records the rows and the seconds of every call (``calls``, shared with selections)."""

    def __init__(self, f, calls):
        self.f, self.calls = f, calls

    def __call__(self, z):
        t = time.perf_counter()
        out = self.f(z)
        self.calls.append((z.shape[0], time.perf_counter() - t))
        return out


class SelectableRecorder(Recorder):
    def select(self, index):
        return SelectableRecorder(self.f.select(index), self.calls)


def relative_residual(f, z):
    with torch.no_grad():
        fz = f(z)
    return float(((fz - z).flatten(1).norm(dim=1) / fz.flatten(1).norm(dim=1)).max())


def median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def time_curve(step, args, z, timings):
    """Time one f call on the first n rows, for n = 1, 2, 4, ... and the full batch, appending to
    ``timings[n]``; called before every solve, so the curve sees the same machine load."""
    B = z.shape[0]
    sizes = sorted({2**i for i in range(B.bit_length()) if 2**i < B} | {B})
    with torch.no_grad():
        for n in sizes:
            zn, an = z[:n], tuple(a[:n] for a in args)
            step(zn, *an)  # warm-up
            timings.setdefault(n, []).append(median_time(lambda zn=zn, an=an: step(zn, *an), max(1, 16 // n)))


def limit(calls, curve):
    """Σ over calls of the cost of f on that many rows, interpolated on the measured curve."""
    sizes = np.array(sorted(curve), dtype=float)
    costs = np.array([curve[int(n)] for n in sizes])
    return float(sum(np.interp(rows, sizes, costs) for rows, _ in calls))


def bench(name, step, args, z0, rtol, max_iter, repeats):
    B = z0.shape[0]
    with torch.no_grad():
        z1 = step(z0, *args)  # time f on a state it meets, not on zeros
    timings: dict[int, list[float]] = {}
    variants = []
    for ours, theirs in PAIRS:
        variants += [(ours, ours, "batched"), (ours, ours, "plain"), (ours, theirs, "plain")]
    results: dict[tuple[str, str], list] = {(method, kind): [] for _, method, kind in variants}
    for _ in range(repeats):  # interleaved: every method sees the same stretch of machine load
        for _, method, kind in variants:
            time_curve(step, args, z1, timings)  # the curve too, spread over the whole run
            calls: list[tuple[int, float]] = []
            if kind == "batched":
                f = SelectableRecorder(BatchedMap(step, *args), calls)
            else:
                f = Recorder(lambda z: step(z, *args), calls)
            extra = {} if method.startswith("torchdeq:") else {"return_image": True}
            t = time.perf_counter()
            sol = solve(f, z0, method, rtol=rtol, max_iter=max_iter, **extra)
            results[method, kind].append((time.perf_counter() - t, sol, calls))
    curve = {n: statistics.median(t) for n, t in sorted(timings.items())}
    per_b = curve[B] / B
    print(f"\n== {name}: batch {B}, state {tuple(z0.shape[1:])}, rtol {rtol:g}")
    print("cost of f per example on n rows: "
          + ", ".join(f"n={n} {1e3 * t / n:.3f} ms" for n, t in curve.items())
          + f"  (full batch {1e3 * curve[B]:.2f} ms)")
    header = (f"{'method':<28}{'map':<9}{'NFE':>5}{'it/smp':>8}{'evals':>7}{'time s':>8}{'resid':>10}"
              f"{'×td t':>7}{'×td NFE':>8}{'×td res':>8}{'in f s':>8}{'out %':>7}{'limit s':>8}{'ovh %':>7}{'ovh@B %':>8}")
    print(header)
    print("-" * len(header))
    rows = {}
    for _, method, kind in variants:
        runs = results[method, kind]
        dt = statistics.median(r[0] for r in runs)
        _, sol, calls = runs[-1]
        in_f = statistics.median(sum(s for _, s in r[2]) for r in runs)
        evals = sum(n for n, _ in calls)
        rows[method, kind] = {
            "nfe": sol.nfe, "its": float(sol.iterations.float().mean()), "evals": evals, "time": dt, "in_f": in_f,
            "res": relative_residual(lambda z: step(z, *args), sol.z), "certified": float(sol.residual.max()),
            "limit": limit(calls, curve), "limit_b": evals * per_b,
        }
    for _, method, kind in variants:
        r = rows[method, kind]
        line = (f"{method:<28}{kind:<9}{r['nfe']:>5}{r['its']:>8.1f}{r['evals']:>7}{r['time']:>8.3f}{r['res']:>10.2e}")
        theirs = dict(PAIRS).get(method)
        if theirs:
            td = rows[theirs, "plain"]
            line += f"{r['time'] / td['time']:>7.2f}{r['nfe'] / td['nfe']:>8.2f}{r['res'] / td['res']:>8.2f}"
        else:
            line += " " * 23
        ovh = 100 * (r["time"] - r["limit"]) / r["limit"]
        ovh_b = 100 * (r["time"] - r["limit_b"]) / r["limit_b"]
        out = 100 * (r["time"] - r["in_f"]) / r["in_f"]
        print(line + f"{r['in_f']:>8.3f}{out:>7.1f}{r['limit']:>8.3f}{ovh:>7.1f}{ovh_b:>8.1f}")
    # how far the loop's own cost can move the ratio: a loop that cost nothing would take its time in f
    print("ours with a loop that cost nothing (time in f only) / torchdeq's time: "
          + ", ".join(f"{m} {k} {rows[m, k]['in_f'] / rows[dict(PAIRS)[m], 'plain']['time']:.2f}"
                      for _, m, k in variants if m in dict(PAIRS)))
    print("ours certify at z (before the returned f(z)): largest relative residual "
          + ", ".join(f"{m} {k} {rows[m, k]['certified']:.2e}" for _, m, k in variants if not m.startswith("torchdeq")))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rtol", type=float, default=1e-4)
    p.add_argument("--max-iter", type=int, default=200)
    p.add_argument("--only", choices=("synthetic", "realistic"), help="run one map only")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {a.repeats} interleaved repeats (medians)")
    if a.only != "realistic":
        step, args, z0 = synthetic()
        bench("synthetic tanh map", step, args, z0, a.rtol, a.max_iter, a.repeats)
    if a.only != "synthetic":
        model, args, z0 = realistic()
        bench("pre-norm transformer block with injection", model, args, z0, a.rtol, a.max_iter, a.repeats)


if __name__ == "__main__":
    main()
