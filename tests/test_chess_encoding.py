"""The chess encodings against hand-placed boards: the paper's (black to move rotated by 180° with
the colours swapped, then mirrored so the mover's king is on files e–h) and the earlier rank flip;
the top-2 metric by the class-1 logit; moves decoded back to the real board."""

from __future__ import annotations

import chess
import pytest
import torch

from deqloop.errors import ConfigError
from deqloop.tasks import chess as tc
from deqloop.tasks import get_task
from deqloop.train.config import upgrade_stored

# Back-rank mates, one per (side to move, king's file): the mover's king on g or b, rook, three pawns.
WHITE_KING_G = ("6k1/8/8/8/8/8/5PPP/R5K1 w - - 0 1", "a1a8")
WHITE_KING_B = ("1k6/8/8/8/8/8/PPP5/1K5R w - - 0 1", "h1h8")
BLACK_KING_G = ("r5k1/5ppp/8/8/8/8/8/6K1 b - - 0 1", "a8a1")
BLACK_KING_B = ("1k5r/ppp5/8/8/8/8/8/1K6 b - - 0 1", "h8h1")
POSITIONS = (WHITE_KING_G, WHITE_KING_B, BLACK_KING_G, BLACK_KING_B)


def board_of(rows: dict[tuple[int, int], int]) -> torch.Tensor:
    x = torch.zeros(8, 8, dtype=torch.long)
    for (rank, file), token in rows.items():
        x[rank, file] = token
    return x


# In the paper's frame all four are the same board: the mover's king on g1 (token 6), its rook on a1
# (4), its pawns on f2 g2 h2 (1), the opponent's king on g8 (12); the move a1 → a8.
CANONICAL = board_of({(0, 6): 6, (0, 0): 4, (1, 5): 1, (1, 6): 1, (1, 7): 1, (7, 6): 12})
TARGET = board_of({(0, 0): 1, (7, 0): 1})


@pytest.mark.parametrize("fen, uci", POSITIONS, ids=["white-g", "white-b", "black-g", "black-b"])
def test_the_papers_encoding_puts_the_movers_king_on_files_e_to_h(fen, uci):
    board, move = chess.Board(fen), chess.Move.from_uci(uci)
    x, y = tc.encode(board, move)
    assert torch.equal(x, CANONICAL) and torch.equal(y, TARGET)
    squares = torch.nonzero(y.flatten()).flatten().tolist()
    assert tc.decode_move(board, squares) == move  # back on the real board: the puzzle's move
    logits = torch.stack([torch.zeros(8, 8), y.float()], dim=-1)[None]
    assert tc.predicted_moves(logits, [fen]) == [uci]


def test_the_papers_frame_masks_by_hand():
    # white, king on g: nothing; white, king on b: mirror files (7); black, king on g8: rotated
    # to b1, so mirrored too (63 ^ 7 = 56); black, king on b8: rotated to g1 (63)
    assert [tc.frame_mask(chess.Board(f)) for f, _ in POSITIONS] == [0, 7, 56, 63]
    assert [tc.frame_mask(chess.Board(f), "rank_flip") for f, _ in POSITIONS] == [0, 0, 56, 56]


def test_the_rank_flip_encoding_keeps_the_files():
    x, y = tc.encode(*(chess.Board(BLACK_KING_B[0]), chess.Move.from_uci(BLACK_KING_B[1])), encoding="rank_flip")
    # ranks flipped, colours swapped: king b1, rook h1, pawns a2 b2 c2, the opponent's king b8; h1 → h8
    assert torch.equal(x, board_of({(0, 1): 6, (0, 7): 4, (1, 0): 1, (1, 1): 1, (1, 2): 1, (7, 1): 12}))
    assert torch.equal(y, board_of({(0, 7): 1, (7, 7): 1}))
    assert tc.decode_move(chess.Board(BLACK_KING_B[0]), [7, 63], "rank_flip") == chess.Move.from_uci("h8h1")
    with pytest.raises(ConfigError, match="unknown encoding 'mirror'"):
        tc.encode(chess.Board(), encoding="mirror")


def test_decode_move_of_a_wrong_prediction_is_none():
    board = chess.Board(WHITE_KING_G[0])
    assert tc.decode_move(board, [0, 9]) is None  # a1 → b2: the rook cannot go there
    assert tc.decode_move(board, [62, 63]) is None  # g8, h8: no piece of the side to move


def test_top_two_by_the_class_1_logit_not_the_margin():
    y = TARGET[None]
    # the target squares have class-1 logits 5 and 4 but class-0 logits 10 (margins −5, −6); square
    # h8 has class-1 logit 1, class-0 logit −10 (margin 11): the paper's top 2 are the target pair
    logits = torch.zeros(1, 8, 8, 2)
    logits[0, 0, 0] = torch.tensor([10.0, 5.0])
    logits[0, 7, 0] = torch.tensor([10.0, 4.0])
    logits[0, 7, 7] = torch.tensor([-10.0, 1.0])
    assert tc.correct(logits, y).tolist() == [True]
    assert tc.correct(logits, y, scores="margin").tolist() == [False]
    assert tc.square_scores(logits)[0, [0, 56, 63]].tolist() == [5.0, 4.0, 1.0]
    task = get_task("chess")
    assert (task.encoding, task.scores) == ("paper", "class1")
    assert get_task("chess", scores="margin").correct(logits, y).tolist() == [False]


def test_correct_legal_reads_real_positions_in_either_frame():
    for encoding in tc.ENCODINGS:
        fens = [f for f, _ in POSITIONS]
        pairs = [tc.encode(chess.Board(f), chess.Move.from_uci(m), encoding) for f, m in POSITIONS]
        x, y = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
        logits = torch.stack([torch.zeros_like(y, dtype=torch.float), y.float()], dim=-1)
        assert tc.correct_legal(logits, y, fens=fens, encoding=encoding).all()
        assert tc.correct_legal(logits, y, x).all()


def test_generated_positions_and_the_task_follow_the_encoding():
    x, y, meta = tc.generate_mate_in_one(6, (4, 6), seed=1, return_meta=True)
    assert meta.encoding == "paper"
    for i, (fen, uci) in enumerate(zip(meta.puzzle_fens, meta.moves)):
        board = chess.Board(fen)
        assert chess.square_file(board.king(chess.WHITE) ^ tc.frame_mask(board)) >= 4
        assert tc.decode_move(board, torch.nonzero(y[i].flatten()).flatten().tolist()).uci() == uci
        assert int((x[i] == 6).nonzero()[0, 1]) >= 4  # the mover's king on files e–h
    task = get_task("chess", train_pieces=(4, 6), encoding="rank_flip")
    xr, _ = task.make("train", 6, seed=1)
    assert torch.equal(xr, tc.generate_mate_in_one(6, (4, 6), seed=1, stream=0, encoding="rank_flip")[0])


def test_a_run_stored_before_the_encoding_setting_keeps_its_encoding_and_metric():
    stored = {"task": "chess", "task_options": {"train_pieces": [4, 6]}}
    assert upgrade_stored(stored)["task_options"] == {"train_pieces": [4, 6], "encoding": "rank_flip",
                                                      "scores": "margin"}
    chosen = {"task": "chess", "task_options": {"encoding": "paper"}}
    assert upgrade_stored(chosen)["task_options"] == {"encoding": "paper", "scores": "margin"}
    assert get_task("chess").settings()["encoding"] == "paper"  # what a new run stores
