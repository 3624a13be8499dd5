"""Training and evaluation throughput of the CPU cells: eager vs compiled vs bf16 vs both, beside
the machine's measured matmul peak, with ratios side by side in one run (never asserted by tests).

    python benchmarks/throughput.py                 # prefix sums, sudoku, sudoku at width 256
    python benchmarks/throughput.py --cells sudoku --modes eager,compile
    python benchmarks/throughput.py --local         # banded vs dense local attention; the solver loop's bookkeeping
    python benchmarks/throughput.py --quick         # tiny sizes: a smoke run in seconds
    python benchmarks/throughput.py --cells sudoku --modes compile --profile   # where a step's time goes
    python benchmarks/throughput.py --cells prefix_sums,seed_cpu,sudoku --modes eager,compile,segments,segments-inline

Timings are CPU time of this process (``time.process_time``) as well as wall time: with one
thread, CPU time is what a step costs without other jobs on the machine (the wall time of a
shared machine is mostly waiting). Each mode trains a fresh model on the same batches and draws:
``--warmup`` untimed steps (for the compiled modes: first the compilation of every graph their
steps use, in this process and with an empty inductor cache of their own, as in a run's first
compile; reported as "warm-up"), then the median of ``--repeats`` steps.

FLOPs are counted from the architecture (:func:`iteration_flops`, :func:`step_flops`; a
multiply-add is 2 FLOPs, only matmuls and attention products are counted, norms and activations
are not). One loop iteration on one example with N tokens, width D, MLP hidden H:

    qkv + output projections   2·N·D·4D
    attention                  2·2·N·M·D   (QKᵀ and AV; M = N dense, M = window^ndim banded)
    MLP                        2·2·N·D·H
    recall                     2·N·D·D · (4 internal: W_z, W_e per sublayer; 2 external; 0 none)

the readout 2·N·(D·D + D·C). A training step of the progressive loss is, per example,
``iteration · (n_nograd + 3·n_grad) + readout · 3 · readouts`` (the backward of a matmul is two
matmuls of the same size); its draws ``(n, k)`` are the trainer's.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from deqloop.adjoint import BackwardWarning
from deqloop.model.compiled import CompiledSegments
from deqloop.model.local_attention import LocalWindow, banded_attention, local_mask, local_pattern
from deqloop.train import TrainConfig, Trainer
from deqloop.train.objectives import progressive_draw

MODES = {"eager": dict(compile=False, amp="none"), "compile": dict(compile=True, amp="none"),
         # the progressive loss's graded iterations as compiled segments of 1, 2, 4, 8, 16 iterations, the
         # block a nested compile region in each (segments) or every iteration inlined (segments-inline)
         "segments": dict(compile=True, compile_segment=16, amp="none"),
         "segments-inline": dict(compile=True, compile_segment=16, amp="none"),
         "bf16": dict(compile=False, amp="bf16"), "bf16+compile": dict(compile=True, amp="bf16")}

_COMMON = dict(recall="internal", norm="post", loss="progressive", lr=1e-3, warmup_steps=0, eval_size=0,
               log_every=10**6, checkpoint_every=10**6, progress=False)
CELLS: dict[str, dict[str, Any]] = {
    # the cpu prefix-sums cell (experiments/presets.py), 12 bits, the paper's progressive loss
    "prefix_sums": dict(task="prefix_sums", task_options=dict(length=12), width=32, heads=4, attention="local",
                        window=3, max_iter=14, batch_size=128, alpha=1.0),
    # the seed-cpu prefix-sums cell (experiments/presets.py): the paper's loss at training depth 30, 32 bits
    "seed_cpu": dict(task="prefix_sums", task_options=dict(length=32, min_length=32), width=32, heads=4,
                     attention="local", window=5, max_iter=30, batch_size=64, alpha=1.0),
    # the sudoku example's cell (examples/sudoku.py): width 64, full attention, 16 iterations
    "sudoku": dict(task="sudoku", task_options=dict(blanks=(4, 24), augment=True), width=64, heads=4,
                   attention="full", max_iter=16, batch_size=64, alpha=0.5, detach_z0=True),
    "sudoku_w256": dict(task="sudoku", task_options=dict(blanks=(4, 24), augment=True), width=256, heads=4,
                        attention="full", max_iter=16, batch_size=64, alpha=0.5, detach_z0=True),
}
QUICK = dict(width=16, heads=2, batch_size=8, max_iter=4)
TARGET_SUDOKU_STEP = 0.5  # seconds on one thread
TARGET_PEAK_FRACTION = 0.5  # width 256: of the measured matmul peak


def iteration_flops(grid: tuple[int, ...], width: int, hidden: int, recall: str, attention: str = "full",
                    window: int = 1) -> float:
    """Matmul FLOPs of one loop iteration on one example (the formula of the module docstring)."""
    N, D = math.prod(grid), width
    pattern = local_pattern(grid, window, torch.device("cpu")) if attention == "local" else None
    M = pattern.neighbours if isinstance(pattern, LocalWindow) else N
    injections = {"none": 0, "external": 2, "internal": 4}[recall]
    return float(2 * N * D * 4 * D + 2 * 2 * N * M * D + 2 * 2 * N * D * hidden + injections * 2 * N * D * D)


def readout_flops(grid: tuple[int, ...], width: int, classes: int) -> float:
    return float(2 * math.prod(grid) * (width * width + width * classes))


def progressive_counts(alpha: float, depth: int, n: int, k: int, detach_z0: bool) -> tuple[int, int, int]:
    """``(iterations without gradient, iterations with gradient, readouts)`` of a progressive step."""
    no_grad = grad = readouts = 0
    if alpha < 1:
        grad, readouts = depth, 1  # z_n comes from this pass
    if alpha > 0:
        if alpha == 1 and n > 0:
            no_grad = n
        grad, readouts = grad + k, readouts + 1
    return no_grad, grad, readouts


def step_flops(config: TrainConfig, grid: tuple[int, ...], step: int, classes: int) -> float:
    """FLOPs of training step ``step`` of ``config`` (progressive loss) on a batch of ``grid``."""
    depth = config.depth()
    n, k = progressive_draw(config.run.seed, step, depth) if config.objective.alpha > 0 else (0, 0)
    no_grad, grad, readouts = progressive_counts(config.objective.alpha, depth, n, k, config.objective.detach_z0)
    it = iteration_flops(grid, config.model.width, round(config.model.mlp_ratio * config.model.width), config.model.recall,
                         config.model.attention, config.model.window)
    return config.optim.batch_size * (it * (no_grad + 3 * grad) + 3 * readouts * readout_flops(grid, config.model.width, classes))


@dataclass
class Timing:
    cpu: float  # median CPU seconds of the timed calls
    wall: float  # median wall seconds
    warmup_cpu: float  # CPU seconds of the untimed first calls (compilation included)


def timed(fn, warmup: int, repeats: int) -> Timing:
    c0 = time.process_time()
    for _ in range(warmup):
        fn()
    warm = time.process_time() - c0
    cpu, wall = [], []
    for _ in range(repeats):
        c, w = time.process_time(), time.perf_counter()
        fn()
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
    return Timing(statistics.median(cpu), statistics.median(wall), warm)


def matmul_peak(n: int, dtype: torch.dtype, repeats: int) -> float:
    """GFLOP/s of an ``n × n`` matmul in ``dtype`` (CPU time, median)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    t = timed(lambda: a @ b, 1, repeats)
    return 2 * n**3 / t.cpu / 1e9


def cell_config(name: str, mode: str, quick: bool, out: str) -> TrainConfig:
    fields = {**_COMMON, **CELLS[name], **MODES[mode], "out": out}
    if quick:
        fields.update(QUICK)
    return TrainConfig.from_flat(**fields)


def train_timing(config: TrainConfig, warmup: int, repeats: int,
                 profile: bool = False) -> tuple[Timing, float, dict[str, float] | None]:
    """Step timing, mean FLOPs of the timed steps and, with ``profile``, :func:`step_profile` of two
    more steps."""
    trainer = Trainer(config)
    state = {"step": 0}

    def one() -> None:
        trainer.step(state["step"])
        state["step"] += 1

    c0 = time.process_time()
    if config.run.compile is True:
        warm_compiled(trainer)
    compiling = time.process_time() - c0
    t = timed(one, warmup, repeats)
    t.warmup_cpu += compiling
    grid = tuple(trainer.batches(0)[0].shape[1:])
    flops = statistics.mean(step_flops(config, grid, s, trainer.task.num_classes)
                            for s in range(warmup, warmup + repeats))
    return t, flops, step_profile(trainer, state["step"]) if profile else None


def warm_compiled(trainer: Trainer) -> None:
    """Compile every graph a compiled run's steps use, on the first batch: the block with and
    without gradients and, with ``compile_segment``, every segment length (forward and backward),
    so that the timed steps compile nothing whatever their draws."""
    model, longest = trainer.model, trainer.config.run.compile_segment
    x = trainer.batches(0)[0].to(trainer.device)
    with torch.no_grad():
        e = model.embed(x)
        model.iterate(e, e, 2)
    e = model.embed(x)
    model.iterate(e.detach(), e, 2).float().square().mean().backward()
    if longest:
        e = model.embed(x)
        model.unroll(e, e, 2 * longest - 1)[1].float().square().mean().backward()  # every length once
    model.zero_grad(set_to_none=True)


PROFILE_GROUPS = {  # op-name prefixes of a training step's self CPU time, by what the time goes to
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"),
    "attention": ("aten::_scaled_dot_product", "aten::scaled_dot_product"),
    "compiled kernels": ("## Call CompiledFxGraph",),
    "copies": ("aten::copy_", "aten::clone", "aten::contiguous"),
}


def step_profile(trainer: Trainer, first_step: int, steps: int = 2) -> dict[str, float]:
    """Shares of the self CPU time of ``steps`` training steps (torch.profiler) per
    :data:`PROFILE_GROUPS` group, the rest as ``"other"``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for s in range(first_step, first_step + steps):
            trainer.step(s)
    shares = dict.fromkeys([*PROFILE_GROUPS, "other"], 0.0)
    for event in prof.key_averages():
        group = next((g for g, names in PROFILE_GROUPS.items() if event.key.startswith(names)), "other")
        shares[group] += event.self_cpu_time_total
    total = sum(shares.values()) or 1.0
    return {g: v / total for g, v in shares.items()}


def eval_timing(config: TrainConfig, iters: int, examples: int, repeats: int) -> float:
    """CPU seconds per 1,000 examples × iterations of plain iteration without gradients."""
    trainer = Trainer(config)
    model = trainer.model.eval()
    x, _ = trainer.task.make("val", examples, seed=1)
    amp = torch.autocast("cpu", dtype=torch.bfloat16) if config.run.amp == "bf16" else torch.autocast("cpu", enabled=False)

    def run() -> None:
        with torch.no_grad(), amp:
            e = model.embed(x)
            model.iterate(model.initial_state(e), e, iters)

    t = timed(run, 1, repeats)
    return t.cpu / (examples * iters) * 1000


def local_crossover(repeats: int, quick: bool) -> None:
    """Banded vs dense masked local attention, forward + backward of attention alone, 4 heads of 8."""
    cases = [((16,), 3), ((128,), 3), ((512,), 3)] if quick else [
        ((48,), 3), ((96,), 3), ((144,), 3), ((192,), 3), ((512,), 3), ((128,), 5), ((256,), 5),
        ((9, 9), 3), ((16, 16), 3), ((24, 24), 3), ((32, 32), 3)]
    print("\nlocal attention, forward + backward, 4 heads × 8, CPU ms (median); banded / dense")
    print(f"{'grid':<10}{'window':>7}{'batch':>7}{'N/window^d':>12}{'dense':>9}{'banded':>9}{'ratio':>7}  chosen")
    for grid, w in cases:
        N = math.prod(grid)
        B = max(2, 2**16 // N)
        q, k, v = [torch.randn(B, N, 4, 8).transpose(1, 2).requires_grad_() for _ in range(3)]
        mask, band = local_mask(grid, w, torch.device("cpu")), LocalWindow(grid, w)
        dense = timed(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask).sum().backward(), 1, repeats)
        banded = timed(lambda: banded_attention(q, k, v, band).sum().backward(), 1, repeats)
        chosen = "banded" if isinstance(local_pattern(grid, w, torch.device("cpu")), LocalWindow) else "dense"
        print(f"{str(grid):<10}{w:>7}{B:>7}{N / w ** len(grid):>12.1f}{1e3 * dense.cpu:>9.2f}"
              f"{1e3 * banded.cpu:>9.2f}{banded.cpu / dense.cpu:>7.2f}  {chosen}")
    paper_split_iteration(repeats, quick)


def paper_split_iteration(repeats: int, quick: bool) -> None:
    """One loop iteration of the paper-split model (width 32, 4 heads, window 3, internal recall, post
    norm) on 128 strings of 512 bits, no gradient, with either local-attention form: the unit of its
    evaluation (a plain-iteration sweep to 600 and a solve of up to 600 evaluations)."""
    from deqloop import LoopedDEQ

    bits, batch = (64, 8) if quick else (512, 128)
    model = LoopedDEQ(vocab_size=2, num_classes=2, grid=(32,), width=32, heads=4, attention="local", window=3,
                      recall="internal", norm="post").eval()
    x = torch.randint(0, 2, (batch, bits))
    with torch.no_grad():
        e = model.embed(x)
        cos, sin, _ = model._geometry((bits,), torch.device("cpu"))
        z = e.reshape(batch, bits, -1)
        t = {name: timed(lambda: model.block(z, z, cos, sin, pattern), 1, repeats).cpu
             for name, pattern in (("dense", local_mask((bits,), 3, torch.device("cpu"))),
                                   ("banded", LocalWindow((bits,), 3)))}
    print(f"\npaper split, one iteration at {bits} bits, batch {batch}, no gradient: dense {1e3 * t['dense']:.0f} ms, "
          f"banded {1e3 * t['banded']:.0f} ms ({t['banded'] / t['dense']:.2f}×); a sweep to 600 and a 600-evaluation "
          f"solve: {1200 * t['dense']:.0f} s dense, {1200 * t['banded']:.0f} s banded")
    # the solver loop's own work per iteration (residual norms, the best iterate, status and divergence
    # updates) on the same state, under a map that costs next to nothing (z <- 0.999 z + c): the most
    # that fusing it into compiled code could save
    from deqloop.solvers.loop_options import LoopOptions

    c, iters = torch.randn_like(z), 50
    cheap = lambda s: 0.999 * s + c  # noqa: E731
    loop = LoopOptions(method="picard", max_iter=iters, rtol=1e-12, atol=0.0)

    def bare() -> None:
        s = z
        for _ in range(iters):
            s = cheap(s)

    book = (timed(lambda: loop(cheap, z), 1, repeats).cpu - timed(bare, 1, repeats).cpu) / iters
    print(f"the solver loop's bookkeeping on that state: {1e3 * book:.1f} ms an iteration, "
          f"{book / t['banded']:.1%} of the banded iteration")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", default=",".join(CELLS), help=f"comma-separated, of {', '.join(CELLS)}")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per mode (compilation included) [2]")
    p.add_argument("--repeats", type=int, default=3, help="timed steps per mode [3]")
    p.add_argument("--eval-iters", type=int, default=30, help="iterations of the evaluation timing [30]")
    p.add_argument("--eval-examples", type=int, default=256, help="examples of the evaluation timing [256]")
    p.add_argument("--threads", type=int, default=1, help="torch threads [1]")
    p.add_argument("--local", action="store_true", help="only the banded vs dense local-attention crossover")
    p.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    p.add_argument("--profile", action="store_true",
                   help="also profile two training steps per mode: where the step's CPU time goes")
    a = p.parse_args(argv)
    cells, modes = a.cells.split(","), a.modes.split(",")
    for name, allowed in (("cell", cells), ("mode", modes)):
        pool = CELLS if name == "cell" else MODES
        bad = [c for c in allowed if c not in pool]
        if bad:
            p.error(f"unknown {name} {bad[0]!r}; allowed: {', '.join(pool)}")
    torch.set_num_threads(a.threads)
    torch._inductor.config.compile_threads = 1  # compile in this process, so its CPU time counts
    logging.getLogger("deqloop.train").setLevel(logging.ERROR)
    warnings.simplefilter("ignore", BackwardWarning)
    if a.quick:
        a.warmup, a.repeats, a.eval_iters, a.eval_examples = 1, 1, 2, 8
    load = f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "?"
    print(f"{a.threads} thread(s), load average {load}; times are CPU seconds of this process (wall in brackets)")
    n = 256 if a.quick else 2048
    peak = {"fp32": matmul_peak(n, torch.float32, a.repeats), "bf16": matmul_peak(n, torch.bfloat16, a.repeats)}
    print(f"measured peak: {n}×{n} matmul fp32 {peak['fp32']:.1f} GFLOP/s, bf16 {peak['bf16']:.1f} GFLOP/s")
    if a.local:
        local_crossover(a.repeats, a.quick)
        return 0
    results: dict[tuple[str, str], dict[str, float]] = {}
    for cell in cells:
        print(f"\n{cell}: training step (median of {a.repeats}) and evaluation (per 1,000 examples × iterations)")
        print(f"{'mode':<14}{'step s':>8}{'(wall)':>9}{'× eager':>9}{'warm-up s':>11}{'GFLOP/s':>9}"
              f"{'% peak':>8}{'eval s':>9}{'× eager':>9}")
        for mode in modes:
            torch._dynamo.reset()  # compiled code of an earlier mode's model must not count against this one's
            CompiledSegments.inline = mode.endswith("-inline")
            with tempfile.TemporaryDirectory() as out:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(out, "inductor")  # a first run's compile
                config = cell_config(cell, mode, a.quick, out)
                t, flops, shares = train_timing(config, a.warmup, a.repeats, a.profile)
                ev = eval_timing(config, a.eval_iters, a.eval_examples, a.repeats)
            r = results[cell, mode] = dict(step=t.cpu, wall=t.wall, warmup=t.warmup_cpu, flops=flops, eval=ev,
                                           gflops=flops / t.cpu / 1e9)
            base = results.get((cell, "eager"), r)  # the ratios read 1.00 until eager has run (list it first)
            kind = "bf16" if "bf16" in mode else "fp32"
            print(f"{mode:<14}{t.cpu:>8.4g}{f'({t.wall:.2f})':>9}{base['step'] / t.cpu:>9.2f}{t.warmup_cpu:>11.1f}"
                  f"{r['gflops']:>9.1f}{100 * r['gflops'] / peak[kind]:>8.1f}{ev:>9.3f}{base['eval'] / ev:>9.2f}")
            if shares is not None:
                print(f"{'':<14}profile, share of the step's self CPU time: "
                      + ", ".join(f"{g} {100 * v:.0f} %" for g, v in shares.items()))
        print(f"FLOPs per step: {results[cell, modes[0]]['flops'] / 1e9:.4g} G")
    print_targets(results, peak)
    return 0


def print_targets(results: dict[tuple[str, str], dict[str, float]], peak: dict[str, float]) -> None:
    print("\ntargets")
    sudoku = [(m, r["step"]) for (c, m), r in results.items() if c == "sudoku"]
    if sudoku:
        mode, best = min(sudoku, key=lambda item: item[1])
        print(f"  sudoku step ≤ {TARGET_SUDOKU_STEP} s on 1 thread: best {best:.3f} s ({mode}) — "
              f"{'met' if best <= TARGET_SUDOKU_STEP else 'not met'}")
    wide = [(m, r["gflops"] / peak["bf16" if "bf16" in m else "fp32"]) for (c, m), r in results.items()
            if c == "sudoku_w256"]
    if wide:
        mode, frac = max(wide, key=lambda item: item[1])
        print(f"  width 256 ≥ {100 * TARGET_PEAK_FRACTION:.0f} % of the matmul peak: best {100 * frac:.1f} % ({mode})"
              f" — {'met' if frac >= TARGET_PEAK_FRACTION else 'not met'}")


if __name__ == "__main__":
    raise SystemExit(main())
