"""Chess puzzles: find the move. The task, and its two metrics; the encoding, the Lichess loader
and the mate-in-1 generator are in :mod:`deqloop.tasks.chess_data`.

``x`` is the ``(8, 8)`` board from the side to move's perspective, ``y`` marks the solution's
from- and to-square (``num_classes = 2``). A model outputs logits ``(n, 8, 8, 2)``; the *score*
of a square is ``logit[..., 1] - logit[..., 0]``.

Metrics: :func:`correct` (the paper's) asks that the two highest-scoring squares be exactly
the target pair; :func:`correct_legal` takes the legal move with the highest from-score plus
to-score and asks that it be the solution move.

A Lichess row's ``FEN`` is the position before the opponent's setup move ``Moves[0]``; the
example is the position after it, and the target is ``Moves[1]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import ClassVar

from deqloop.extras import require

require("chess", "the chess task")
import chess  # noqa: E402
import torch
from torch import Tensor

from deqloop import seeds
from deqloop.errors import ConfigError
from deqloop.tasks.base import Task, check_band, check_count, check_seed
from deqloop.tasks.chess_data import (
    GRID,
    LICHESS_COLUMNS,
    NUM_CLASSES,
    VOCAB_SIZE,
    ChessMeta,
    decode,
    encode,
    generate_mate_in_one,
    load_lichess,
)
from deqloop.validate import setting

__all__ = [
    "Chess",
    "ChessMeta",
    "LICHESS_COLUMNS",
    "cell_accuracy",
    "correct",
    "correct_legal",
    "decode",
    "encode",
    "generate_mate_in_one",
    "load_lichess",
    "square_scores",
]

# ---------------------------------------------------------------------------------------------
# Metrics


def square_scores(out: Tensor) -> Tensor:
    """``(n, 64)`` square scores from logits ``(n, 8, 8, 2)`` (``logit1 - logit0``), scores
    ``(n, 8, 8)``, or 0/1 class ids ``(n, 8, 8)``."""
    if out.dim() == 4 and out.shape[1:] == (8, 8, 2):
        return (out[..., 1] - out[..., 0]).flatten(1).float()
    if out.dim() == 3 and out.shape[1:] == GRID:
        return out.flatten(1).float()
    raise ConfigError(f"expected logits (n, 8, 8, 2) or scores/class ids (n, 8, 8), got shape {tuple(out.shape)}")


def _target_pairs(y: Tensor) -> Tensor:
    flat = y.flatten(1)
    marked = (flat == 1).sum(dim=1)
    if y.dim() != 3 or y.shape[1:] != GRID or bool((marked != 2).any()):
        raise ConfigError(f"targets must be (n, 8, 8) with exactly two squares marked 1; got shape {tuple(y.shape)}")
    return flat


def correct(out: Tensor, y: Tensor, x: Tensor | None = None) -> Tensor:
    """``(n,)`` bool, the paper's metric: the two highest-scoring squares are the target pair.
    For class ids: the squares predicted 1 are exactly the pair."""
    flat = _target_pairs(y)
    if not out.is_floating_point() and out.shape == y.shape:
        return (out.flatten(1) == flat).all(dim=1)
    top = square_scores(out).topk(2, dim=1).indices  # (n, 2)
    return flat.gather(1, top).sum(dim=1) == 2


def cell_accuracy(out: Tensor, y: Tensor, x: Tensor | None = None) -> Tensor:
    """``(n,)`` float: the fraction of the 64 squares classified right (score > 0 means marked)."""
    if not out.is_floating_point() and out.shape == y.shape:
        pred = out
    else:
        pred = (square_scores(out) > 0).long().view_as(y)
    return (pred == y).flatten(1).float().mean(dim=1)


def correct_legal(
    out: Tensor, y: Tensor, x: Tensor | None = None, *, fens: Sequence[str] | None = None
) -> Tensor:
    """``(n,)`` bool: the legal move with the highest from-score + to-score has the solution's
    from- and to-square (the promotion piece is not scored).

    Positions come from ``fens`` (as :func:`load_lichess` returns them in ``meta.fens``; they keep
    castling and en-passant rights) or else are decoded from ``x`` (without those rights, so a
    castling or en-passant solution cannot be found). The solution's from-square is the marked
    square that holds a piece of the side to move.
    """
    flat = _target_pairs(y)
    scores = square_scores(out)
    if fens is None and x is None:
        raise ConfigError("correct_legal needs the positions: pass x or fens")
    n = len(flat)
    if fens is not None and len(fens) != n:
        raise ConfigError(f"got {len(fens)} FENs for {n} targets")
    result = torch.zeros(n, dtype=torch.bool)
    for i in range(n):
        if fens is not None:
            board = chess.Board(fens[i])
            if board.turn == chess.BLACK:
                board = board.mirror()
        else:
            board = decode(x[i])  # type: ignore[index]
        marked = torch.nonzero(flat[i]).flatten().tolist()
        start = [s for s in marked if board.color_at(s) == chess.WHITE]
        if len(start) != 1:
            raise ConfigError(f"example {i}: the target squares {marked} do not mark one move of the side to move")
        end = marked[1] if marked[0] == start[0] else marked[0]
        row = scores[i].tolist()
        best = max(board.legal_moves, key=lambda m: row[m.from_square] + row[m.to_square], default=None)
        result[i] = best is not None and (best.from_square, best.to_square) == (start[0], end)
    return result


# ---------------------------------------------------------------------------------------------
# The task


@lru_cache(maxsize=8)
def _load_cached(path: str, mtime_ns: int) -> tuple[Tensor, Tensor, Tensor]:
    x, y, meta = load_lichess(path, return_meta=True)  # type: ignore[misc]
    return x, y, meta.ratings


@lru_cache(maxsize=8)
def _generate_cached(n: int, pieces: tuple[int, int], seed: int, stream: int) -> tuple[Tensor, Tensor]:
    x, y = generate_mate_in_one(n, pieces, seed, stream=stream)  # type: ignore[misc]
    return x, y


_STREAMS = {"train": 0, "val": 1, "hard": 2}


@dataclass(frozen=True)
class Chess(Task):
    """The chess task.

    With ``data`` (Lichess puzzle files, e.g. both files of ``../shared/data/chess`` or the full
    dump): ``train``/``val`` are the puzzles rated at most ``train_max_rating`` (``val`` a fixed
    ``val_fraction`` of them), ``hard`` those rated ``hard_min_rating``-``hard_max_rating``, as
    in the paper; each ``make`` draws ``n`` without replacement. Without ``data``: mate-in-1
    positions with ``train_pieces`` and ``hard_pieces`` pieces (:func:`generate_mate_in_one`).
    """

    data: tuple[str, ...] | None = setting("Lichess puzzle CSV files (plain or .zst); without them mate-in-1 "
                                           "positions are generated", default=None)
    train_max_rating: int = setting("with data: train/val puzzles are rated at most this", default=1600)
    hard_min_rating: int = setting("with data: hard puzzles are rated at least this", default=1601)
    hard_max_rating: int | None = setting("with data: and at most this (none: no limit)", default=2000)
    val_fraction: float = setting("with data: the fraction of easy puzzles kept for validation", default=0.1)
    train_pieces: tuple[int, int] = setting("generated: pieces on the board of train/val positions (low high)",
                                            default=(4, 8))
    hard_pieces: tuple[int, int] = setting("generated: pieces on the board of hard positions (low high)",
                                           default=(10, 16))

    name: ClassVar[str] = "chess"
    vocab_size: ClassVar[int] = VOCAB_SIZE
    num_classes: ClassVar[int] = NUM_CLASSES
    grid: ClassVar[tuple[int, ...]] = GRID

    def __post_init__(self) -> None:
        if isinstance(self.data, (str, Path)):
            object.__setattr__(self, "data", (str(self.data),))
        elif self.data is not None:
            object.__setattr__(self, "data", tuple(str(p) for p in self.data))
        for name in ("train_pieces", "hard_pieces"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        for path in self.data or ():
            if not Path(path).is_file():
                raise ConfigError(f"Chess.data: no such file {path!r}")
        if self.hard_max_rating is not None and self.hard_max_rating < self.hard_min_rating:
            raise ConfigError(f"Chess.hard_max_rating {self.hard_max_rating} is below hard_min_rating {self.hard_min_rating}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"Chess.val_fraction must be in (0, 1), got {self.val_fraction}")
        for name in ("train_pieces", "hard_pieces"):
            low, high = getattr(self, name)
            if not 3 <= low <= high <= 32:
                raise ConfigError(f"Chess.{name} must be (low, high) with 3 <= low <= high <= 32, got {(low, high)}")

    def _pool(self, easy: bool) -> tuple[Tensor, Tensor]:
        parts = [_load_cached(str(Path(p).resolve()), Path(p).stat().st_mtime_ns) for p in self.data or ()]
        x, y, rating = (torch.cat(column) for column in zip(*parts))
        if easy:
            keep = rating <= self.train_max_rating
        else:
            keep = rating >= self.hard_min_rating
            if self.hard_max_rating is not None:
                keep &= rating <= self.hard_max_rating
        return x[keep], y[keep]

    def make(self, band: str, n: int, seed: int = 0) -> tuple[Tensor, Tensor]:
        check_band(band)
        check_count(n)
        check_seed(seed)
        if self.data is None:
            pieces = self.hard_pieces if band == "hard" else self.train_pieces
            x, y = _generate_cached(n, pieces, seed, _STREAMS[band])
            return x.clone(), y.clone()  # the cached tensors stay untouched
        x, y = self._pool(easy=band != "hard")
        order = torch.arange(len(x))
        if band != "hard":
            order = order[torch.randperm(len(x), generator=seeds.generator(0, 3))]
            n_val = max(1, round(self.val_fraction * len(order)))
            order = order[:n_val] if band == "val" else order[n_val:]
        if n > len(order):
            raise ConfigError(f"the chess {band!r} split of {', '.join(self.data)} has {len(order)} puzzles, {n} requested")
        pick = order[torch.randperm(len(order), generator=seeds.generator(seed, 4, _STREAMS[band]))[:n]]
        return x[pick], y[pick]

    def extra_split(self, spec: str, n: int, seed: int) -> tuple[str, tuple[Tensor, Tensor]]:
        """``spec`` is a Lichess puzzle file: its first ``n`` puzzles."""
        if not Path(spec).is_file():
            raise ConfigError(f"no such chess puzzle file: {spec}")
        x, y = load_lichess(spec, limit=n)[:2]
        return Path(spec).stem, (x[:n], y[:n])

    def correct(self, out: Tensor, y: Tensor, x: Tensor | None = None) -> Tensor:
        return correct(out, y, x)

    def cell_accuracy(self, out: Tensor, y: Tensor, x: Tensor | None = None) -> Tensor:
        return cell_accuracy(out, y, x)

    def baselines(self, x: Tensor, y: Tensor) -> dict[str, float]:
        """A uniformly random legal move and a one-ply greedy move (mate, else the most valuable
        capture, else random), each scored by :func:`correct` and :func:`correct_legal`; exact
        expectations over their random choices (:mod:`deqloop.tasks.chess_baselines`)."""
        from deqloop.tasks.chess_baselines import score_baselines  # it imports this module

        return score_baselines(x, y)
