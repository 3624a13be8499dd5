"""Chess data: the board encoding, the Lichess puzzle loader and a mate-in-1 generator.

Encoding, always from the side to move's perspective: when black is to move the board is
mirrored (ranks flipped) and the colours swapped, as in the paper, so the side to move plays
"white" up the board. ``x`` is ``(8, 8)`` tokens indexed ``[rank, file]`` (``a1`` is
``[0, 0]``; square ``s`` of python-chess is ``[s // 8, s % 8]``):

    0 empty, 1-6 the side to move's pawn, knight, bishop, rook, queen, king,
    7-12 the opponent's, in the same order.                                  vocab_size = 13

``y`` is ``(8, 8)`` with 1 on the solution's from- and to-square (same perspective), 0
elsewhere (``num_classes = 2``). Castling and en-passant rights are not encoded.

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
import numpy as np
import torch
from torch import Tensor

from deqloop.errors import ConfigError
from deqloop.tasks.base import check_count
from deqloop.tasks.io import check_file, LoadSummary, Rows, iter_lines
from deqloop.validate import integer

__all__ = ["ChessMeta", "GRID", "LICHESS_COLUMNS", "NUM_CLASSES", "VOCAB_SIZE", "decode", "encode",
           "generate_mate_in_one", "load_lichess"]

VOCAB_SIZE = 13
NUM_CLASSES = 2
GRID = (8, 8)

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
_COLOURS = (chess.WHITE, chess.BLACK)
_PIECE_TYPES = (chess.PAWN, chess.KNIGHT, chess.BISHOP, chess.ROOK, chess.QUEEN, chess.KING)
_TOKEN = np.arange(1, 13, dtype=np.int64)  # plane k (white pieces, then black) -> token k + 1
_SWAP_COLOURS = np.array([0, *range(7, 13), *range(1, 7)], dtype=np.int64)
_SHIFTS = np.arange(64, dtype=np.uint64)


@dataclass(frozen=True)
class _Example:
    planes: tuple[int, ...]  # 12 bitboards: white P N B R Q K, then black
    black_to_move: bool
    from_square: int
    to_square: int


def _example(board: chess.Board, move: chess.Move) -> _Example:
    planes = tuple(board.pieces_mask(t, c) for c in _COLOURS for t in _PIECE_TYPES)
    return _Example(planes, board.turn == chess.BLACK, move.from_square, move.to_square)


def _tensors(examples: Sequence[_Example]) -> tuple[Tensor, Tensor]:
    """Encode a batch at once: ``x`` and ``y`` of shape ``(n, 8, 8)``."""
    n = len(examples)
    planes = np.array([e.planes for e in examples], dtype=np.uint64).reshape(n, 12)
    bits = ((planes[:, :, None] >> _SHIFTS) & np.uint64(1)).astype(np.int64)  # (n, 12, 64)
    tokens = (bits * _TOKEN[None, :, None]).sum(axis=1).reshape(n, 8, 8)  # (n, rank, file)
    black = np.array([e.black_to_move for e in examples], dtype=bool)
    tokens[black] = _SWAP_COLOURS[tokens[black][:, ::-1, :]]
    flip = np.where(black, 56, 0)  # square ^ 56 mirrors the rank
    squares = np.array([[e.from_square, e.to_square] for e in examples], dtype=np.int64).reshape(n, 2) ^ flip[:, None]
    target = np.zeros((n, 64), dtype=np.int64)
    np.put_along_axis(target, squares, 1, axis=1)
    return torch.from_numpy(tokens), torch.from_numpy(target.reshape(n, 8, 8))


def encode(board: chess.Board, move: chess.Move | None = None) -> tuple[Tensor, Tensor]:
    """One position (and move) as ``x``, ``y`` of shape ``(8, 8)``; ``y`` is zeros without a move."""
    x, y = _tensors([_example(board, move or chess.Move.null())])
    return x[0], (y[0] if move else torch.zeros_like(y[0]))


def decode(x: Tensor) -> chess.Board:
    """The board an ``(8, 8)`` encoding shows, the side to move as white, to move, with no
    castling or en-passant rights (the encoding does not keep them)."""
    if x.shape != GRID:
        raise ConfigError(f"decode takes one (8, 8) board, got shape {tuple(x.shape)}")
    board = chess.Board(None)
    for square, token in enumerate(x.flatten().tolist()):
        if not 0 <= token < VOCAB_SIZE:
            raise ConfigError(f"token {token} at square {chess.square_name(square)} is not in 0-{VOCAB_SIZE - 1}")
        if token:
            colour = chess.WHITE if token <= 6 else chess.BLACK
            board.set_piece_at(square, chess.Piece(_PIECE_TYPES[(token - 1) % 6], colour))
    board.turn = chess.WHITE
    return board



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

    @cached_property
    def fens(self) -> list[str]:
        """The positions the examples show (after the setup move), unmirrored; computed on first use."""
        fens = []
        for fen, setup in zip(self.puzzle_fens, self.setup_moves):
            board = chess.Board(fen)
            if setup:
                board.push_uci(setup)
            fens.append(board.fen())
        return fens


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


def _parse_row(row: _Row, rows: Rows) -> tuple[_Example, str, str] | None:
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
    return _example(board, solution), moves[0], moves[1]


def load_lichess(
    path: str | Path,
    min_rating: int | None = None,
    max_rating: int | None = None,
    limit: int | None = None,
    on_error: str = "raise",
    *,
    shuffle_seed: int | None = None,
    return_meta: bool = False,
) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, ChessMeta]:
    """Examples ``x``, ``y`` (``(n, 8, 8)`` LongTensors) from a Lichess puzzle CSV.

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
    check_file(path)
    rows = Rows(path, on_error)
    candidates: Iterator[_Row] | list[_Row] = _rows(path, rows, min_rating, max_rating)
    if shuffle_seed is not None:
        candidates = list(candidates)
        random.Random(shuffle_seed).shuffle(candidates)
    examples: list[_Example] = []
    kept: list[tuple[_Row, str, str]] = []  # row, setup move, solution move
    for row in candidates:
        if limit is not None and len(examples) >= limit:
            break
        parsed = _parse_row(row, rows)
        if parsed is not None:
            examples.append(parsed[0])
            kept.append((row, parsed[1], parsed[2]))
    rows.summary.loaded = len(examples)
    summary = rows.finish()
    x, y = _tensors(examples)
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
) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, ChessMeta]:
    """``n`` random legal positions, white to move, with exactly one mating move (checked with
    python-chess), encoded like :func:`load_lichess`. The piece count, kings included, is drawn
    uniformly from ``pieces`` (inclusive): more pieces, more distractions. Deterministic in
    ``(seed, stream, pieces)``; about 10-50 positions/s on one core."""
    check_count(n)
    low, high = pieces
    if not (isinstance(low, int) and isinstance(high, int) and 3 <= low <= high <= 32):
        raise ConfigError(f"pieces must be (low, high) with 3 <= low <= high <= 32, got {pieces!r}")
    rng = random.Random(f"mate-in-one/{seed}/{stream}/{low}-{high}")
    examples: list[_Example] = []
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
        examples.append(_example(board, move))
        fens.append(board.fen())
        moves.append(move.uci())
    x, y = _tensors(examples)
    if not return_meta:
        return x, y
    meta = ChessMeta(
        ids=[f"mate1-{seed}-{stream}-{i}" for i in range(n)],
        puzzle_fens=fens,
        setup_moves=[""] * n,
        moves=moves,
        ratings=torch.zeros(n, dtype=torch.long),
        lines=[0] * n,
    )
    return x, y, meta


