"""Time of ``analyze`` on a CPU-sized problem: batch 64, 81 tokens (9×9 grid), width 128.

Prints the cost of one batched Jacobian product (the unit everything else is counted in), the
report's summary with the time of each stage, the total, and — optionally — ARPACK run per
example on the first few examples as a reference for the batched Krylov–Schur spectral radius.

    python benchmarks/analysis.py [--batch 64] [--threads 2] [--measures spectrum sigma_max ...]
                                  [--arpack 4] [--recall internal] [--bias-std 0] [--seed 0]

The model is a freshly initialized LoopedDEQ (float32, recall and norm as given), so the
numbers describe the cost of the analysis, not a trained model's stability. As initialized it
sits at the edge (ρ ≈ 1, the solves do not converge: the expensive case for every linear
solve); ``--bias-std 1`` makes it contractive, closer to what a converging model costs.
"""

from __future__ import annotations

import argparse
import time

import torch

from deqloop.analysis import MEASURES, LoopJacobian, analyze, leading_eigenvalues
from deqloop.model import LoopedDEQ


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--grid", type=int, nargs="+", default=[9, 9])
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--recall", default="internal")
    p.add_argument("--norm", default="post")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--measures", nargs="*", default=list(MEASURES), choices=MEASURES)
    p.add_argument("--arpack", type=int, default=4, help="examples to run ARPACK on for reference (0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bias-std", type=float, default=0.0,
                   help="redraw the MLP output bias with this std: > 0 makes the fresh map contractive "
                        "(a normalized state then depends on z only weakly), 0 keeps the plain initialization")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = LoopedDEQ(vocab_size=10, num_classes=10, grid=tuple(args.grid), width=args.width, heads=args.heads,
                      recall=args.recall, norm=args.norm)
    if args.bias_std > 0:
        with torch.no_grad():
            model.block.mlp.proj.bias.normal_(0, args.bias_std)
    x = torch.randint(0, 10, (args.batch, *args.grid), generator=torch.Generator().manual_seed(args.seed))
    n = model.config.arch.width * int(torch.tensor(args.grid).prod())
    print(f"LoopedDEQ width {args.width}, heads {args.heads}, grid {tuple(args.grid)}, recall {args.recall}, "
          f"norm {args.norm}, MLP bias std {args.bias_std or 'as initialized'}; batch {args.batch}, "
          f"state dim {n}; {args.threads} threads")

    # The unit of cost: one batched product with J (and Jᵀ), and one step of the loop.
    with torch.no_grad():
        e = model.embed(x)
        z = model.step(e, e)
    t = time.perf_counter()
    jac = LoopJacobian.from_model(model, z, e)
    t_graph = time.perf_counter() - t
    v = torch.randn(args.batch, n)
    timings = {}
    for name, fn in (("step", lambda: model.step(z, e)), ("jvp", lambda: jac.jvp(v)), ("vjp", lambda: jac.vjp(v))):
        fn()
        t = time.perf_counter()
        for _ in range(3):
            with torch.no_grad() if name == "step" else torch.enable_grad():
                fn()
        timings[name] = (time.perf_counter() - t) / 3
    print(f"one batched call: step {timings['step'] * 1e3:.0f} ms, J·v {timings['jvp'] * 1e3:.0f} ms, "
          f"Jᵀ·u {timings['vjp'] * 1e3:.0f} ms; building the Jacobian graph {t_graph * 1e3:.0f} ms")
    del jac

    t = time.perf_counter()
    report = analyze(model, x, measures=tuple(args.measures), seed=args.seed, progress=False)
    total = time.perf_counter() - t
    print()
    print(report.summary())
    print(f"\nanalyze total: {total:.1f} s")

    if args.arpack and report.spectral_radius is not None:
        k = min(args.arpack, args.batch)
        opts = report.options
        out = analyze_solution_z(model, x[:k], report)
        jac = LoopJacobian.from_model(model, out, model.embed(x[:k]).detach())
        t = time.perf_counter()
        ref = leading_eigenvalues(jac, method="arpack", k=opts["eig_k"], ncv=opts["eig_ncv"], tol=opts["eig_tol"],
                                  maxiter=300, seed=args.seed)
        t_arpack = time.perf_counter() - t
        rho = report.spectral_radius[:k]
        rel = ((rho - ref.radius).abs() / ref.radius).max().item()
        print(f"ARPACK on {k} examples (k={opts['eig_k']}, ncv={opts['eig_ncv']}, tol={opts['eig_tol']:g}): "
              f"{t_arpack:.1f} s, {ref.matvecs.double().mean():.0f} products per example, converged "
              f"{ref.converged.sum().item()}/{k}; largest relative difference from the batched "
              f"Krylov–Schur ρ: {rel:.2e}")


def analyze_solution_z(model, x, report):
    """The reference fixed points again (the report holds no states): the same solve, same settings."""
    from deqloop import solve
    from deqloop.analysis.reachability import initial_state
    from deqloop.solvers import BatchedMap

    opts, cfg = report.options, model.config.solve
    with torch.no_grad():
        e = model.embed(x)
        z0 = initial_state(model, e, report.reference_init, scale=cfg.init_scale, generator=torch.Generator())
        sol = solve(BatchedMap(model.step, e), z0, opts["solver"] or cfg.solver, rtol=opts["rtol"] or cfg.rtol,
                    max_iter=opts["max_iter"] or cfg.max_iter, **cfg.solver_options)
    return sol.z


if __name__ == "__main__":
    main()
