"""Chess baselines: what a chess accuracy is worth next to moves that need no model.

Two move pickers, seeded and deterministic:

* :func:`random_move`: a uniformly random legal move;
* :func:`greedy_move`: a one-ply greedy move: a mate in one if there is one, else a capture of
  the most valuable piece that can be captured, else a uniformly random legal move (ties are
  broken uniformly at random).

Moves that differ only in the promotion piece count once (the metrics score squares, not the
promotion piece), and the queen promotion stands for them.

:func:`score_baselines` scores both on a batch of the task's examples ``(x, y)`` by the task's
own metrics (:func:`deqloop.tasks.chess.correct`, the paper's top-2-squares metric, and
:func:`deqloop.tasks.chess.correct_legal`): each chosen move becomes the output tensor a model
would give (:func:`move_outputs`), so a baseline and a model are scored by the same code. With
``exact=True`` (the default) the expectation over the pickers' random choices is computed
exactly, by scoring every move a picker could choose and averaging, so the figures carry no
sampling noise. Positions are decoded from ``x``, as the model sees them: castling and
en-passant rights are not encoded, so neither a baseline nor ``correct_legal`` on ``x`` can play
such a move.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from deqloop.extras import require

require("chess", "the chess baselines")
import chess  # noqa: E402
import torch
from torch import Tensor

from deqloop.errors import ConfigError
from deqloop.tasks.chess import correct, correct_legal
from deqloop.tasks.chess_data import GRID, decode

__all__ = ["METRICS", "PICKERS", "PIECE_VALUES", "as_board", "candidates", "greedy_candidates", "greedy_move",
           "move_outputs", "random_candidates", "random_move", "score_baselines", "score_moves"]

PIECE_VALUES = {chess.PAWN: 1, chess.KNIGHT: 3, chess.BISHOP: 3, chess.ROOK: 5, chess.QUEEN: 9, chess.KING: 100}
"""The value of a captured piece for :func:`greedy_move` (a king is never captured in legal chess)."""

METRICS = ("correct", "correct_legal")


def as_board(position: str | chess.Board | Tensor) -> chess.Board:
    """A python-chess board (a copy) from a FEN, a board, or one ``(8, 8)`` encoding (decoded
    with the side to move as white, without castling or en-passant rights)."""
    if isinstance(position, chess.Board):
        return position.copy(stack=False)
    if isinstance(position, str):
        try:
            return chess.Board(position)
        except ValueError as err:
            raise ConfigError(f"not a FEN: {position!r} ({err})") from None
    if isinstance(position, Tensor):
        return decode(position)
    raise ConfigError(f"a position is a FEN, a chess.Board or an (8, 8) tensor, not {type(position).__name__}")


def _distinct(moves: Sequence[chess.Move]) -> list[chess.Move]:
    """One move per (from, to) pair, the highest promotion kept, sorted by (from, to)."""
    best: dict[tuple[int, int], chess.Move] = {}
    for m in moves:
        key = (m.from_square, m.to_square)
        if key not in best or (m.promotion or 0) > (best[key].promotion or 0):
            best[key] = m
    return [best[k] for k in sorted(best)]


def random_candidates(board: chess.Board) -> list[chess.Move]:
    """The moves :func:`random_move` picks among: every legal move, one per (from, to) pair."""
    return _distinct(list(board.legal_moves))


def greedy_candidates(board: chess.Board) -> list[chess.Move]:
    """The moves :func:`greedy_move` picks among: the mates in one if any, else the captures of
    the most valuable capturable piece, else every legal move (one per (from, to) pair)."""
    legal = random_candidates(board)
    mates = []
    for m in legal:
        if board.gives_check(m):
            board.push(m)
            if board.is_checkmate():
                mates.append(m)
            board.pop()
    if mates:
        return mates
    values = {}
    for m in legal:
        if board.is_capture(m):
            piece = chess.PAWN if board.is_en_passant(m) else board.piece_type_at(m.to_square)
            values[m] = PIECE_VALUES[piece]  # type: ignore[index]
    if values:
        top = max(values.values())
        return [m for m in legal if values.get(m) == top]
    return legal


PICKERS = {"random": random_candidates, "greedy": greedy_candidates}
"""Baseline name -> the function that lists the moves it chooses among (uniformly)."""


def candidates(name: str, board: chess.Board) -> list[chess.Move]:
    """The moves baseline ``name`` (a key of :data:`PICKERS`) chooses among on ``board``."""
    if name not in PICKERS:
        raise ConfigError(f"unknown chess baseline {name!r}; known: {', '.join(PICKERS)}")
    return PICKERS[name](board)


def _check_seed(seed: int) -> int:
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"seed must be an integer >= 0, got {seed!r}")
    return seed


def _pick(name: str, position: str | chess.Board | Tensor, key: str) -> chess.Move | None:
    """A uniform choice among baseline ``name``'s candidates, from a generator seeded by ``key``."""
    moves = candidates(name, as_board(position))
    if not moves:
        return None
    return random.Random(f"deqloop/chess-baseline/{name}/{key}").choice(moves)


def random_move(position: str | chess.Board | Tensor, seed: int = 0) -> chess.Move | None:
    """A uniformly random legal move (``None`` when there is none), deterministic in ``seed``."""
    return _pick("random", position, str(_check_seed(seed)))


def greedy_move(position: str | chess.Board | Tensor, seed: int = 0) -> chess.Move | None:
    """A mate in one if any, else a capture of the most valuable piece, else a random legal move
    (``None`` when there is none); ties broken at random, deterministic in ``seed``."""
    return _pick("greedy", position, str(_check_seed(seed)))


def move_outputs(moves: Sequence[chess.Move | None]) -> Tensor:
    """Logits ``(n, 8, 8, 2)`` a model would give for ``moves``: class 1 scores 1 on the move's
    from- and to-square and 0 elsewhere, class 0 scores 0. Squares are in the board's own
    orientation (decoded examples: the side to move's perspective, as ``y``)."""
    out = torch.zeros(len(moves), 64, 2)
    for i, m in enumerate(moves):
        if m is None or not m:
            raise ConfigError(f"example {i}: no move to score (the position has no legal move)")
        out[i, [m.from_square, m.to_square], 1] = 1.0
    return out.view(len(moves), *GRID, 2)


def score_moves(moves: Sequence[chess.Move | None], x: Tensor, y: Tensor) -> dict[str, Tensor]:
    """``{metric: (n,) bool}``: each move of ``moves`` (one per example of ``x``, ``y``) scored by
    the task's metrics, exactly as a model's output would be."""
    _check_batch(x, y)
    if len(moves) != len(y):
        raise ConfigError(f"got {len(moves)} moves for {len(y)} examples")
    out = move_outputs(moves)
    return {"correct": correct(out, y, x), "correct_legal": correct_legal(out, y, x)}


def _check_batch(x: Tensor, y: Tensor) -> None:
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise ConfigError("x and y must be torch tensors")
    if x.dim() != 3 or x.shape[1:] != GRID or x.shape != y.shape:
        raise ConfigError(f"x and y must both be (n, 8, 8); got {tuple(x.shape)} and {tuple(y.shape)}")


def score_baselines(x: Tensor, y: Tensor, *, exact: bool = True, seed: int = 0,
                    names: Sequence[str] = tuple(PICKERS)) -> dict[str, float]:
    """``{"<baseline>/<metric>": accuracy}`` of each baseline in ``names`` on the examples
    ``(x, y)`` of the chess task, under :data:`METRICS`.

    ``exact``: the expected accuracy over the baseline's random choices (every candidate move
    scored, averaged per example, then over examples). Otherwise one sampled move per example,
    example ``i`` seeded by ``(seed, i)``.
    """
    _check_batch(x, y)
    _check_seed(seed)
    if len(x) == 0:
        raise ConfigError("no examples to score the chess baselines on")
    boards = [decode(b) for b in x]
    result: dict[str, float] = {}
    for name in names:
        if exact:
            rows, owner = [], []
            for i, board in enumerate(boards):
                moves = candidates(name, board)
                if not moves:
                    raise ConfigError(f"example {i}: the position has no legal move")
                rows += moves
                owner += [i] * len(moves)
            index = torch.tensor(owner)
            scores = score_moves(rows, x[index], y[index])
            count = torch.bincount(index, minlength=len(x)).double()
            for metric in METRICS:
                per_example = torch.zeros(len(x), dtype=torch.float64).index_add_(0, index, scores[metric].double())
                result[f"{name}/{metric}"] = float((per_example / count).mean())
        else:
            moves = [_pick(name, board, f"{seed}/{i}") for i, board in enumerate(boards)]
            scores = score_moves(moves, x, y)
            for metric in METRICS:
                result[f"{name}/{metric}"] = float(scores[metric].double().mean())
    return result

