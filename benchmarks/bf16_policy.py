"""Whether solves still reach fixed points under bf16 autocast: each precision policy side by side.

    python benchmarks/bf16_policy.py [--checkpoint runs/demo/last.pt] [--lengths 12,48] [--n 128]

On a trained prefix-sums model (by default the demo's: ``deqloop demo`` writes it), for inputs of
each length: the fraction of examples whose forward solve converges, the median relative residual
reached, exact-match accuracy at the answer, agreement with the float32 answer, and CPU seconds per
solve, for

* ``float32``: no autocast;
* ``bf16 map``: the whole map under bf16 autocast at the model's rtol (what a GPU run did before
  ``SolveSettings.precision``);
* ``bf16 map, rtol F``: the same with the tolerance raised to F (``precision="autocast"`` raises
  it to ``BF16_RTOL``);
* ``float32 solve`` (the default ``precision="float32"``): under bf16 autocast, the solver's own
  evaluations (no gradient) in float32, bf16 where gradients are taken.

CPU bf16 autocast rounds as CUDA's does (the same bf16 format), so the convergence figures carry
over; the seconds do not (on the CPU bf16 is often slower). One torch thread by default.
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

from deqloop.model.config import BF16_RTOL
from deqloop.run import Run
from deqloop.solvers import BatchedMap, solve
from deqloop.solvers.loop import PrecisionWarning


def policies(rtol: float) -> list[tuple[str, bool, str, float]]:
    """``(name, autocast, precision, rtol)`` of each option."""
    floors = sorted({1e-3, 3e-3, BF16_RTOL})
    return ([("float32", False, "float32", rtol), ("bf16 map", True, "autocast", rtol)]
            + [(f"bf16 map, rtol {f:g}", True, "autocast", f) for f in floors]
            + [("float32 solve (default)", True, "float32", rtol)])


@torch.no_grad()
def measure(model, x, y, correct, *, autocast: bool, precision: str, rtol: float, max_iter: int):
    s = model.config.solve
    e = model.embed(x)
    z0 = model.initial_state(e)
    step = model.step if precision == "autocast" else model._solver_step
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast), warnings.catch_warnings():
        warnings.simplefilter("ignore", PrecisionWarning)  # the bf16 map at rtol 1e-4 is measured on purpose
        sol = solve(BatchedMap(step, e), z0, method=s.solver, rtol=rtol, max_iter=max_iter, **s.solver_options)
    seconds = time.perf_counter() - start
    right = correct(model.readout(sol.z).float(), y, x)
    return sol, right, seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="runs/demo/last.pt", help="a prefix-sums run [runs/demo/last.pt]")
    p.add_argument("--lengths", default="12,48", help="input lengths, comma-separated [12,48]")
    p.add_argument("--n", type=int, default=128, help="inputs per length [128]")
    p.add_argument("--max-iter", type=int, default=0, help="solver budget (0: 4 × length + 20)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    run = Run.load(args.checkpoint)
    model, task = run.model.eval(), run.task
    rtol = model.config.solve.rtol
    print(f"{args.checkpoint}: solver {model.config.solve.solver}, model rtol {rtol:g}; {args.n} inputs per length")
    for length in (int(v) for v in args.lengths.split(",")):
        x, y = task.make("hard", args.n, seed=length) if length != task.grid[0] else task.make("val", args.n, seed=0)
        if x.shape[1] != length:
            x, y = type(task)(**{**task.settings(), "hard_length": length}).make("hard", args.n, seed=length)
        max_iter = args.max_iter or 4 * length + 20
        print(f"\n{length} bits, max_iter {max_iter}")
        print(f"{'policy':<26}{'converged':>10}{'median res':>12}{'accuracy':>10}{'= float32':>11}{'s/solve':>9}")
        reference = None
        for name, autocast, precision, tol in policies(rtol):
            sol, right, seconds = measure(model, x, y, task.correct, autocast=autocast, precision=precision, rtol=tol,
                                          max_iter=max_iter)
            answer = model.readout(sol.z).argmax(-1)
            reference = answer if reference is None else reference
            same = (answer == reference).flatten(1).all(1).float().mean().item()
            print(f"{name:<26}{sol.converged.float().mean().item():>9.1%}{sol.residual.median().item():>12.2e}"
                  f"{right.float().mean().item():>9.1%}{same:>10.1%}{seconds:>9.2f}")


if __name__ == "__main__":
    main()
