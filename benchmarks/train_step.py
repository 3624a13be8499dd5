"""One training step of fixed-point training (forward solve + backward) against one progressive
step at the same depth, batch 128, on the cpu prefix-sums cell; printed side by side as ratios.

    python benchmarks/train_step.py [--depth 14] [--batch 128] [--repeats 5] [--threads 1]

Each regime trains a fresh model for ``--warmup`` steps first (untimed), then times ``--repeats``
further steps; the median is reported. The equilibrium regimes solve with Anderson to rtol 1e-4
within ``depth`` iterations, so their cost depends on how fast the solves converge.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import warnings

import torch

from deqloop.adjoint import BackwardWarning

from deqloop.train import TrainConfig, Trainer

REGIMES = {
    "progressive": dict(loss="progressive", alpha=0.0),
    "implicit": dict(loss="equilibrium", backward="implicit"),
    "phantom": dict(loss="equilibrium", backward="phantom", backward_options={"steps": 5, "tau": 0.8}),
    "neumann": dict(loss="equilibrium", backward="neumann", backward_options={"k": 5}),
    "implicit+jac": dict(loss="equilibrium", backward="implicit", jac_reg=0.1),
}


def time_regime(fields: dict, depth: int, batch: int, warmup: int, repeats: int) -> float:
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig.from_flat(task="prefix_sums", task_options=dict(length=12), width=32, heads=4,
                             attention="local", window=3, recall="internal", norm="post", max_iter=depth,
                             steps=warmup + repeats, batch_size=batch, warmup_steps=0, lr=2e-3, eval_size=0,
                             log_every=10**6, checkpoint_every=10**6, progress=False, out=out, **fields)
        trainer = Trainer(config)
        for step in range(warmup):
            trainer.step(step)
        times = []
        for step in range(warmup, warmup + repeats):
            start = time.perf_counter()
            trainer.step(step)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--depth", type=int, default=14, help="plain iterations / solver budget [14]")
    p.add_argument("--batch", type=int, default=128, help="batch size [128]")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first [2]")
    p.add_argument("--repeats", type=int, default=5, help="timed steps [5]")
    p.add_argument("--threads", type=int, default=1, help="torch threads [1]")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    logging.getLogger("deqloop.train").setLevel(logging.ERROR)  # unconverged-solve notices: not the point here
    warnings.simplefilter("ignore", BackwardWarning)
    base = None
    print(f"one training step, prefix sums 12 bits, width 32, batch {a.batch}, depth {a.depth}, "
          f"{a.threads} thread(s); median of {a.repeats}")
    print(f"{'regime':<14}{'seconds':>10}{'× progressive':>16}")
    for name, fields in REGIMES.items():
        seconds = time_regime(fields, a.depth, a.batch, a.warmup, a.repeats)
        base = base or seconds
        print(f"{name:<14}{seconds:>10.3f}{seconds / base:>16.2f}")


if __name__ == "__main__":
    main()
