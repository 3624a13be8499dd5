"""Sudoku: train on generated easy puzzles, test on harder ones by iterating longer.

Easy puzzles (rating 0) fall to forced cells alone; the hard band needs guessing
(rating ≥ 100, see ``deqloop.tasks.sudoku``). The model is a looped block over the 9×9 grid
with full attention and 2-D RoPE; the target is the full solution grid, and a puzzle counts as
solved only if every cell is right and the givens are kept. If the shared collections are
found (``--data-dir``, default ``$DEQLOOP_SHARED/data`` or ``../shared/data`` beside this
checkout), the hardest public puzzles are scored too: ``magictour_top1465`` and ``sudoku17_1500``.

CPU defaults (a few minutes on 2 cores; expect low accuracy, this is a smoke-scale run):

    python examples/sudoku.py

GPU scale:

    python examples/sudoku.py --width 256 --heads 8 --train-size 100000 --epochs 100 \\
        --batch-size 256 --max-iter 30 --iters 1,5,10,30,100,300 --n 1000 --device cuda --threads 0

Writes ``OUT/last.pt``, ``OUT/metrics.jsonl``, ``OUT/eval.json`` and ``OUT/iterations.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from deqloop.evaluate import evaluate_model, parse_iters
from deqloop.tasks.base import shared_data_dir
from deqloop.tasks.sudoku import load
from deqloop.train import TrainConfig, Trainer

COLLECTIONS = ("magictour_top1465.csv", "sudoku17_1500.csv")



def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--width", type=int, default=32, help="model width (head dim must be divisible by 4)")
    p.add_argument("--heads", type=int, default=4, help="attention heads")
    p.add_argument("--max-iter", type=int, default=16, help="training depth (iterations)")
    p.add_argument("--loss", choices=["progressive", "equilibrium"], default="progressive",
                   help="progressive (deep-thinking loss) or equilibrium (fixed-point gradients)")
    p.add_argument("--alpha", type=float, default=0.5, help="progressive loss: weight of the truncated term")
    p.add_argument("--backward", choices=["implicit", "phantom", "unrolled"], default=None,
                   help="equilibrium loss: gradient through the fixed point (default implicit)")
    p.add_argument("--train-size", type=int, default=2000, help="generated training puzzles")
    p.add_argument("--epochs", type=float, default=2, help="passes over the training puzzles")
    p.add_argument("--batch-size", type=int, default=32, help="batch size")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    p.add_argument("--iters", type=parse_iters, default=[1, 2, 5, 10, 16, 30, 50, 100],
                   help="test-time iteration counts to score")
    p.add_argument("--n", type=int, default=200, help="test puzzles per split")
    p.add_argument("--data-dir", type=Path, default=shared_data_dir(),
                   help="folder holding sudoku/magictour_top1465.csv and sudoku/sudoku17_1500.csv")
    p.add_argument("--out", default="runs/examples/sudoku", help="output folder")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0, help="seed")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bar")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    progressive = args.loss == "progressive"
    config = TrainConfig(
        task="sudoku", train_size=args.train_size, epochs=args.epochs, augment=True, width=args.width,
        heads=args.heads, attention="full", recall="internal", norm="post", loss=args.loss,
        alpha=args.alpha if progressive else 0.0, backward=None if progressive else args.backward,
        max_iter=args.max_iter, batch_size=args.batch_size, lr=args.lr, log_every=20,
        checkpoint_every=200, out=args.out, eval_size=0, overwrite=True, device=args.device, threads=args.threads,
        seed=args.seed, progress=args.progress,
    )
    trainer = Trainer(config)  # generates (and caches) the training puzzles
    result = trainer.run()
    print(f"trained {result.step} steps in {result.seconds:.0f} s (final loss {result.last_metrics['loss']:.4f})")

    task = trainer.task
    splits = {"easy (val)": task.make("val", args.n, seed=1), "hard (generated)": task.make("hard", args.n, seed=1)}
    for name in COLLECTIONS:
        path = args.data_dir / "sudoku" / name
        if path.is_file():
            x, y = load(path)
            splits[path.stem] = (x[: args.n], y[: args.n])
        else:
            print(f"({path} not found: skipping that collection)")
    report = evaluate_model(trainer.model, splits, task, iters=args.iters, train_depth=config.depth(),
                            device=trainer.device)
    print(report.text())
    (trainer.out / "eval.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    plot = report.curves.plot(trainer.out / "iterations.png", title="Sudoku: accuracy vs test-time iterations")
    print(f"wrote {plot}")
    return report.to_dict()


if __name__ == "__main__":
    main(sys.argv[1:])
