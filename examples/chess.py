"""Chess puzzles: find the move; train on easier puzzles, test on harder ones.

Data, in order of preference:

1. ``--data FILE ...``: your Lichess puzzle download (``lichess_db_puzzle.csv`` or ``.csv.zst``);
2. the shared puzzles (``--data-dir``, default ``$DEQLOOP_SHARED/data`` or ``../shared/data``
   beside this checkout): ``chess/lichess_puzzles_rating_0000_1600.csv`` and
   ``..._1601_2000.csv``;
3. otherwise generated mate-in-one positions (4-8 pieces easy, 10-16 hard).

With Lichess data the model trains on puzzles rated ≤ 1600 and is tested on 1601-2000, as in
the paper. The output is a score per square; a puzzle is solved when the two top squares are
the solution's from- and to-squares.

CPU defaults (a few minutes on 2 cores; expect low accuracy, this is a smoke-scale run):

    python examples/chess.py

GPU scale:

    python examples/chess.py --data lichess_db_puzzle.csv.zst --width 256 --heads 8 \\
        --train-size 500000 --epochs 50 --batch-size 256 --max-iter 30 --n 2000 --device cuda --threads 0

Writes ``OUT/last.pt``, ``OUT/metrics.jsonl``, ``OUT/eval.json`` and ``OUT/iterations.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# This script shares its name with the python-chess package: keep its folder off the import
# path, so that ``import chess`` (in deqloop.tasks.chess) finds the package, not this file.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from deqloop.evaluate import evaluate_model, parse_iters  # noqa: E402
from deqloop.tasks.base import shared_data_dir  # noqa: E402
from deqloop.train import TrainConfig, Trainer  # noqa: E402

SHARED_FILES = ("lichess_puzzles_rating_0000_1600.csv", "lichess_puzzles_rating_1601_2000.csv")



def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", nargs="+", default=None, metavar="FILE", help="Lichess puzzle CSV files")
    p.add_argument("--data-dir", type=Path, default=shared_data_dir(), help="folder holding chess/<shared files>")
    p.add_argument("--synthetic", action="store_true", help="use generated mate-in-one positions")
    p.add_argument("--width", type=int, default=32, help="model width (head dim must be divisible by 4)")
    p.add_argument("--heads", type=int, default=4, help="attention heads")
    p.add_argument("--max-iter", type=int, default=12, help="training depth (iterations)")
    p.add_argument("--loss", choices=["progressive", "equilibrium"], default="progressive",
                   help="progressive (deep-thinking loss) or equilibrium (fixed-point gradients)")
    p.add_argument("--alpha", type=float, default=0.5, help="progressive loss: weight of the truncated term")
    p.add_argument("--backward", choices=["implicit", "phantom", "unrolled"], default=None,
                   help="equilibrium loss: gradient through the fixed point (default implicit)")
    p.add_argument("--train-size", type=int, default=2000, help="training puzzles drawn from the easy pool")
    p.add_argument("--epochs", type=float, default=2, help="passes over the training puzzles")
    p.add_argument("--batch-size", type=int, default=32, help="batch size")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    p.add_argument("--iters", type=parse_iters, default=[1, 2, 5, 10, 12, 20, 30, 50],
                   help="test-time iteration counts to score")
    p.add_argument("--n", type=int, default=300, help="test puzzles per split")
    p.add_argument("--out", default="runs/examples/chess", help="output folder")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0, help="seed")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bar")
    return p.parse_args(argv)


def pick_data(args: argparse.Namespace) -> tuple[str, ...]:
    """The Lichess files to use, or ``()`` for the mate-in-one generator."""
    if args.synthetic:
        return ()
    if args.data:
        return tuple(args.data)
    shared = [args.data_dir / "chess" / name for name in SHARED_FILES]
    if all(p.is_file() for p in shared):
        return tuple(map(str, shared))
    print(f"(no --data and no shared puzzles under {args.data_dir / 'chess'}: using generated mate-in-one)")
    return ()


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    data = pick_data(args)
    print("data:", ", ".join(data) if data else "generated mate-in-one positions")
    progressive = args.loss == "progressive"
    config = TrainConfig(
        task="chess", data=data, train_size=args.train_size, epochs=args.epochs, width=args.width,
        heads=args.heads, attention="full", recall="internal", norm="post", loss=args.loss,
        alpha=args.alpha if progressive else 0.0, backward=None if progressive else args.backward,
        max_iter=args.max_iter, batch_size=args.batch_size, lr=args.lr, log_every=20, checkpoint_every=200,
        out=args.out, eval_size=0, overwrite=True, device=args.device, threads=args.threads, seed=args.seed,
        progress=args.progress,
    )
    trainer = Trainer(config)
    result = trainer.run()
    print(f"trained {result.step} steps in {result.seconds:.0f} s (final loss {result.last_metrics['loss']:.4f})")

    task = trainer.task
    easy, hard = ("rated ≤ 1600", "rated 1601-2000") if data else ("4-8 pieces", "10-16 pieces")
    splits = {f"easy: {easy}": task.make("val", args.n, seed=1), f"hard: {hard}": task.make("hard", args.n, seed=1)}
    # Squares right would be ~97% for any model that marks nothing: report exact match only.
    report = evaluate_model(trainer.model, splits, task, iters=args.iters, train_depth=config.depth(),
                            cells=False, device=trainer.device)
    print(report.text())
    (trainer.out / "eval.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    plot = report.curves.plot(trainer.out / "iterations.png", title="Chess puzzles: accuracy vs test-time iterations")
    print(f"wrote {plot}")
    return report.to_dict()


if __name__ == "__main__":
    main(sys.argv[1:])
