"""How hard sudoku's blank bands are for propagation: per band, the rounds of naked singles its
generated puzzles need and the fraction that naked singles alone cannot finish.

    python -m experiments.sudoku_bands                       # 200 puzzles per default band
    python -m experiments.sudoku_bands --n 500 --bands 4-24 46-55 --seed 1

Prints a Markdown table. Depth statistics are over the puzzles naked singles finish; "stuck" is
the fraction they do not (those need hidden singles or guesses). Puzzles are drawn fresh (no
cache) unless ``--cache-dir`` is given.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import pandas as pd

from deqloop.cli.flags import int_pair
from deqloop.tasks.sudoku_blanks import generate_blanks
from deqloop.tasks.sudoku_solver import naked_singles_depth

__all__ = ["BANDS", "band_row", "main", "table"]

BANDS: tuple[tuple[int, int], ...] = ((4, 24), (25, 35), (36, 45), (46, 55))


def band_row(band: tuple[int, int], n: int, seed: int = 0, cache_dir: str | None = None) -> dict[str, Any]:
    """The statistics of ``n`` puzzles generated with ``band`` blanks."""
    start = time.perf_counter()
    x, _ = generate_blanks(n, band, seed, cache_dir=cache_dir, use_cache=cache_dir is not None)
    seconds = time.perf_counter() - start
    depth = naked_singles_depth(x).tolist()
    finite = [d for d in depth if d != float("inf")]
    blanks = (x == 0).flatten(1).sum(dim=1).float()
    return {
        "band": f"{band[0]}-{band[1]}",
        "n": len(depth),
        "blanks_mean": float(blanks.mean()),
        "depth_mean": statistics.fmean(finite) if finite else None,
        "depth_median": statistics.median(finite) if finite else None,
        "depth_max": int(max(finite)) if finite else None,
        "stuck": 1 - len(finite) / len(depth),
        "seconds": seconds,
    }


def table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of :func:`band_row` results."""
    f = pd.DataFrame(rows)
    return pd.DataFrame({"blanks": f.band, "puzzles": f.n, "mean blanks": f.blanks_mean.map("{:.1f}".format),
                         "depth mean": f.depth_mean.map(lambda v: "–" if v != v else f"{v:.2f}"),
                         "depth median": f.depth_median.map(lambda v: "–" if v != v else f"{v:g}"),
                         "depth max": f.depth_max.map(lambda v: "–" if v != v else f"{int(v)}"),
                         "stuck": f.stuck.map("{:.1%}".format), "draw s": f.seconds.map("{:.1f}".format)}
                        ).to_markdown(index=False, disable_numparse=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=200, help="puzzles per band [default: 200]")
    p.add_argument("--seed", type=int, default=0, help="generator seed [default: 0]")
    p.add_argument("--bands", nargs="+", type=lambda s: int_pair([s]), default=list(BANDS), metavar="LO-HI",
                   help="blank bands [default: 4-24 25-35 36-45 46-55]")
    p.add_argument("--cache-dir", default=None, help="cache the drawn puzzles there [default: no cache]")
    args = p.parse_args(argv)
    print(table([band_row(tuple(b), args.n, args.seed, args.cache_dir) for b in args.bands]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
