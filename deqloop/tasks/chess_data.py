"""Chess data: the Lichess puzzle loader and a mate-in-1 generator; the board encoding (the side
to move's frame, tokens and targets) is :mod:`deqloop.tasks.chess_encoding`.

A Lichess row's ``FEN`` is the position before the opponent's setup move ``Moves[0]``; the
example is the position after it, and the target is ``Moves[1]``.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from deqloop.extras import require

require("chess", "the chess task")
import chess  # noqa: E402
import torch
from torch import Tensor

from deqloop.errors import ConfigError
from deqloop.tasks.base import check_count
from deqloop.tasks.chess_encoding import (ENCODINGS, GRID, NUM_CLASSES, VOCAB_SIZE, Example, decode, decode_move,
                                          encode, example, frame_mask, tensors)
from deqloop.tasks.io import check_file, LoadSummary, Rows, iter_lines
from deqloop.validate import choice, integer

__all__ = ["ChessMeta", "ENCODINGS", "GRID", "LICHESS_COLUMNS", "NUM_CLASSES", "VOCAB_SIZE", "decode", "decode_move",
           "encode", "frame_mask", "generate_mate_in_one", "load_lichess"]

LICHESS_COLUMNS = (
    "PuzzleId",
    "FEN",
    "Moves",
    "Rating",
    "RatingDeviation",
    "Popularity",
    "NbPlays",
    "Themes",
    "GameUrl",
    "OpeningTags",
)

# ---------------------------------------------------------------------------------------------
# Lichess loader


@dataclass
class ChessMeta:
    """Per-example details that come with ``return_meta=True``."""

    ids: list[str]
    puzzle_fens: list[str]  # the FEN column: the position before the setup move
    setup_moves: list[str]  # the setup move in UCI ("" for generated positions)
    moves: list[str]  # the solution move in UCI, as in the file
    ratings: Tensor  # (n,) long; 0 for generated positions
    lines: list[int]  # line in the file; 0 for generated positions
    summary: LoadSummary | None = None
    encoding: str = "paper"  # the board encoding of x and y (decode_move turns their squares into moves)

    @cached_property
    def fens(self) -> list[str]:
        """The positions the examples show (after the setup move), unmirrored; computed on first use."""
        return [self.fen(i) for i in range(len(self.puzzle_fens))]

    def fen(self, i: int) -> str:
        """The position example ``i`` shows (after the setup move), unmirrored."""
        board = chess.Board(self.puzzle_fens[i])
        if self.setup_moves[i]:
            board.push_uci(self.setup_moves[i])
        return board.fen()


@dataclass(frozen=True)
class _Row:
    line: int
    puzzle_id: str
    fen: str
    moves: str
    rating: int


def _rows(
    path: str | Path, rows: Rows, min_rating: int | None, max_rating: int | None
) -> Iterator[_Row]:
    """Rows in the rating range, with the column count and rating checked."""
    columns = {name: i for i, name in enumerate(LICHESS_COLUMNS)}
    width = len(LICHESS_COLUMNS)
    first = True
    for number, text in iter_lines(path, rows):
        if not text.strip():
            continue
        fields = next(csv.reader([text])) if '"' in text else text.split(",")
        if first:
            first = False
            names = [f.strip().lstrip("\ufeff") for f in fields]
            if "PuzzleId" in names or "FEN" in names:
                missing = [c for c in ("PuzzleId", "FEN", "Moves", "Rating") if c not in names]
                if missing:
                    raise rows.fatal(number, "header lacks columns", text, ", ".join(missing))
                columns = {name: names.index(name) for name in ("PuzzleId", "FEN", "Moves", "Rating")}
                width = len(names)
                continue
        rows.summary.rows += 1
        if len(fields) != width:
            rows.bad(number, "wrong number of columns", text, f"{width} columns")
            continue
        rating_text = fields[columns["Rating"]].strip()
        try:
            rating = int(rating_text)
        except ValueError:
            rating = 2**62
        if not -(2**62) < rating < 2**62:
            rows.bad(number, "rating is not an integer", rating_text)
            continue
        if (min_rating is not None and rating < min_rating) or (max_rating is not None and rating > max_rating):
            continue
        yield _Row(number, fields[columns["PuzzleId"]], fields[columns["FEN"]], fields[columns["Moves"]], rating)


def _parse_move(board: chess.Board, uci: str, row: _Row, rows: Rows, which: str) -> chess.Move | None:
    try:
        move = board.parse_uci(uci)
    except chess.IllegalMoveError:
        rows.bad(row.line, f"illegal {which}", uci, f"a legal move in {board.fen()}")
        return None
    except ValueError:
        rows.bad(row.line, f"unparsable {which}", uci, "UCI like e2e4 or e7e8q")
        return None
    if not move:
        rows.bad(row.line, f"illegal {which}", uci, "a move, not the null move")
        return None
    return move


def _parse_row(row: _Row, rows: Rows, encoding: str) -> tuple[Example, str, str] | None:
    """The example, the setup move and the solution, or None after reporting a bad row."""
    try:
        board = chess.Board(row.fen)
    except ValueError:
        rows.bad(row.line, "bad FEN", row.fen)
        return None
    if not board.is_valid():
        rows.bad(row.line, "FEN is not a legal position", row.fen, f"no problems (found {board.status()!r})")
        return None
    moves = row.moves.split()
    if len(moves) < 2:
        rows.bad(row.line, "too few moves", row.moves, "the setup move and at least one solution move")
        return None
    setup = _parse_move(board, moves[0], row, rows, "setup move")
    if setup is None:
        return None
    board.push(setup)
    solution = _parse_move(board, moves[1], row, rows, "solution move")
    if solution is None:
        return None
    return example(board, solution, encoding), moves[0], moves[1]


def load_lichess(
    path: str | Path,
    min_rating: int | None = None,
    max_rating: int | None = None,
    limit: int | None = None,
    on_error: str = "raise",
    *,
    shuffle_seed: int | None = None,
    return_meta: bool = False,
    encoding: str = "paper",
) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, ChessMeta]:
    """Examples ``x``, ``y`` (``(n, 8, 8)`` LongTensors) from a Lichess puzzle CSV, in the board
    ``encoding`` (:data:`~deqloop.tasks.chess_encoding.ENCODINGS`; default the paper's).

    Reads the official columns (:data:`LICHESS_COLUMNS`), with or without the header line, from
    a plain file or a streamed ``.csv.zst``. Keeps rows rated in ``[min_rating, max_rating]``;
    with ``shuffle_seed`` the kept rows are shuffled deterministically (this reads the whole
    file); then the first ``limit`` good rows are encoded and the rest are not read further.
    Bad rows raise :class:`~deqloop.tasks.base.DataError` naming file, line and problem; with
    ``on_error="skip"`` they are counted in ``meta.summary``.
    """
    if limit is not None:
        check_count(limit, "limit")
    for name, value in (("min_rating", min_rating), ("max_rating", max_rating), ("shuffle_seed", shuffle_seed)):
        if value is not None:
            integer(name, value, minimum=0)
    choice("encoding", encoding, ENCODINGS)
    check_file(path)
    rows = Rows(path, on_error)
    candidates: Iterator[_Row] | list[_Row] = _rows(path, rows, min_rating, max_rating)
    if shuffle_seed is not None:
        candidates = list(candidates)
        random.Random(shuffle_seed).shuffle(candidates)
    examples: list[Example] = []
    kept: list[tuple[_Row, str, str]] = []  # row, setup move, solution move
    for row in candidates:
        if limit is not None and len(examples) >= limit:
            break
        parsed = _parse_row(row, rows, encoding)
        if parsed is not None:
            examples.append(parsed[0])
            kept.append((row, parsed[1], parsed[2]))
    rows.summary.loaded = len(examples)
    summary = rows.finish()
    x, y = tensors(examples)
    if not return_meta:
        return x, y
    meta = ChessMeta(
        ids=[r.puzzle_id for r, _, _ in kept],
        puzzle_fens=[r.fen for r, _, _ in kept],
        setup_moves=[setup for _, setup, _ in kept],
        moves=[m for _, _, m in kept],
        ratings=torch.tensor([r.rating for r, _, _ in kept], dtype=torch.long),
        lines=[r.line for r, _, _ in kept],
        summary=summary,
        encoding=encoding,
    )
    return x, y, meta


# ---------------------------------------------------------------------------------------------
# Synthetic mate-in-1 positions

_EXTRA_PIECES = (chess.PAWN, chess.KNIGHT, chess.BISHOP, chess.ROOK, chess.QUEEN)
_EXTRA_WEIGHTS = (3, 2, 2, 2, 1)


def _random_board(rng: random.Random, pieces: int) -> chess.Board:
    """Two kings and ``pieces - 2`` random others (60% white) on random squares; white to move."""
    board = chess.Board(None)
    squares = rng.sample(range(64), pieces)
    board.set_piece_at(squares[0], chess.Piece(chess.KING, chess.WHITE))
    board.set_piece_at(squares[1], chess.Piece(chess.KING, chess.BLACK))
    for square in squares[2:]:
        colour = chess.WHITE if rng.random() < 0.6 else chess.BLACK
        kind = rng.choices(_EXTRA_PIECES, weights=_EXTRA_WEIGHTS)[0]
        if kind == chess.PAWN and chess.square_rank(square) in (0, 7):
            kind = rng.choice((chess.KNIGHT, chess.BISHOP, chess.ROOK))
        board.set_piece_at(square, chess.Piece(kind, colour))
    board.turn = chess.WHITE
    return board


def _mating_squares(board: chess.Board) -> set[tuple[int, int]]:
    """``(from, to)`` of every mating move (promotions to different pieces count once)."""
    found = set()
    for move in board.legal_moves:
        if board.gives_check(move):
            board.push(move)
            if board.is_checkmate():
                found.add((move.from_square, move.to_square))
            board.pop()
    return found


def generate_mate_in_one(
    n: int,
    pieces: tuple[int, int] = (4, 8),
    seed: int = 0,
    *,
    stream: int = 0,
    return_meta: bool = False,
    encoding: str = "paper",
) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, ChessMeta]:
    """``n`` random legal positions, white to move, with exactly one mating move (checked with
    python-chess), encoded like :func:`load_lichess`. The piece count, kings included, is drawn
    uniformly from ``pieces`` (inclusive): more pieces, more distractions. Deterministic in
    ``(seed, stream, pieces)``; about 10-50 positions/s on one core."""
    check_count(n)
    choice("encoding", encoding, ENCODINGS)
    low, high = pieces
    if not (isinstance(low, int) and isinstance(high, int) and 3 <= low <= high <= 32):
        raise ConfigError(f"pieces must be (low, high) with 3 <= low <= high <= 32, got {pieces!r}")
    rng = random.Random(f"mate-in-one/{seed}/{stream}/{low}-{high}")
    examples: list[Example] = []
    fens: list[str] = []
    moves: list[str] = []
    while len(examples) < n:
        board = _random_board(rng, rng.randint(low, high))
        if not board.is_valid():
            continue
        mates = _mating_squares(board)
        if len(mates) != 1:
            continue
        start, end = mates.pop()
        move = next(m for m in board.legal_moves if (m.from_square, m.to_square) == (start, end))
        examples.append(example(board, move, encoding))
        fens.append(board.fen())
        moves.append(move.uci())
    x, y = tensors(examples)
    if not return_meta:
        return x, y
    meta = ChessMeta(
        ids=[f"mate1-{seed}-{stream}-{i}" for i in range(n)],
        puzzle_fens=fens,
        setup_moves=[""] * n,
        moves=moves,
        ratings=torch.zeros(n, dtype=torch.long),
        lines=[0] * n,
        encoding=encoding,
    )
    return x, y, meta


