"""Chess puzzles: find the move. The task, and its two metrics; the board encoding is in
:mod:`deqloop.tasks.chess_encoding`, the Lichess loader and the mate-in-1 generator in
:mod:`deqloop.tasks.chess_data`.

``x`` is the ``(8, 8)`` board in the side to move's frame (by default the paper's: black to move
rotated by 180° with the colours swapped, then mirrored so the mover's king is on files e–h),
``y`` marks the solution's from- and to-square (``num_classes = 2``). A model outputs logits
``(n, 8, 8, 2)``; the *score* of a square is its class-1 logit (the paper's, ``scores="class1"``)
or ``logit[..., 1] - logit[..., 0]`` (``scores="margin"``, deqloop's earlier choice).

Metrics: :func:`correct` (the paper's) asks that the two highest-scoring squares be exactly
the target pair; :func:`correct_legal` takes the legal move with the highest from-score plus
to-score and asks that it be the solution move. :func:`predicted_moves` turns a prediction's
two squares back into the real board's move (UCI) for reporting.

A Lichess row's ``FEN`` is the position before the opponent's setup move ``Moves[0]``; the
example is the position after it, and the target is ``Moves[1]``.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

from deqloop.extras import require

require("chess", "the chess task")
import chess  # noqa: E402
import torch
from torch import Tensor

from deqloop import seeds
from deqloop.errors import ConfigError
from deqloop.tasks.base import Task, check_band, check_count, check_seed
from deqloop.tasks.chess_data import ChessMeta, LICHESS_COLUMNS, generate_mate_in_one, load_lichess
from deqloop.tasks.chess_encoding import (ENCODINGS, GRID, NUM_CLASSES, VOCAB_SIZE, decode, decode_move, encode,
                                          frame_mask, move_between)
from deqloop.validate import choice, setting

__all__ = [
    "ENCODINGS",
    "SCORES",
    "Chess",
    "ChessMeta",
    "LICHESS_COLUMNS",
    "cell_accuracy",
    "correct",
    "correct_legal",
    "decode",
    "decode_move",
    "encode",
    "frame_mask",
    "generate_mate_in_one",
    "load_lichess",
    "predicted_moves",
    "square_scores",
]

SCORES: tuple[str, ...] = ("class1", "margin")
"""How a square is scored from its two logits: ``"class1"`` the class-1 logit (the paper's,
``deepthinking/utils/testing.py:142-149``), ``"margin"`` ``logit1 − logit0``."""

# ---------------------------------------------------------------------------------------------
# Metrics


def square_scores(out: Tensor, scores: str = "class1") -> Tensor:
    """``(n, 64)`` square scores from logits ``(n, 8, 8, 2)`` (by ``scores``, :data:`SCORES`),
    scores ``(n, 8, 8)``, or 0/1 class ids ``(n, 8, 8)``."""
    choice("scores", scores, SCORES)
    if out.dim() == 4 and out.shape[1:] == (8, 8, 2):
        score = out[..., 1] if scores == "class1" else out[..., 1] - out[..., 0]
        return score.flatten(1).float()
    if out.dim() == 3 and out.shape[1:] == GRID:
        return out.flatten(1).float()
    raise ConfigError(f"expected logits (n, 8, 8, 2) or scores/class ids (n, 8, 8), got shape {tuple(out.shape)}")


_CHECKED: dict[int, tuple[weakref.ref, int]] = {}  # targets already checked: id -> (the tensor, its version)


def _target_pairs(y: Tensor) -> Tensor:
    """``y`` flattened, after checking it marks two squares per example. The value check reads the
    host (a synchronisation on a GPU), so targets checked before and unchanged since (an evaluation
    scores the same batch at every iteration count) are not read again."""
    bad = f"targets must be (n, 8, 8) with exactly two squares marked 1; got shape {tuple(y.shape)}"
    if y.dim() != 3 or y.shape[1:] != GRID:
        raise ConfigError(bad)
    flat = y.flatten(1)
    seen = _CHECKED.get(id(y))
    if seen is not None and seen[0]() is y and seen[1] == y._version:
        return flat
    if bool(((flat == 1).sum(dim=1) != 2).any()):
        raise ConfigError(bad)
    for key in [k for k, (ref, _) in _CHECKED.items() if ref() is None]:
        del _CHECKED[key]
    _CHECKED[id(y)] = (weakref.ref(y), y._version)
    return flat


def top_two(out: Tensor, scores: str = "class1") -> Tensor:
    """``(n, 2)``: the two highest-scoring squares of each example (canonical square indices)."""
    return square_scores(out, scores).topk(2, dim=1).indices


def correct(out: Tensor, y: Tensor, x: Tensor | None = None, *, scores: str = "class1") -> Tensor:
    """``(n,)`` bool, the paper's metric: the two highest-scoring squares (by ``scores``; the
    paper's class-1 logit by default) are the target pair. For class ids: the squares predicted 1
    are exactly the pair."""
    flat = _target_pairs(y)
    if not out.is_floating_point() and out.shape == y.shape:
        return (out.flatten(1) == flat).all(dim=1)
    return flat.gather(1, top_two(out, scores)).sum(dim=1) == 2


def cell_accuracy(out: Tensor, y: Tensor, x: Tensor | None = None) -> Tensor:
    """``(n,)`` float: the fraction of the 64 squares classified right (the argmax of the two
    logits, ``logit1 > logit0``, means marked)."""
    if not out.is_floating_point() and out.shape == y.shape:
        pred = out
    else:
        pred = (square_scores(out, "margin") > 0).long().view_as(y)
    return (pred == y).flatten(1).float().mean(dim=1)


def _frame(i: int, x: Tensor | None, fens: Sequence[str] | None, encoding: str) -> tuple[chess.Board, int]:
    """Example ``i``'s real board and its frame mask (the canonical board itself, mask 0, from ``x``)."""
    if fens is not None:
        board = chess.Board(fens[i])
        return board, frame_mask(board, encoding)
    return decode(x[i]), 0  # type: ignore[index]


def correct_legal(
    out: Tensor, y: Tensor, x: Tensor | None = None, *, fens: Sequence[str] | None = None,
    encoding: str = "paper", scores: str = "class1",
) -> Tensor:
    """``(n,)`` bool: the legal move with the highest from-score + to-score has the solution's
    from- and to-square (the promotion piece is not scored).

    Positions come from ``fens`` (as :func:`load_lichess` returns them in ``meta.fens``; they keep
    castling and en-passant rights; ``encoding`` says which frame ``out`` and ``y`` are in) or
    else are decoded from ``x`` (without those rights, so a castling or en-passant solution
    cannot be found). The solution's from-square is the marked square that holds a piece of the
    side to move.
    """
    flat = _target_pairs(y)
    score = square_scores(out, scores)
    if fens is None and x is None:
        raise ConfigError("correct_legal needs the positions: pass x or fens")
    n = len(flat)
    if fens is not None and len(fens) != n:
        raise ConfigError(f"got {len(fens)} FENs for {n} targets")
    result = torch.zeros(n, dtype=torch.bool)
    for i in range(n):
        board, mask = _frame(i, x, fens, encoding)
        marked = torch.nonzero(flat[i]).flatten().tolist()
        start = [s for s in marked if board.color_at(s ^ mask) == board.turn]
        if len(start) != 1:
            raise ConfigError(f"example {i}: the target squares {marked} do not mark one move of the side to move")
        end = marked[1] if marked[0] == start[0] else marked[0]
        row = score[i].tolist()
        best = max(board.legal_moves, key=lambda m: row[m.from_square ^ mask] + row[m.to_square ^ mask], default=None)
        result[i] = best is not None and (best.from_square ^ mask, best.to_square ^ mask) == (start[0], end)
    return result


def predicted_moves(out: Tensor, fens: Sequence[str], encoding: str = "paper", scores: str = "class1") -> list[str | None]:
    """The move each prediction names on the real board, in UCI: its two highest-scoring squares
    (:func:`correct`'s) decoded out of the ``encoding``'s frame (:func:`decode_move`); ``None``
    where those squares are not a legal move of the side to move."""
    if len(fens) != len(out):
        raise ConfigError(f"got {len(fens)} FENs for {len(out)} predictions")
    moves = [decode_move(chess.Board(f), pair, encoding) for f, pair in zip(fens, top_two(out, scores).tolist())]
    return [m.uci() if m is not None else None for m in moves]


# ---------------------------------------------------------------------------------------------
# The task


@lru_cache(maxsize=8)
def _load_cached(path: str, mtime_ns: int, encoding: str) -> tuple[Tensor, Tensor, ChessMeta]:
    return load_lichess(path, return_meta=True, encoding=encoding)  # type: ignore[return-value]


_GENERATED: OrderedDict[tuple, tuple[Tensor, Tensor, ChessMeta]] = OrderedDict()  # the last 8 sets generated


def _generate_cached(n: int, pieces: tuple[int, int], seed: int, stream: int, encoding: str) -> tuple[Tensor, Tensor]:
    key = (n, pieces, seed, stream, encoding)
    if key not in _GENERATED:
        _GENERATED[key] = generate_mate_in_one(n, pieces, seed, stream=stream, return_meta=True,  # type: ignore[assignment]
                                               encoding=encoding)
        while len(_GENERATED) > 8:
            _GENERATED.popitem(last=False)
    _GENERATED.move_to_end(key)
    x, y, _ = _GENERATED[key]
    return x, y


def _loaded(files: Sequence[str], encoding: str) -> list[tuple[Tensor, Tensor, ChessMeta]]:
    """Each puzzle file's examples and details, read once per file version and encoding."""
    return [_load_cached(str(Path(p).resolve()), Path(p).stat().st_mtime_ns, encoding) for p in files]


def _sources(files: Sequence[str], encoding: str) -> list[tuple[Tensor, Tensor, ChessMeta]]:
    """The examples whose real positions the task knows: its puzzle files' (as loaded for ``make``,
    no second parse) and the sets it generated last in this process, in ``encoding``."""
    return _loaded(files, encoding) + [entry for key, entry in reversed(_GENERATED.items()) if key[-1] == encoding]


def _find(sources: Sequence[tuple[Tensor, Tensor, ChessMeta]], x: Tensor, y: Tensor) -> tuple[ChessMeta, int] | None:
    """The first known example with this board ``x`` and target ``y``: its details and index. Eight
    squares at a time, among the examples that agree so far (the first eight read every example
    once; a pool of millions takes a fraction of a second)."""
    for px, py, meta in sources:
        rows: Tensor | None = None  # the examples that agree so far (None: all)
        for pool, want in ((px.flatten(1), x.flatten()), (py.flatten(1), y.flatten())):
            for c in range(0, pool.shape[1], 8):
                block = pool[:, c:c + 8] if rows is None else pool[rows, c:c + 8]
                agree = (block == want[c:c + 8]).all(dim=1)
                rows = torch.nonzero(agree).flatten() if rows is None else rows[agree]
        if rows is not None and len(rows):
            return meta, int(rows[0])
    return None


_STREAMS = {"train": 0, "val": 1, "hard": 2}


@dataclass(frozen=True)
class Chess(Task):
    """The chess task.

    With ``data`` (Lichess puzzle files, e.g. both files of ``../shared/data/chess`` or the full
    dump): ``train``/``val`` are the puzzles rated at most ``train_max_rating`` (``val`` a fixed
    ``val_fraction`` of them), ``hard`` those rated ``hard_min_rating``-``hard_max_rating``, as
    in the paper; each ``make`` draws ``n`` without replacement. Without ``data``: mate-in-1
    positions with ``train_pieces`` and ``hard_pieces`` pieces (:func:`generate_mate_in_one`).

    The draws are random where the authors' loader takes the first puzzles in file order
    (``deepthinking/utils/chess_data.py:125-172, 181-212``, repository ashlab11/generalization;
    val a random 20 % of them): their file is the full dump, in puzzle-id order and so unordered in
    rating, while files cut by rating, as ``../shared/data/chess``'s, are sorted by rating, where the
    first puzzles would be the easiest of the band. A random draw keeps the paper's distribution.
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
    encoding: str = setting("board encoding: paper (black to move rotated 180° with colours swapped, then mirrored "
                            "so the mover's king is on files e–h; the paper's) or rank_flip (black to move: ranks "
                            "flipped, colours swapped, no mirror; deqloop's earlier encoding)", default="paper")
    scores: str = setting("how the metric ranks squares for its top 2: class1 (the class-1 logit, the paper's) or "
                          "margin (logit1 − logit0)", default="class1")

    name: ClassVar[str] = "chess"
    stored_defaults: ClassVar[dict[str, Any]] = {"encoding": "rank_flip", "scores": "margin"}  # before they existed
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
        choice("Chess.encoding", self.encoding, ENCODINGS)
        choice("Chess.scores", self.scores, SCORES)
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"Chess.val_fraction must be in (0, 1), got {self.val_fraction}")
        for name in ("train_pieces", "hard_pieces"):
            low, high = getattr(self, name)
            if not 3 <= low <= high <= 32:
                raise ConfigError(f"Chess.{name} must be (low, high) with 3 <= low <= high <= 32, got {(low, high)}")

    def _pool(self, easy: bool) -> tuple[Tensor, Tensor]:
        parts = _loaded(self.data or (), self.encoding)
        x, y, rating = (torch.cat(column) for column in zip(*((px, py, meta.ratings) for px, py, meta in parts)))
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
        return self._make(band, n, seed)

    def _make(self, band: str, n: int, seed: int, *, start: int = 0) -> tuple[Tensor, Tensor]:
        """``make(band, n, seed)[start:]``, gathering only those puzzles from files."""
        if self.data is None:
            pieces = self.hard_pieces if band == "hard" else self.train_pieces
            x, y = _generate_cached(n, pieces, seed, _STREAMS[band], self.encoding)
            return x[start:].clone(), y[start:].clone()  # the cached tensors stay untouched
        x, y = self._pool(easy=band != "hard")
        order = torch.arange(len(x))
        if band != "hard":
            order = order[torch.randperm(len(x), generator=seeds.generator(0, 3))]
            n_val = max(1, round(self.val_fraction * len(order)))
            order = order[:n_val] if band == "val" else order[n_val:]
        if n > len(order):
            raise ConfigError(f"the chess {band!r} split of {', '.join(self.data)} has {len(order)} puzzles, {n} requested")
        pick = order[torch.randperm(len(order), generator=seeds.generator(seed, 4, _STREAMS[band]))[start:n]]
        return x[pick], y[pick]

    def train_examples(self, seed: int, step: int, start: int, stop: int) -> tuple[Tensor, Tensor]:
        """Generated: one mate-in-1 position per example, seeded by ``seeds.example_seeds`` (the
        default). From files: examples ``start..stop-1`` of the draw ``make("train", stop)`` would
        make from a seed of ``(seed, step)``; the step's permutation is shared, only the examples
        asked for are gathered."""
        if self.data is None:
            return super().train_examples(seed, step, start, stop)
        return self._make("train", stop, seeds.derive_seed(seed, seeds.BATCH, step) % 2**31, start=start)

    def extra_split(self, spec: str, n: int, seed: int) -> tuple[str, tuple[Tensor, Tensor]]:
        """``spec`` is a Lichess puzzle file: its first ``n`` puzzles."""
        if not Path(spec).is_file():
            raise ConfigError(f"no such chess puzzle file: {spec}")
        x, y = load_lichess(spec, limit=n, encoding=self.encoding)[:2]
        return Path(spec).stem, (x[:n], y[:n])

    def correct(self, out: Tensor, y: Tensor, x: Tensor | None = None) -> Tensor:
        return correct(out, y, x, scores=self.scores)

    def cell_accuracy(self, out: Tensor, y: Tensor, x: Tensor | None = None) -> Tensor:
        return cell_accuracy(out, y, x)

    def show(self, x: Tensor, y: Tensor, out: Tensor) -> list[dict[str, str]]:
        """Per example: the position, the puzzle's move and the model's, in UCI on the real board.

        ``fen`` (and ``puzzle``, its id) where the task knows the real position: an example of its
        puzzle files or of a set it generated lately in this process, found by its encoded board and
        target (a position encoded alike from the other side, should a file hold both, shows the
        first). Elsewhere ``canonical_fen``: the board as encoded (:func:`decode`: the side to move
        as white, no castling or en-passant rights), the moves on that board. ``move`` is the
        puzzle's (from ``y``), ``predicted`` the move the two highest-scoring squares (the metric's,
        by ``scores``) make on the board (:func:`decode_move`), ``"illegal"`` where they make none;
        ``predicted_squares`` those two squares on the board, best first; ``correct`` the metric's
        verdict, ``"yes"``/``"no"``. A promotion is shown as a queen's (the squares do not say which)."""
        x, y, out = x.cpu(), y.cpu(), out.cpu()
        right = self.correct(out, y, x)
        pairs = top_two(out, self.scores).tolist()
        sources = _sources(self.data or (), self.encoding)
        rows = []
        for i in range(len(x)):
            known = _find(sources, x[i], y[i])
            if known is not None:
                meta, j = known
                board = chess.Board(meta.fen(j))
                row, mask = {"fen": board.fen(), "puzzle": meta.ids[j]}, frame_mask(board, self.encoding)
            else:  # the board as encoded is its own frame: the side to move plays white up the board
                board = decode(x[i])
                row, mask = {"canonical_fen": board.fen()}, 0
            target = [s ^ mask for s in torch.nonzero(y[i].flatten()).flatten().tolist()]
            solution = move_between(board, target)
            if solution is None:  # a castling or en-passant solution on a board without those rights
                target.sort(key=lambda s: board.color_at(s) != board.turn)
                solution = chess.Move(*target)
            guess = move_between(board, [s ^ mask for s in pairs[i]])
            row.update(move=solution.uci(), predicted=guess.uci() if guess is not None else "illegal",
                       predicted_squares=" ".join(chess.square_name(s ^ mask) for s in pairs[i]),
                       correct="yes" if bool(right[i]) else "no")
            rows.append(row)
        return rows

    def baselines(self, x: Tensor, y: Tensor) -> dict[str, float]:
        """A uniformly random legal move and a one-ply greedy move (mate, else the most valuable
        capture, else random), each scored by :func:`correct` and :func:`correct_legal`; exact
        expectations over their random choices (:mod:`deqloop.tasks.chess_baselines`)."""
        from deqloop.tasks.chess_baselines import score_baselines  # it imports this module

        return score_baselines(x, y)
