"""The stability monitor's ρ estimate along a training run: warm-started against a cold start.

    python benchmarks/spectral.py [--recipe cpu/prefix_sums] [--steps 200] [--every 25] [--loss progressive]

Trains the recipe's run (no evaluation, no checkpoints, one torch thread) with the monitor every
``--every`` steps. At each measurement, at the same fixed points and with the same tolerance and
product budget (the monitor's defaults), it takes the estimate twice: cold (a fresh monitor, a
random start) and the monitor's own (warm-started from its previous measurement; the record it
writes). Printed per measurement: Jacobian–vector products per probe example (mean) and the
converged fraction of each, the median ρ of each and their seconds. The monitor does not touch
the training RNG, so the run trains the same parameters as without it.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import warnings

import torch

from deqloop.adjoint import BackwardWarning
from deqloop.train import Trainer
from deqloop.train.monitor import StabilityMonitor
from deqloop.train.recipes import recipe


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default="cpu/prefix_sums", help="training recipe [cpu/prefix_sums]")
    p.add_argument("--steps", type=int, default=200, help="training steps [200]")
    p.add_argument("--every", type=int, default=25, help="measure every N steps [25]")
    p.add_argument("--loss", default=None, help="training loss (default: the recipe's)")
    a = p.parse_args()
    torch.set_num_threads(1)
    logging.getLogger("deqloop.train").setLevel(logging.ERROR)
    warnings.simplefilter("ignore", BackwardWarning)
    extra = {} if a.loss is None else {"loss": a.loss}
    rows = []
    with tempfile.TemporaryDirectory() as out:
        config = recipe(a.recipe, steps=a.steps, stability_every=a.every, eval_size=0, log_every=10**6,
                        checkpoint_every=10**6, progress=False, threads=1, out=out, **extra)
        trainer = Trainer(config)
        monitor = trainer.monitor
        warm_estimate = monitor.spectral_radius

        def both(z, e, seed, **kw):
            fresh = StabilityMonitor(monitor.model, monitor.probe_x, seed=monitor.seed, eig_tol=monitor.eig_tol,
                                     eig_matvecs=monitor.eig_matvecs)
            t0 = time.perf_counter()
            cold = fresh.spectral_radius(z, e, seed, **kw)
            t1 = time.perf_counter()
            warm = warm_estimate(z, e, seed, **kw)
            t2 = time.perf_counter()
            rows.append((trainer.step_count, cold, t1 - t0, warm, t2 - t1))
            return warm

        monitor.spectral_radius = both
        trainer.run()
    print(f"{a.recipe}: {a.steps} steps, monitor every {a.every} on {len(monitor.probe_x)} probe examples, "
          f"eig_tol {monitor.eig_tol:g}, at most {monitor.eig_matvecs} products")
    print(f"{'step':>5} {'cold JVPs':>9} {'conv':>5} {'ρ':>8} {'s':>5}   {'warm JVPs':>9} {'conv':>5} {'ρ':>8} {'s':>5}")
    for step, cold, tc, warm, tw in rows:
        mc, mw = float(cold.matvecs.double().mean()), float(warm.matvecs.double().mean())
        print(f"{step:>5} {mc:>9.1f} {float(cold.converged.double().mean()):>5.2f} {float(cold.radius.median()):>8.4f} "
              f"{tc:>5.2f}   {mw:>9.1f} {float(warm.converged.double().mean()):>5.2f} "
              f"{float(warm.radius.median()):>8.4f} {tw:>5.2f}")
    later = rows[1:]
    if later:
        mc = sum(float(r[1].matvecs.double().mean()) for r in later) / len(later)
        mw = sum(float(r[3].matvecs.double().mean()) for r in later) / len(later)
        print(f"after the first measurement: {mc:.1f} products cold, {mw:.1f} warm per probe example (mean); "
              f"{sum(r[2] for r in later):.1f} s cold, {sum(r[4] for r in later):.1f} s warm in all")


if __name__ == "__main__":
    main()
