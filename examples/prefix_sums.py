"""Prefix sums: train on short bit strings, then solve longer ones by iterating longer.

The target at position i is the parity of the first i + 1 bits. With local attention a looped
block can only move information a few cells per iteration, so an L-bit string needs about L
iterations: a model that learned the *algorithm* extrapolates when given more iterations.

CPU defaults (a few minutes on 2 cores; the recipe of ``deqloop demo``):

    python examples/prefix_sums.py

GPU scale (the paper's setting: 32-bit training, 512-bit test):

    python examples/prefix_sums.py --length 32 --min-length 8 --test-lengths 128,512 \\
        --width 256 --heads 8 --batch-size 256 --steps 20000 --lr 1e-3 --iters 1,10,34,100,300,600 \\
        --device cuda --threads 0

Writes ``OUT/last.pt``, ``OUT/metrics.jsonl``, ``OUT/eval.json`` and ``OUT/iterations.png``.
"""

from __future__ import annotations

import argparse
import json
import sys

from deqloop.evaluate import evaluate_model, parse_iters
from deqloop.tasks.prefix_sums import generate
from deqloop.train import TrainConfig, Trainer


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--length", type=int, default=12, help="longest training length (bits)")
    p.add_argument("--min-length", type=int, default=4, help="shortest training length (length curriculum)")
    p.add_argument("--test-lengths", type=parse_iters, default=[48, 96], help="longer lengths to test, comma-separated")
    p.add_argument("--width", type=int, default=32, help="model width")
    p.add_argument("--heads", type=int, default=4, help="attention heads")
    p.add_argument("--window", type=int, default=3, help="local attention window (odd)")
    p.add_argument("--loss", choices=["progressive", "equilibrium"], default="progressive",
                   help="progressive: backpropagate through length + 2 plain iterations; equilibrium: "
                   "fixed-point training with --backward")
    p.add_argument("--alpha", type=float, default=0.0, help="progressive loss: weight of the truncated term")
    p.add_argument("--backward", choices=["implicit", "phantom", "unrolled"], default=None,
                   help="equilibrium loss: gradient through the fixed point")
    p.add_argument("--max-iter", type=int, default=30, help="equilibrium loss: solver budget in training")
    p.add_argument("--steps", type=int, default=800, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=64, help="batch size")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (cosine decay to 0)")
    p.add_argument("--iters", type=parse_iters, default=[1, 2, 5, 10, 14, 20, 30, 50, 75, 100, 150, 200],
                   help="test-time iteration counts to score")
    p.add_argument("--n", type=int, default=256, help="test inputs per length")
    p.add_argument("--out", default="runs/examples/prefix_sums", help="output folder")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0, help="seed")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bar")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    progressive = args.loss == "progressive"
    config = TrainConfig(
        task="prefix_sums", length=args.length, min_length=args.min_length, hard_length=args.test_lengths[0],
        depth_offset=2 if progressive else None, width=args.width, heads=args.heads, attention="local",
        window=args.window, recall="internal", norm="post", loss=args.loss,
        alpha=args.alpha if progressive else 0.0, backward=None if progressive else args.backward,
        max_iter=args.max_iter, steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=0,
        log_every=50, checkpoint_every=args.steps, out=args.out, eval_size=0, overwrite=True, device=args.device,
        threads=args.threads, seed=args.seed, progress=args.progress,
    )
    trainer = Trainer(config)
    result = trainer.run()
    print(f"trained {result.step} steps in {result.seconds:.0f} s (final loss {result.last_metrics['loss']:.4f})")

    # Easy: the training length; hard: the longer lengths. Streams 20+ are never used in training.
    lengths = [args.length, *args.test_lengths]
    splits = {f"{L} bits": generate(args.n, L, seed=args.seed + 1000, stream=20 + i) for i, L in enumerate(lengths)}
    report = evaluate_model(trainer.model, splits, trainer.task, iters=args.iters, train_depth=config.depth(),
                            device=trainer.device)
    print(report.text())
    (trainer.out / "eval.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    plot = report.curves.plot(trainer.out / "iterations.png",
                              title=f"Prefix sums: trained on {args.min_length}-{args.length} bits")
    print(f"wrote {plot}")
    return report.to_dict()


if __name__ == "__main__":
    main(sys.argv[1:])
