"""Task data throughput: sudoku generation (puzzles/s by band), Lichess loading (rows/s) and
mate-in-1 generation (positions/s).

    .venv/bin/python benchmarks/tasks.py                      # defaults below
    .venv/bin/python benchmarks/tasks.py --sudoku-n 256 --bands easy hard --chess-limit 5000

Sudoku sets are drawn fresh (the cache is bypassed). Chess reads ``../shared/data/chess``
(or ``--chess-dir``) plain and zstd-compressed; it is skipped when the folder is absent.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import zstandard

from deqloop.tasks import chess, sudoku
from deqloop.tasks.io import shared_data_dir

SHARED_CHESS = shared_data_dir() / "chess"


def bench_sudoku(n: int, bands: list[str]) -> None:
    for band in bands:
        start = time.perf_counter()
        x, _, meta = sudoku.generate(n, band, seed=12345, use_cache=False, return_meta=True)
        seconds = time.perf_counter() - start
        clues = (x != 0).flatten(1).sum(1).float().mean().item()
        print(
            f"sudoku  {band:<6} {n:6d} puzzles  {seconds:7.1f} s  {n / seconds:8.1f} puzzles/s  "
            f"(mean clues {clues:.1f}, median rating {meta.ratings.median().item()})"
        )


def bench_chess(folder: Path, limit: int | None) -> None:
    files = sorted(folder.glob("*.csv"))
    if not files:
        print(f"chess   skipped: no CSV files in {folder}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        for path in files:
            packed = Path(tmp) / (path.name + ".zst")
            packed.write_bytes(zstandard.ZstdCompressor().compress(path.read_bytes()))
            for source in (path, packed):
                start = time.perf_counter()
                x, _ = chess.load_lichess(source, limit=limit)
                seconds = time.perf_counter() - start
                print(f"chess   {source.name:<45} {len(x):6d} rows  {seconds:6.2f} s  {len(x) / seconds:8.0f} rows/s")


def bench_mate_in_one(n: int) -> None:
    task = chess.Chess()
    for band, pieces in (("train", task.train_pieces), ("hard", task.hard_pieces)):
        start = time.perf_counter()
        chess.generate_mate_in_one(n, pieces, seed=12345)
        seconds = time.perf_counter() - start
        print(f"mate-1  {band:<6} {n:6d} positions {seconds:6.1f} s  {n / seconds:8.1f} positions/s  (pieces {pieces})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sudoku-n", type=int, default=512, help="puzzles per band (default 512)")
    parser.add_argument("--bands", nargs="*", default=["easy", "medium", "hard"], choices=list(sudoku.GENERATOR_BANDS))
    parser.add_argument("--chess-dir", type=Path, default=SHARED_CHESS)
    parser.add_argument("--chess-limit", type=int, default=None, help="rows per file (default: all)")
    parser.add_argument("--mate-n", type=int, default=100, help="mate-in-1 positions per band (default 100)")
    args = parser.parse_args()
    bench_sudoku(args.sudoku_n, args.bands)
    bench_chess(args.chess_dir, args.chess_limit)
    bench_mate_in_one(args.mate_n)


if __name__ == "__main__":
    main()
