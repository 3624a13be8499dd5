"""The stability monitor's cost as a fraction of training wall time, on the cpu prefix-sums cell.

    python benchmarks/monitor.py [--stability-every 10,25] [--regimes progressive,implicit] [--steps 100]

For each regime (the cpu preset's training fields, internal recall, post norm) and each
``--stability-every`` N: one training run of ``--steps`` steps with the monitor on (its default
probe of 16 val examples, ρ to a residual of 1e-3 in at most 24 products, warm-started) and one run with it off per regime. Printed side by side: the
training time (the monitored run's wall time minus the monitor's own time), the monitor's time,
their ratio, and the wall-time ratio of the monitored run to the unmonitored one (noisier: two
runs). No evaluation, no checkpoints; one torch thread.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from deqloop.adjoint import BackwardWarning
from deqloop.train import TrainConfig, Trainer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # experiments/, run as a script
from experiments.presets import PRESETS, RunSpec  # noqa: E402


def timed_run(fields: dict, every: int) -> tuple[float, float]:
    """``(wall seconds, monitor seconds)`` of one run."""
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig.from_flat(**{**fields, "stability_every": every, "out": out})
        trainer = Trainer(config)
        start = time.perf_counter()
        trainer.run()
        return time.perf_counter() - start, trainer.monitor_seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stability-every", default="10,25", help="monitor every N steps, comma-separated [10,25]")
    p.add_argument("--regimes", default="progressive,implicit", help="training regimes, comma-separated "
                   "[progressive,implicit]")
    p.add_argument("--steps", type=int, default=100, help="training steps per run [100]")
    p.add_argument("--threads", type=int, default=1, help="torch threads [1]")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    logging.getLogger("deqloop.train").setLevel(logging.ERROR)
    warnings.simplefilter("ignore", BackwardWarning)
    preset = PRESETS["cpu"]
    runtime = {"steps": a.steps, "eval_size": 0, "log_every": 10**6, "checkpoint_every": 10**6,
               "progress": False, "threads": a.threads}
    everies = [int(v) for v in a.stability_every.split(",")]
    cell = preset.train["prefix_sums"]
    print(f"cpu prefix-sums cell (internal/post, width {cell['width']}, batch {cell['batch_size']}, "
          f"{a.steps} steps, {a.threads} thread(s))")
    print(f"{'regime':<12} {'every':>5} {'train s':>8} {'monitor s':>9} {'monitor/train':>13} {'wall on/off':>11}")
    for regime in a.regimes.split(","):
        fields = preset.train_fields(RunSpec("prefix_sums", "internal", "post", regime, 0))
        if fields.get("pretrain_steps"):  # the warm start's fraction of the (shorter) run
            fields["pretrain_steps"] = max(1, round(fields["pretrain_steps"] * a.steps / fields["steps"]))
        fields.update(runtime)
        wall_off, _ = timed_run(fields, 0)
        for every in everies:
            wall_on, monitor = timed_run(fields, every)
            train_s = wall_on - monitor
            print(f"{regime:<12} {every:>5} {train_s:>8.1f} {monitor:>9.2f} {monitor / train_s:>12.1%} "
                  f"{wall_on / wall_off:>11.3f}", flush=True)


if __name__ == "__main__":
    main()
