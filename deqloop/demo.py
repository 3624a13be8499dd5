"""``deqloop demo``: learn prefix sums on short inputs on CPU, solve longer ones by thinking longer.

The recipe (a few minutes on 2 CPU cores): bit strings of 4 to 12 bits (a length curriculum:
each batch draws its length), ``length + 2`` plain iterations of a width-32, 4-head block with
local attention (window 3), internal recall and post-norm, trained by backpropagation through
the iterations (the progressive loss with ``alpha = 0``), 800 steps of batch 64, AdamW at 2e-3
with cosine decay to 0.
Local attention moves information one cell per iteration, so an L-bit input needs about L
iterations; the model is then scored at 12, 48 (4×) and 96 (8×) bits across test-time
iteration counts, and adaptively (iterating each input until it stops changing).

    result = run_demo()            # prints the table, writes runs/demo/iterations.png
    result.curves.best("48 bits (4x)")
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from deqloop.errors import ConfigError
from deqloop.eval import IterationCurves, iteration_sweep, settle_table
from deqloop.files import atomic_write, writable_folder
from deqloop.train import TrainConfig, Trainer
from deqloop.train.recipes import recipe, recipe_values

__all__ = ["DemoResult", "demo_config", "run_demo"]

RECIPE = recipe_values("demo")
TRAIN_LENGTH: int = RECIPE["length"]
MIN_LENGTH: int = RECIPE["min_length"]
TEST_FACTORS = (RECIPE["hard_length"] // TRAIN_LENGTH, 8)  # the hard split is 4x
TARGET = 0.95  # exact match at 4x the training length
SETTLE_RTOL = 1e-3
OUTPUTS = ("config.json", "metrics.jsonl", "last.pt", "iterations.png", "demo.json")  # what a demo writes


def demo_config(*, quick: bool = False, out: str | Path = "runs/demo", seed: int = 0,
                steps: int | None = None, threads: int = 1, progress: bool = True,
                overwrite: bool = False) -> TrainConfig:
    """The demo's :class:`TrainConfig`: the ``demo`` recipe (:mod:`deqloop.train.recipes`);
    ``quick`` shrinks it to seconds (same code path); ``overwrite`` replaces a run already in
    ``out`` (refused otherwise)."""
    steps = steps or (30 if quick else RECIPE["steps"])
    shrink = dict(batch_size=32, log_every=10) if quick else {}
    return recipe("demo", **shrink, steps=steps, checkpoint_every=steps, seed=seed, out=str(out),
                  overwrite=overwrite, threads=threads, progress=progress)


@dataclass
class DemoResult:
    """What :func:`run_demo` measured."""

    curves: IterationCurves
    adaptive: dict[str, dict[str, float]]
    train_seconds: float
    eval_seconds: float
    steps: int
    out: Path
    headline: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"curves": self.curves.to_dict(), "adaptive": self.adaptive, "train_seconds": self.train_seconds,
                "eval_seconds": self.eval_seconds, "steps": self.steps, "headline": self.headline}


def run_demo(*, quick: bool = False, out: str | Path = "runs/demo", seed: int = 0, steps: int | None = None,
             n: int | None = None, threads: int = 1, progress: bool = True, overwrite: bool = False,
             echo: Any = print) -> DemoResult:
    """Train the demo model, evaluate it at 1×, 4× and 8× the training length, print and plot.

    ``n`` random inputs per length are scored (default 256; 32 with ``quick``). Writes ``out/``
    (``config.json``, ``metrics.jsonl``, ``last.pt``, ``iterations.png``, ``demo.json``) and
    returns a :class:`DemoResult`. A folder that already holds any of these is refused (a
    :class:`~deqloop.errors.ConfigError`, nothing changed) unless ``overwrite``.
    """
    from deqloop.tasks.prefix_sums import generate

    config = demo_config(quick=quick, out=out, seed=seed, steps=steps, threads=threads, progress=progress,
                         overwrite=overwrite)
    out = writable_folder(config.run.out, "out")
    held = sorted(p.name for p in out.iterdir() if p.name in OUTPUTS or p.name.startswith("step_"))
    if held and not overwrite:
        raise ConfigError(f"{out} already holds {', '.join(held)}; choose another --out, or pass --overwrite "
                          "(overwrite=True) to replace them")
    depth = config.depth()
    echo(f"deqloop demo: prefix sums (running parity of a bit string), trained on {MIN_LENGTH}-{TRAIN_LENGTH} bits "
         f"with length + 2 iterations (at most {depth}), tested at {TRAIN_LENGTH}, "
         + ", ".join(f"{f * TRAIN_LENGTH}" for f in TEST_FACTORS) + " bits")
    m = config.model
    echo(f"model: width {m.width}, {m.heads} heads, local attention (window {m.window}), {m.recall} recall, "
         f"{m.norm} norm; {config.optim.steps} steps of batch {config.optim.batch_size} "
         f"on {torch.get_num_threads() if not threads else threads} CPU thread(s)")

    start = time.perf_counter()
    trainer = Trainer(config)
    result = trainer.run()
    train_seconds = time.perf_counter() - start
    last = result.last_metrics
    echo(f"trained in {train_seconds:.0f} s; final training loss {last.get('loss', float('nan')):.4f}, "
         f"batch exact match {100 * last.get('accuracy', 0.0):.1f}%")

    n = n or (32 if quick else 256)
    iters = [1, 5, depth, 30] if quick else [1, 2, 5, 10, depth, 20, 30, 50, 75, 100, 150, 200]
    curves = IterationCurves(iters, train_depth=depth)
    splits = {f"{TRAIN_LENGTH} bits (train)": TRAIN_LENGTH}
    splits.update({f"{f * TRAIN_LENGTH} bits ({f}x)": f * TRAIN_LENGTH for f in TEST_FACTORS})
    start = time.perf_counter()
    model = trainer.model.eval()
    adaptive: dict[str, dict[str, float]] = {}
    for i, (name, length) in enumerate(splits.items()):
        x, y = generate(n, length, seed=seed + 1000, stream=10 + i)  # streams unused by training
        sweep = iteration_sweep(model, x, y, trainer.task.correct, curves.iters, rtol=SETTLE_RTOL)
        curves.add(name, sweep.accuracy)
        adaptive[name] = sweep.settle_summary()
    eval_seconds = time.perf_counter() - start

    echo("")
    echo(f"exact-match accuracy by test-time iterations ({n} random inputs per length)")
    echo(curves.table())
    echo("")
    echo(settle_table(adaptive, SETTLE_RTOL))
    echo("")

    key = f"{TEST_FACTORS[0] * TRAIN_LENGTH} bits ({TEST_FACTORS[0]}x)"
    best_t, best_acc = curves.best(key)
    at_depth = curves.curves[key][curves.iters.index(depth)]
    headline = {"split": key, "best_iterations": best_t, "best_accuracy": best_acc,
                "accuracy_at_training_depth": at_depth, "target": TARGET, "reached": best_acc >= TARGET}
    plot = curves.plot(out / "iterations.png",
                       title=f"Prefix sums: trained on ≤{TRAIN_LENGTH} bits, tested longer")
    demo = DemoResult(curves, adaptive, train_seconds, eval_seconds, config.optim.steps, out, headline)
    atomic_write(out / "demo.json", json.dumps(demo.to_dict(), indent=2) + "\n")
    echo(f"{key}: best {100 * best_acc:.1f}% exact match, at {best_t} test-time iteration(s) "
         f"({100 * at_depth:.1f}% at the training depth {depth}); target ≥ {100 * TARGET:.0f}%: "
         + ("reached" if headline["reached"] else "not reached"))
    echo(f"train {train_seconds:.0f} s + evaluation {eval_seconds:.0f} s; wrote {plot} and {out / 'demo.json'}")
    return demo
