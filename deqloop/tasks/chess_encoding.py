"""Chess boards as the model sees them: the side to move's frame, the tokens and the target.

``x`` is ``(8, 8)`` tokens indexed ``[rank, file]`` of the *canonical* board (``a1`` is
``[0, 0]``; square ``s`` of python-chess is ``[s // 8, s % 8]``):

    0 empty, 1-6 the side to move's pawn, knight, bishop, rook, queen, king,
    7-12 the opponent's, in the same order.                                  vocab_size = 13

``y`` is ``(8, 8)`` with 1 on the solution's from- and to-square in the same frame, 0 elsewhere
(``num_classes = 2``). Castling and en-passant rights are not encoded.

The canonical board is the real one seen from the side to move, which always plays "white" up
the board. Every frame change is a reflection of the square index, ``s ↦ s ^ mask``
(:func:`frame_mask`): ``56`` flips the ranks, ``7`` the files, ``63`` rotates by 180°. Two
encodings (:data:`ENCODINGS`):

* ``"paper"`` (the default, the paper's; ``deepthinking/utils/chess_data.py:69-86`` of the
  authors' code): black to move → the board rotated by 180° and the colours swapped; then, when
  the side to move's king stands on files a–d of that board, mirrored left–right, so its king is
  always on files e–h.
* ``"rank_flip"`` (deqloop's earlier encoding, which runs stored before the setting existed
  used): black to move → the ranks flipped and the colours swapped; no king mirror.

The mask is its own inverse: a canonical square ``c`` is the real square ``c ^ mask``
(:func:`decode_move` turns a predicted or target pair back into the real board's move).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from deqloop.extras import require

require("chess", "the chess task")
import chess  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from deqloop.errors import ConfigError
from deqloop.validate import choice

__all__ = ["ENCODINGS", "GRID", "NUM_CLASSES", "VOCAB_SIZE", "decode", "decode_move", "encode", "frame_mask", "move_between"]

VOCAB_SIZE = 13
NUM_CLASSES = 2
GRID = (8, 8)
ENCODINGS: tuple[str, ...] = ("paper", "rank_flip")
"""The board encodings; ``"paper"`` is the default (see the module docstring)."""

ROTATE, FLIP_RANKS, MIRROR_FILES = 63, 56, 7  # s ^ mask: 180° rotation, rank flip, left-right mirror
_COLOURS = (chess.WHITE, chess.BLACK)
_PIECE_TYPES = (chess.PAWN, chess.KNIGHT, chess.BISHOP, chess.ROOK, chess.QUEEN, chess.KING)
_TOKEN = np.arange(1, 13, dtype=np.int64)  # plane k (white pieces, then black) -> token k + 1
_SWAP_COLOURS = np.array([0, *range(7, 13), *range(1, 7)], dtype=np.int64)
_SHIFTS = np.arange(64, dtype=np.uint64)
_SQUARES = np.arange(64, dtype=np.int64)


def frame_mask(board: chess.Board, encoding: str = "paper") -> int:
    """The reflection ``s ↦ s ^ mask`` from ``board``'s squares to the canonical frame (and back).

    ``"paper"``: ``63`` (rotation) for black to move, else ``0``; then ``^ 7`` (mirror) when the
    side to move's king lands on files a–d (``file < 4``) — the authors test the king's column
    after the rotation (``chess_data.py:81-85``). ``"rank_flip"``: ``56`` for black to move, else 0.
    """
    choice("encoding", encoding, ENCODINGS)
    black = board.turn == chess.BLACK
    if encoding == "rank_flip":
        return FLIP_RANKS if black else 0
    mask = ROTATE if black else 0
    king = board.king(board.turn)
    if king is not None and chess.square_file(king ^ mask) < 4:
        mask ^= MIRROR_FILES
    return mask


@dataclass(frozen=True)
class Example:
    """One position and move, in real squares, with the frame it is encoded in."""

    planes: tuple[int, ...]  # 12 bitboards: white P N B R Q K, then black
    black_to_move: bool
    mask: int  # frame_mask of the position
    from_square: int
    to_square: int


def example(board: chess.Board, move: chess.Move, encoding: str = "paper") -> Example:
    planes = tuple(board.pieces_mask(t, c) for c in _COLOURS for t in _PIECE_TYPES)
    return Example(planes, board.turn == chess.BLACK, frame_mask(board, encoding), move.from_square, move.to_square)


def tensors(examples: Sequence[Example]) -> tuple[Tensor, Tensor]:
    """Encode a batch at once: ``x`` and ``y`` of shape ``(n, 8, 8)``."""
    n = len(examples)
    planes = np.array([e.planes for e in examples], dtype=np.uint64).reshape(n, 12)
    bits = ((planes[:, :, None] >> _SHIFTS) & np.uint64(1)).astype(np.int64)  # (n, 12, 64)
    real = (bits * _TOKEN[None, :, None]).sum(axis=1)  # (n, 64): token on each real square
    masks = np.array([e.mask for e in examples], dtype=np.int64).reshape(n, 1)
    tokens = np.take_along_axis(real, _SQUARES[None, :] ^ masks, axis=1)  # canonical c shows real c ^ mask
    black = np.array([e.black_to_move for e in examples], dtype=bool)
    tokens[black] = _SWAP_COLOURS[tokens[black]]
    squares = np.array([[e.from_square, e.to_square] for e in examples], dtype=np.int64).reshape(n, 2) ^ masks
    target = np.zeros((n, 64), dtype=np.int64)
    np.put_along_axis(target, squares, 1, axis=1)
    return torch.from_numpy(tokens.reshape(n, 8, 8)), torch.from_numpy(target.reshape(n, 8, 8))


def encode(board: chess.Board, move: chess.Move | None = None, encoding: str = "paper") -> tuple[Tensor, Tensor]:
    """One position (and move) as ``x``, ``y`` of shape ``(8, 8)``; ``y`` is zeros without a move."""
    x, y = tensors([example(board, move or chess.Move.null(), encoding)])
    return x[0], (y[0] if move else torch.zeros_like(y[0]))


def decode(x: Tensor) -> chess.Board:
    """The canonical board an ``(8, 8)`` encoding shows, the side to move as white, to move, with
    no castling or en-passant rights (the encoding does not keep them)."""
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


def decode_move(board: chess.Board, squares: Sequence[int], encoding: str = "paper") -> chess.Move | None:
    """The move of the real ``board`` that two canonical squares (a target's or a prediction's
    marked pair, in either order) stand for: the square holding a piece of the side to move is
    the from-square. ``None`` when the pair is not a legal move there (a wrong prediction); a
    pawn reaching the last rank promotes to a queen."""
    if len(squares) != 2:
        raise ConfigError(f"decode_move takes two squares, got {list(squares)}")
    mask = frame_mask(board, encoding)
    return move_between(board, [int(s) ^ mask for s in squares])


def move_between(board: chess.Board, real: Sequence[int]) -> chess.Move | None:
    """The legal move of ``board`` between two of its own squares, in either order (the one holding
    a piece of the side to move is the from-square); ``None`` when there is none. A pawn reaching
    the last rank promotes to a queen."""
    start = [s for s in real if board.color_at(s) == board.turn]
    if len(start) != 1:
        return None
    end = real[1] if real[0] == start[0] else real[0]
    moves = [m for m in board.legal_moves if (m.from_square, m.to_square) == (start[0], end)]
    return next((m for m in moves if m.promotion in (None, chess.QUEEN)), None)
