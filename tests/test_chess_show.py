"""Chess examples shown for people (``Chess.show``): hand-placed positions, the mover's king on files
a–d and e–h, white and black to move, with hand-made logits; the moves shown are on the real board
(the puzzle's move, the model's right or wrong one) where the task knows the position, and on the
encoded board where it does not."""

from __future__ import annotations

from pathlib import Path

import chess
import torch

from deqloop.tasks import chess as tc
from deqloop.tasks.chess import Chess

HEADER = ",".join(tc.LICHESS_COLUMNS)
# (puzzle id, FEN before the setup move, setup move, solution, a legal wrong move, the position after the
# setup move, its frame mask written out: 0 none, 7 files mirrored, 56 ranks flipped (rotation then mirror),
# 63 rotated)
PUZZLES = (
    ("wKg", "7k/5ppp/8/8/8/8/5PPP/R5K1 b - - 0 1", "h8g8", "a1a8", "a1a5",
     "6k1/5ppp/8/8/8/8/5PPP/R5K1 w - - 1 2"),  # white to move, king g1
    ("wKb", "1k6/8/1K6/8/8/8/7Q/8 b - - 0 1", "b8a8", "h2h8", "h2d6",
     "k7/8/1K6/8/8/8/7Q/8 w - - 1 2"),  # white to move, king b6: mirrored
    ("bKg", "6k1/8/8/8/8/8/r7/6K1 w - - 0 1", "g1h1", "a2a1", "a2a6",
     "6k1/8/8/8/8/8/r7/7K b - - 1 1"),  # black to move, king g8: rotated to b1, then mirrored
    ("bKb", "1k6/8/8/7q/8/8/8/3K4 w - - 0 1", "d1c1", "h5e2", "h5h2",
     "1k6/8/8/7q/8/8/8/2K5 b - - 1 1"),  # black to move, king b8: rotated to g1
)
# The same moves in the encoded frame, squares written out by hand (from, to): the solution's, the wrong one's.
CANONICAL = {
    "wKg": (("a1", "a8"), ("a1", "a5")),  # no change
    "wKb": (("a2", "a8"), ("a2", "e6")),  # h2 h8 d6 mirrored: a2 a8 e6
    "bKg": (("a7", "a8"), ("a7", "a3")),  # a2 a1 a6 with the ranks flipped: a7 a8 a3
    "bKb": (("a4", "d7"), ("a4", "a7")),  # h5 e2 h2 rotated: a4 d7 a7
}


def lichess_file(tmp_path: Path) -> Path:
    rows = [f"{pid},{fen},{setup} {move},1500,80,90,100,mate,https://lichess.org/x,"
            for pid, fen, setup, move, _, _ in PUZZLES]
    path = tmp_path / "puzzles.csv"
    path.write_text("\n".join([HEADER, *rows]) + "\n")
    return path


def logits_for(pairs: list[tuple[str, str]]) -> torch.Tensor:
    """``(n, 8, 8, 2)``: class-1 logit 5 on the first square, 4 on the second, 0 elsewhere; class 0
    is 9 everywhere, so a margin would rank nothing above zero (the paper's scores are class 1)."""
    out = torch.zeros(len(pairs), 8, 8, 2)
    out[..., 0] = 9.0
    for i, (first, second) in enumerate(pairs):
        for name, value in ((first, 5.0), (second, 4.0)):
            square = chess.parse_square(name)
            out[i, square // 8, square % 8, 1] = value
    return out


def examples(tmp_path: Path) -> tuple[Chess, torch.Tensor, torch.Tensor]:
    path = lichess_file(tmp_path)
    x, y = tc.load_lichess(path)
    return Chess(data=(str(path),)), x, y


def test_the_encoded_targets_are_the_squares_written_by_hand(tmp_path):
    _, x, y = examples(tmp_path)
    for i, (pid, *_rest) in enumerate(PUZZLES):
        marked = {chess.square_name(s) for s in torch.nonzero(y[i].flatten()).flatten().tolist()}
        assert marked == set(CANONICAL[pid][0]), pid


def test_right_and_wrong_predictions_are_shown_on_the_real_board(tmp_path):
    task, x, y = examples(tmp_path)
    right = task.show(x, y, logits_for([CANONICAL[p[0]][0] for p in PUZZLES]))
    assert right == [{"fen": after, "puzzle": pid, "move": move, "predicted": move,
                      "predicted_squares": f"{move[:2]} {move[2:]}", "correct": "yes"}
                     for pid, _, _, move, _, after in PUZZLES]
    wrong = task.show(x, y, logits_for([CANONICAL[p[0]][1] for p in PUZZLES]))
    assert wrong == [{"fen": after, "puzzle": pid, "move": move, "predicted": miss,
                      "predicted_squares": f"{miss[:2]} {miss[2:]}", "correct": "no"}
                     for pid, _, _, move, miss, after in PUZZLES]
    # the two squares in the other order name the same move; squares that make no move are "illegal"
    swapped = task.show(x[:1], y[:1], logits_for([("a8", "a1")]))[0]
    assert (swapped["predicted"], swapped["predicted_squares"], swapped["correct"]) == ("a1a8", "a8 a1", "yes")
    illegal = task.show(x[1:2], y[1:2], logits_for([("a2", "b1")]))[0]  # mirrored: a2 b1 are h2 g1
    assert (illegal["move"], illegal["predicted"], illegal["predicted_squares"]) == ("h2h8", "h2g1", "h2 g1")
    nothing = task.show(x[1:2], y[1:2], logits_for([("a2", "c3")]))[0]  # h2 → f3: not a queen's move
    assert (nothing["predicted"], nothing["predicted_squares"], nothing["correct"]) == ("illegal", "h2 f3", "no")


def test_positions_the_task_does_not_know_are_shown_as_encoded(tmp_path):
    _, x, y = examples(tmp_path)
    task = Chess()  # generates its positions: these four are not among them
    rows = task.show(x[2:], y[2:], logits_for([CANONICAL["bKg"][0], CANONICAL["bKb"][1]]))
    # black to move, seen from black's side as white: rook a7, king g1, the opponent's king h8 (rotated,
    # then mirrored) and queen a4, king g1, the opponent's king f8 (rotated)
    assert rows == [
        {"canonical_fen": "7k/R7/8/8/8/8/8/6K1 w - - 0 1", "move": "a7a8", "predicted": "a7a8",
         "predicted_squares": "a7 a8", "correct": "yes"},
        {"canonical_fen": "5k2/8/8/8/Q7/8/8/6K1 w - - 0 1", "move": "a4d7", "predicted": "a4a7",
         "predicted_squares": "a4 a7", "correct": "no"},
    ]


def test_generated_positions_show_their_real_board():
    task = Chess(hard_pieces=(4, 5))
    x, y = task.make("hard", 3, seed=11)
    _, _, meta = tc.generate_mate_in_one(3, (4, 5), 11, stream=2, return_meta=True)
    rows = task.show(x, y, torch.stack([torch.zeros(3, 8, 8), y.float()], dim=-1))
    assert [r["fen"] for r in rows] == meta.fens and [r["puzzle"] for r in rows] == meta.ids
    assert [r["move"] for r in rows] == [r["predicted"] for r in rows] == meta.moves
    assert all(r["correct"] == "yes" for r in rows)


class Scripted(torch.nn.Module):
    """A stand-in model whose readout is a fixed logit tensor per board (its state never changes)."""

    def __init__(self, x: torch.Tensor, logits: torch.Tensor):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # the device the evaluation reads
        self.table = {tuple(b.flatten().tolist()): out for b, out in zip(x, logits)}

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.table[tuple(b.flatten().tolist())] for b in x])  # (B, 8, 8, 2)

    def initial_state(self, e: torch.Tensor) -> torch.Tensor:
        return e

    def iterates(self, z: torch.Tensor, e: torch.Tensor, steps: int):
        for _ in range(steps):
            yield e

    def readout(self, z: torch.Tensor) -> torch.Tensor:
        return z


def test_the_evaluation_report_shows_the_hard_puzzles_moves(tmp_path):
    from deqloop.eval.evaluate import evaluate_model

    task, x, y = examples(tmp_path)
    # the model: right on the white positions, a wrong legal move on the black ones
    pairs = [CANONICAL["wKg"][0], CANONICAL["wKb"][0], CANONICAL["bKg"][1], CANONICAL["bKb"][1]]
    model = Scripted(x, logits_for(pairs))
    report = evaluate_model(model, {"val": (x[:2], y[:2]), "hard": (x, y)}, task, iters=[1, 500], cells=False,
                            baselines=False, examples=3)
    rows = [
        {"fen": "6k1/5ppp/8/8/8/8/5PPP/R5K1 w - - 1 2", "puzzle": "wKg", "move": "a1a8", "predicted": "a1a8",
         "predicted_squares": "a1 a8", "correct": "yes"},
        {"fen": "k7/8/1K6/8/8/8/7Q/8 w - - 1 2", "puzzle": "wKb", "move": "h2h8", "predicted": "h2h8",
         "predicted_squares": "h2 h8", "correct": "yes"},
        {"fen": "6k1/8/8/8/8/8/r7/7K b - - 1 1", "puzzle": "bKg", "move": "a2a1", "predicted": "a2a6",
         "predicted_squares": "a2 a6", "correct": "no"},
    ]
    assert report.curves.curves["hard"] == [0.5, 0.5]
    assert report.examples == {"split": "hard", "iterations": 500, "rows": rows}
    assert report.to_dict()["examples"]["rows"] == rows
    text = report.text().split("\n")
    at = text.index("examples of hard after 500 iterations (the model's answer as the task shows it):")
    assert text[at + 3] == ("  3. fen 6k1/8/8/8/8/8/r7/7K b - - 1 1; puzzle bKg; move a2a1; predicted a2a6; "
                            "predicted_squares a2 a6; correct no")
