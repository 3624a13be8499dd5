"""Chess baselines: hand-checked positions, exact expectations, and scoring by the task's metrics."""

from __future__ import annotations

import chess
import pytest
import torch

from deqloop.errors import ConfigError
from deqloop.tasks import chess as tc
from deqloop.tasks.chess_baselines import (
    as_board,
    greedy_candidates,
    greedy_move,
    move_outputs,
    random_candidates,
    random_move,
    score_baselines,
    score_moves,
)

# Back-rank mate Ra8#; a black queen on h5 can be taken by Nxh5, but the mate comes first.
MATE_FEN = "6k1/5ppp/8/7q/8/6N1/8/R5K1 w - - 0 1"
# The knight on f3 can take a pawn (e5), a rook (g5) or the queen (d4): greedy takes the queen.
CAPTURE_FEN = "k7/8/8/4p1r1/3q4/5N2/8/7K w - - 0 1"
# Black to move (the encoding mirrors it): ...Nxd5 takes the white queen.
BLACK_CAPTURE_FEN = "7k/8/r7/3Q4/8/4n3/8/1K6 b - - 0 1"


def batch(*pairs: tuple[str, str]) -> tuple[torch.Tensor, torch.Tensor]:
    """``x``, ``y`` of the task for (FEN, solution UCI) pairs, as the task encodes them."""
    xs, ys = [], []
    for fen, uci in pairs:
        board = chess.Board(fen)
        x, y = tc.encode(board, chess.Move.from_uci(uci))
        xs.append(x)
        ys.append(y)
    return torch.stack(xs), torch.stack(ys)


def test_greedy_plays_the_mate_in_one_before_a_queen_capture():
    board = chess.Board(MATE_FEN)
    assert any(board.is_capture(m) and board.piece_type_at(m.to_square) == chess.QUEEN for m in board.legal_moves)
    assert [m.uci() for m in greedy_candidates(board)] == ["a1a8"]
    assert {greedy_move(MATE_FEN, seed=s).uci() for s in range(10)} == {"a1a8"}
    x, y = batch((MATE_FEN, "a1a8"))
    scores = score_baselines(x, y)
    assert scores["greedy/correct"] == scores["greedy/correct_legal"] == 1.0
    assert scores["random/correct"] == pytest.approx(1 / 21)  # 21 legal moves, one of them the mate


def test_greedy_captures_the_most_valuable_piece():
    board = chess.Board(CAPTURE_FEN)
    captures = {board.piece_type_at(m.to_square) for m in board.legal_moves if board.is_capture(m)}
    assert captures == {chess.PAWN, chess.ROOK, chess.QUEEN}
    assert [m.uci() for m in greedy_candidates(board)] == ["f3d4"]
    assert greedy_move(board, seed=7) == chess.Move.from_uci("f3d4")
    x, y = batch((CAPTURE_FEN, "f3d4"), (CAPTURE_FEN, "f3g5"))
    scores = score_baselines(x, y)
    assert scores["greedy/correct"] == scores["greedy/correct_legal"] == 0.5
    assert scores["random/correct"] == scores["random/correct_legal"] == pytest.approx(1 / 9)


def test_black_to_move_is_scored_in_the_mirrored_encoding():
    assert greedy_move(BLACK_CAPTURE_FEN).uci() == "e3d5"
    x, y = batch((BLACK_CAPTURE_FEN, "e3d5"))
    assert score_baselines(x, y, names=("greedy",)) == {"greedy/correct": 1.0, "greedy/correct_legal": 1.0}


def test_without_captures_greedy_is_a_seeded_random_legal_move():
    board = chess.Board()  # the start: 20 legal moves, no capture, no mate
    assert greedy_candidates(board) == random_candidates(board) and len(random_candidates(board)) == 20
    legal = set(board.legal_moves)
    picks = [greedy_move(board, seed=s) for s in range(30)]
    assert all(m in legal for m in picks) and len(set(picks)) > 5
    assert picks == [greedy_move(board.fen(), seed=s) for s in range(30)]  # deterministic in the seed
    assert [random_move(board, seed=s) for s in range(5)] == [random_move(board, seed=s) for s in range(5)]
    assert board.fen() == chess.STARTING_FEN  # the pickers leave the board alone


def test_exact_random_score_is_one_over_the_legal_moves():
    x, y = batch((chess.STARTING_FEN, "g1f3"), (chess.STARTING_FEN, "e2e4"), (CAPTURE_FEN, "h1h2"))
    scores = score_baselines(x, y, names=("random",))
    assert scores["random/correct"] == scores["random/correct_legal"] == pytest.approx((1 / 20 + 1 / 20 + 1 / 9) / 3)


def test_promotions_count_once():
    board = chess.Board("8/P7/8/8/8/8/8/k1K5 w - - 0 1")  # a7a8 to four pieces, three king moves (b1 is guarded)
    assert board.legal_moves.count() == 7
    assert [m.uci() for m in random_candidates(board)] == ["c1d1", "c1c2", "c1d2", "a7a8q"]
    assert [m.uci() for m in greedy_candidates(board)] == ["a7a8q"]  # the promotion mates


def test_scoring_path_equals_the_tasks_metric_on_a_hand_made_output():
    x, y = batch((chess.STARTING_FEN, "e2e4"), (chess.STARTING_FEN, "e2e4"))
    hand = torch.zeros(2, 8, 8, 2)
    hand[0, 1, 4, 1] = hand[0, 3, 4, 1] = 1.0  # e2, e4: [rank, file]
    hand[1, 1, 3, 1] = hand[1, 3, 3, 1] = 1.0  # d2, d4
    moves = [chess.Move.from_uci("e2e4"), chess.Move.from_uci("d2d4")]
    assert torch.equal(move_outputs(moves), hand)
    got = score_moves(moves, x, y)
    assert torch.equal(got["correct"], tc.correct(hand, y, x))
    assert torch.equal(got["correct_legal"], tc.correct_legal(hand, y, x))
    assert got["correct"].tolist() == [True, False] and got["correct_legal"].tolist() == [True, False]


def test_sampled_scores_are_deterministic_and_near_the_exact_ones():
    x, y = batch(*[(chess.STARTING_FEN, "e2e4")] * 40, *[(CAPTURE_FEN, "f3d4")] * 40)
    a = score_baselines(x, y, exact=False, seed=3)
    assert a == score_baselines(x, y, exact=False, seed=3)
    assert a["greedy/correct"] >= 0.5  # the capture half is always right
    assert a["random/correct"] < 0.3


def test_clear_errors():
    with pytest.raises(ConfigError, match="FEN"):
        as_board("not a fen")
    with pytest.raises(ConfigError, match="unknown chess baseline"):
        score_baselines(*batch((chess.STARTING_FEN, "e2e4")), names=("engine",))
    with pytest.raises(ConfigError, match="seed"):
        random_move(chess.Board(), seed=-1)
    with pytest.raises(ConfigError, match=r"\(n, 8, 8\)"):
        score_baselines(torch.zeros(2, 64, dtype=torch.long), torch.zeros(2, 64, dtype=torch.long))
    with pytest.raises(ConfigError, match="no move"):
        move_outputs([None])
    assert random_move("7k/5Q2/6K1/8/8/8/8/8 b - - 0 1") is None  # stalemate


def test_the_task_reports_its_baselines():
    x, y = batch((CAPTURE_FEN, "f3d4"))
    assert tc.Chess().baselines(x, y) == score_baselines(x, y)


def test_baselines_on_shared_puzzles(shared_data):
    files = tuple(str(shared_data / "chess" / name) for name in
                  ("lichess_puzzles_rating_0000_1600.csv", "lichess_puzzles_rating_1601_2000.csv"))
    task = tc.Chess(data=files)
    x, y = task.make("hard", 64, seed=1)
    scores = task.baselines(x, y)
    assert set(scores) == {"random/correct", "random/correct_legal", "greedy/correct", "greedy/correct_legal"}
    assert 0.0 < scores["random/correct"] < 0.15 and 2 * scores["random/correct"] < scores["greedy/correct"] < 1.0
    assert scores["random/correct"] == pytest.approx(scores["random/correct_legal"])
