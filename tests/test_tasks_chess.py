"""Chess: Lichess loader, perspective encoding, metrics, mate-in-1 generator."""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

import chess
import pytest
import torch
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deqloop.errors import ConfigError
from deqloop.tasks import DataError, get_task
from deqloop.tasks import chess as tc
from deqloop.tasks.chess import Chess

HEADER = ",".join(tc.LICHESS_COLUMNS)
# Black to move after the setup move g7f6; the solution g1g8 is mate.
ROW = "0495p,7k/pp3Bqp/n4Q2/8/8/4P3/PP3P1P/4K1R1 b - - 1 27,g7f6 g1g8,399,91,100,214,endgame mate,https://lichess.org/s4KanwGx/black#54,"
EASY_FILE = "lichess_puzzles_rating_0000_1600.csv"
HARD_FILE = "lichess_puzzles_rating_1601_2000.csv"


def write(tmp_path: Path, *lines: str, name: str = "p.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def random_positions(seed: int, count: int) -> list[tuple[chess.Board, chess.Move]]:
    """Positions from random games, each with a random legal move."""
    rng = random.Random(seed)
    out = []
    board = chess.Board()
    while len(out) < count:
        moves = list(board.legal_moves)
        if not moves or board.ply() > 120:
            board = chess.Board()
            continue
        out.append((board.copy(), rng.choice(moves)))
        board.push(rng.choice(moves))
    return out


# --------------------------------------------------------------------------------------------- encoding


def test_encoding_from_the_side_to_move():
    x, y = tc.encode(chess.Board(), chess.Move.from_uci("e2e4"))
    assert x[0].tolist() == [4, 2, 3, 5, 6, 3, 2, 4] and x[1].tolist() == [1] * 8
    assert x[7].tolist() == [10, 8, 9, 11, 12, 9, 8, 10] and x[6].tolist() == [7] * 8
    assert y.sum() == 2 and y[1, 4] == 1 and y[3, 4] == 1
    assert set(y.unique().tolist()) == {0, 1} and Chess.num_classes == 2  # the paper's two classes: a move square or not
    black = chess.Board("rnbqkbnr/pppppppp/8/8/4P3/8/PPPP1PPP/RNBQKBNR b KQkq - 0 1")
    xb, yb = tc.encode(black, chess.Move.from_uci("e7e5"))
    assert xb[0].tolist() == [4, 2, 3, 5, 6, 3, 2, 4] and xb[1].tolist() == [1] * 8  # black's pieces now "own", at the bottom
    assert xb[4, 4] == 7  # white's e4 pawn seen from black: rank 5, an opponent pawn
    assert yb[1, 4] == 1 and yb[3, 4] == 1


def test_mirrored_position_and_move_encode_the_same():
    for board, move in random_positions(0, 300):
        mirrored = chess.Move(chess.square_mirror(move.from_square), chess.square_mirror(move.to_square), move.promotion)
        x, y = tc.encode(board, move)
        xm, ym = tc.encode(board.mirror(), mirrored)
        assert torch.equal(x, xm) and torch.equal(y, ym)


def paper_square(black: bool, king: int, square: int) -> int:
    """A real square in the paper's frame, written out as its loader does on (row, column): black
    to move rotates the board (both flipped), then a mover's king (on real square ``king``) on
    columns 0-3 mirrors the columns."""
    def frame(s: int) -> tuple[int, int]:
        rank, file = chess.square_rank(s), chess.square_file(s)
        return (7 - rank, 7 - file) if black else (rank, file)
    rank, file = frame(square)
    if frame(king)[1] < 4:
        file = 7 - file
    return chess.square(file, rank)


def king_square(fen: str, colour: chess.Color) -> int:
    """The square of ``colour``'s king, read off the FEN's placement field."""
    rank, file, want = 7, 0, "K" if colour == chess.WHITE else "k"
    for c in fen.split()[0]:
        if c == "/":
            rank, file = rank - 1, 0
        elif c.isdigit():
            file += int(c)
        elif c == want:
            return chess.square(file, rank)
        else:
            file += 1
    raise AssertionError(f"no king in {fen}")


@pytest.mark.parametrize("encoding", ["paper", "rank_flip"])
def test_decode_inverts_encode(encoding):
    for board, move in random_positions(1, 100):
        x, _ = tc.encode(board, move, encoding)
        decoded = tc.decode(x)
        if encoding == "paper":
            black, king = board.turn == chess.BLACK, board.king(board.turn)
            seen = {paper_square(black, king, s): chess.Piece(p.piece_type, p.color == board.turn)
                    for s, p in board.piece_map().items()}
            assert decoded.piece_map() == seen and decoded.turn == chess.WHITE
        else:
            seen = board if board.turn == chess.WHITE else board.mirror()
            assert decoded.board_fen() == seen.board_fen() and decoded.turn == chess.WHITE
    with pytest.raises(ValueError, match="not in 0-12"):
        tc.decode(torch.full((8, 8), 13))


# --------------------------------------------------------------------------------------------- shared data


def test_every_shared_row_encodes_and_targets_map_back_to_the_move(shared_data):
    for name in (EASY_FILE, HARD_FILE):
        path = shared_data / "chess" / name
        x, y, meta = tc.load_lichess(path, return_meta=True)
        rows = sum(1 for _ in open(path)) - 1
        assert len(x) == meta.summary.rows == meta.summary.loaded == rows and not meta.summary.skipped
        assert x.shape == y.shape == (rows, 8, 8) and (y.flatten(1).sum(1) == 2).all()
        assert int(x.max()) <= 12 and ((x == 6).flatten(1).sum(1) == 1).all() and ((x == 12).flatten(1).sum(1) == 1).all()
        squares = []
        for i, (fen, uci) in enumerate(zip(meta.puzzle_fens, meta.moves)):
            black = " w " in fen  # the setup move is white's: black solves
            king = king_square(fen, not black)  # the setup move is the opponent's: the mover's king stays
            squares.append([paper_square(black, king, chess.parse_square(uci[:2])),
                            paper_square(black, king, chess.parse_square(uci[2:4]))])
            if i % 25 == 0:  # back on the real board: the puzzle's move (every 25th row: legal moves are slow)
                board = chess.Board(fen)
                board.push_uci(meta.setup_moves[i])
                decoded = tc.decode_move(board, squares[-1])
                assert decoded is not None and decoded.uci()[:4] == uci[:4]
        expected = torch.zeros(rows, 64, dtype=torch.long).scatter_(1, torch.tensor(squares), 1)
        assert torch.equal(y.flatten(1), expected)
        assert (torch.nonzero(x == 6)[:, 2] >= 4).all()  # the mover's king on files e–h
        own = (x >= 1) & (x <= 6)
        assert ((own & (y == 1)).flatten(1).sum(1) == 1).all()  # one marked square holds the mover's piece


def test_shared_metrics_and_filters(shared_data):
    path = shared_data / "chess" / HARD_FILE
    x, y, meta = tc.load_lichess(path, min_rating=1700, max_rating=1800, limit=300, return_meta=True)
    assert len(x) == 300 and meta.ratings.min() >= 1700 and meta.ratings.max() <= 1800
    logits = torch.stack([-y.float(), y.float()], dim=-1)
    assert tc.correct(logits, y).all() and tc.correct_legal(logits, y, fens=meta.fens).all()
    for i, (fen, uci) in enumerate(zip(meta.fens, meta.moves)):  # mirror invariance on real puzzles
        board, move = chess.Board(fen), chess.Move.from_uci(uci)
        mirrored = chess.Move(chess.square_mirror(move.from_square), chess.square_mirror(move.to_square), move.promotion)
        for b, m in ((board, move), (board.mirror(), mirrored)):
            xe, ye = tc.encode(b, m)
            assert torch.equal(xe, x[i]) and torch.equal(ye, y[i])
    a = tc.load_lichess(path, limit=50, shuffle_seed=7, return_meta=True)
    b = tc.load_lichess(path, limit=50, shuffle_seed=7, return_meta=True)
    c = tc.load_lichess(path, limit=50, shuffle_seed=8, return_meta=True)
    assert a[2].ids == b[2].ids != c[2].ids and torch.equal(a[0], b[0])
    assert tc.load_lichess(path, limit=5, return_meta=True)[2].lines == [2, 3, 4, 5, 6]


def test_zst_and_headerless_files_read_the_same(shared_data, tmp_path):
    source = shared_data / "chess" / EASY_FILE
    lines = source.read_text().splitlines()[:400]
    packed = tmp_path / "puzzles.csv.zst"
    packed.write_bytes(zstandard.ZstdCompressor().compress(("\n".join(lines) + "\n").encode()))
    bare = write(tmp_path, *lines[1:], name="bare.csv")
    x, y = tc.load_lichess(source, limit=399)
    for path in (packed, bare):
        xp, yp = tc.load_lichess(path)
        assert torch.equal(x, xp) and torch.equal(y, yp)


# --------------------------------------------------------------------------------------------- metrics


def test_correct_top_two_squares():
    y = torch.zeros(2, 8, 8, dtype=torch.long)
    y[:, 0, 4] = y[:, 0, 6] = 1
    scores = torch.randn(2, 8, 8) - 5
    scores[0, 0, 4] = scores[0, 0, 6] = 3.0
    scores[1, 0, 4] = 3.0
    scores[1, 5, 5] = 2.0  # beats the to-square
    assert tc.correct(scores, y).tolist() == [True, False]
    logits = torch.stack([torch.zeros_like(scores), scores], dim=-1)
    assert tc.correct(logits, y).tolist() == [True, False]
    assert tc.correct(y, y).all() and not tc.correct(torch.zeros_like(y), y).any()
    assert tc.cell_accuracy(logits, y)[0] == 1.0
    with pytest.raises(ValueError, match="exactly two squares"):
        tc.correct(scores, torch.zeros_like(y))


def test_correct_legal_picks_the_best_legal_move():
    board = chess.Board("r3k2r/8/8/8/8/8/8/R3K2R w KQkq - 0 1")
    castle = chess.Move.from_uci("e1g1")
    x, y = tc.encode(board, castle)
    x, y = x[None], y[None]
    scores = torch.full((1, 8, 8), -5.0)
    scores[0, 0, 4] = scores[0, 0, 6] = 2.0  # e1 and g1
    assert tc.correct_legal(scores, y, fens=[board.fen()]).item()
    assert not tc.correct_legal(scores, y, x).item()  # decoded boards have no castling rights
    # illegal top pair: the rook a1 cannot reach h8 (own rook on... a8 is black's); the best legal move wins
    scores = torch.full((1, 8, 8), -5.0)
    scores[0, 0, 0] = 4.0  # a1 (rook)
    scores[0, 7, 7] = 4.0  # h8: a1h8 is not a rook move
    scores[0, 0, 6] = 1.0  # g1
    scores[0, 0, 4] = 0.5  # e1
    assert not tc.correct(scores, y).item()
    assert tc.correct_legal(scores, y, fens=[board.fen()]).item()  # e1g1 is the best legal move
    with pytest.raises(ValueError, match="x or fens"):
        tc.correct_legal(scores, y)


# --------------------------------------------------------------------------------------------- bad input

BAD_ROWS = [
    ("0495p,7k/pp3Bqp/n4Q2/8/8/4P3/PP3P1P/4K1R1 b - - 1 27,g7f6 g1g8,399", "wrong number of columns"),
    (ROW.replace("7k/pp3Bqp", "7k/pp3Bqpp"), "bad FEN"),
    (ROW.replace("7k/pp3Bqp", "7q/pp3Bqp"), "FEN is not a legal position"),
    (ROW.replace("g7f6 g1g8", "g7f6"), "too few moves"),
    (ROW.replace("g7f6 g1g8", "g7g5 g1g8"), "illegal setup move"),
    (ROW.replace("g7f6 g1g8", "g7f6 g1g9"), "unparsable solution move"),
    (ROW.replace("g7f6 g1g8", "g7f6 g1h2"), "illegal solution move"),
    (ROW.replace("g7f6 g1g8", "g7f6 0000"), "illegal solution move"),
    (ROW.replace(",399,", ",hard,"), "rating is not an integer"),
    (ROW.replace(",399,", ",99999999999999999999,"), "rating is not an integer"),
]


@pytest.mark.parametrize("row, problem", BAD_ROWS)
def test_bad_rows_name_file_line_and_problem(tmp_path, row, problem):
    path = write(tmp_path, HEADER, ROW, row, ROW)
    with pytest.raises(DataError, match=rf"p.csv:3: {problem}"):
        tc.load_lichess(path)
    x, y, meta = tc.load_lichess(path, on_error="skip", return_meta=True)
    assert len(x) == 2 and meta.lines == [2, 4] and meta.summary.skipped == {problem: 1}


def test_header_without_needed_columns_is_fatal(tmp_path):
    path = write(tmp_path, "PuzzleId,FEN,Rating", "x,8/8/8/8/8/8/8/8 w - - 0 1,100")
    with pytest.raises(DataError, match=r"p.csv:1: header lacks columns.*Moves"):
        tc.load_lichess(path, on_error="skip")


def test_header_with_reordered_columns(tmp_path):
    path = write(tmp_path, "Moves,Rating,FEN,PuzzleId", "g7f6 g1g8,399,7k/pp3Bqp/n4Q2/8/8/4P3/PP3P1P/4K1R1 b - - 1 27,0495p")
    x, y = tc.load_lichess(path)
    xq, yq = tc.load_lichess(write(tmp_path, ROW, name="q.csv"))
    assert torch.equal(x, xq) and torch.equal(y, yq) and int(y.sum()) == 2


_FIELD_PIECES = {
    1: ["7k/pp3Bqp/n4Q2/8/8/4P3/PP3P1P/4K1R1 b - - 1 27", "8/8/8/8/8/8/8/8 w - - 0 1", "rnbqkbnr/pppppppp/8/8/8/8/PPPPPPPP/RNBQKBNR w KQkq - 0 1"],
    2: ["g7f6 g1g8", "e2e4 e7e5", "g7f6", "a1a1 b2b3", "g7f6 g1g8q"],
    3: ["399", "1601", "-5", "x", ""],
}


@st.composite
def chess_rows(draw) -> str:
    if draw(st.booleans()):
        fields = ROW.split(",")
        for index, pool in _FIELD_PIECES.items():
            if draw(st.booleans()):
                fields[index] = draw(st.sampled_from(pool))
            if draw(st.integers(0, 3)) == 0:
                text = fields[index]
                i = draw(st.integers(0, max(len(text) - 1, 0)))
                fields[index] = text[:i] + draw(st.sampled_from(list("pPkK1/ 8x0,\"é"))) + text[i + 1 :]
        fields = fields[: draw(st.integers(8, 11))] + [""] * max(0, draw(st.integers(8, 11)) - 10)
        return ",".join(fields)
    return draw(st.text(max_size=120).filter(lambda t: "\n" not in t and "\r" not in t))


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(chess_rows(), min_size=20, max_size=30), header=st.booleans())
def test_fuzz_only_data_errors_escape(rows, header):
    """50 files of 20-30 generated rows each (1,000+ rows): nothing but DataError escapes."""
    text = (HEADER + "\n" if header else "") + "\n".join(rows) + "\n"
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.csv"
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
        try:
            tc.load_lichess(path)
        except DataError as error:
            assert error.path == str(path) and error.line >= 1
        try:
            x, y, meta = tc.load_lichess(path, on_error="skip", return_meta=True)
        except DataError as error:  # only a header line can be fatal
            assert error.line == 1 and error.problem == "header lacks columns"
            return
        assert len(x) == meta.summary.loaded == meta.summary.rows - meta.summary.n_skipped
        assert (y.flatten(1).sum(1) == 2).all()


def test_on_error_and_limit_are_checked(tmp_path):
    path = write(tmp_path, ROW)
    with pytest.raises(ValueError, match="'raise', 'skip'"):
        tc.load_lichess(path, on_error="ignore")
    with pytest.raises(ValueError, match="limit"):
        tc.load_lichess(path, limit=-1)
    assert tc.load_lichess(path, limit=0)[0].shape == (0, 8, 8)


# --------------------------------------------------------------------------------------------- generator and task


def test_mate_in_one_positions_have_one_mating_move():
    x, y, meta = tc.generate_mate_in_one(12, pieces=(5, 9), seed=4, return_meta=True)
    assert x.shape == y.shape == (12, 8, 8)
    for i, (fen, uci) in enumerate(zip(meta.fens, meta.moves)):
        board = chess.Board(fen)
        assert board.is_valid() and 5 <= len(board.piece_map()) <= 9
        mates = set()
        for move in board.legal_moves:
            board.push(move)
            if board.is_checkmate():
                mates.add((move.from_square, move.to_square))
            board.pop()
        move = chess.Move.from_uci(uci)
        assert mates == {(move.from_square, move.to_square)}
        assert torch.equal(tc.encode(board, move)[1], y[i])
    again = tc.generate_mate_in_one(12, pieces=(5, 9), seed=4)
    assert torch.equal(again[0], x)
    with pytest.raises(ValueError, match="pieces"):
        tc.generate_mate_in_one(1, pieces=(2, 5))


def test_task_from_shared_files_uses_the_papers_rating_split(shared_data):
    files = [shared_data / "chess" / EASY_FILE, shared_data / "chess" / HARD_FILE]
    task = get_task("chess", data=files)
    train = task.make("train", 1000, seed=0)
    val = task.make("val", 500, seed=0)
    hard = task.make("hard", 1000, seed=0)
    assert train[0].shape == (1000, 8, 8) and hard[1].shape == (1000, 8, 8)
    pairs = lambda xy: {(tuple(a.flatten().tolist()), tuple(b.flatten().tolist())) for a, b in zip(*xy)}  # noqa: E731
    assert not pairs(train) & pairs(val) and not pairs(train) & pairs(hard)
    # the split is by rating: the ratings of each encoded (position, move) in the files
    keys = lambda xy: [row.tobytes() for row in torch.cat([xy[0].flatten(1), xy[1].flatten(1)], 1).numpy()]  # noqa: E731
    ratings: dict = {}
    for path in files:  # as load_lichess reads them (the task's cached copy: no second parse)
        x, y, meta = tc._load_cached(str(path.resolve()), path.stat().st_mtime_ns, "paper")
        for key, r in zip(keys((x, y)), meta.ratings.tolist()):
            ratings.setdefault(key, set()).add(r)
    assert all(any(r <= 1600 for r in ratings[k]) for k in keys(train) + keys(val))
    assert all(any(1601 <= r <= 2000 for r in ratings[k]) for k in keys(hard))
    assert torch.equal(task.make("train", 1000, seed=0)[0], train[0])
    with pytest.raises(ValueError, match="has 7317 puzzles, 9000 requested"):
        task.make("hard", 9000)


def test_task_config_is_validated(tmp_path):
    assert Chess().data is None and Chess(data=str(write(tmp_path, ROW))).data == (str(tmp_path / "p.csv"),)
    with pytest.raises(ConfigError, match="no such file"):
        Chess(data=tmp_path / "missing.csv")
    with pytest.raises(ValueError, match="hard_max_rating"):
        Chess(hard_min_rating=2000, hard_max_rating=1000)
    with pytest.raises(ValueError, match="train_pieces"):
        Chess(train_pieces=(2, 40))


@pytest.mark.slow
def test_legal_metric_on_every_shared_row(shared_data):
    for name in (EASY_FILE, HARD_FILE):
        x, y, meta = tc.load_lichess(shared_data / "chess" / name, return_meta=True)
        logits = torch.stack([-y.float(), y.float()], dim=-1)
        assert tc.correct_legal(logits, y, fens=meta.fens).all()
        # decoded boards lose castling and en-passant rights: only those solutions can be missed
        lost = ~tc.correct_legal(logits, y, x)
        for i in torch.nonzero(lost).flatten().tolist():
            board = chess.Board(meta.fens[i])
            move = chess.Move.from_uci(meta.moves[i])
            assert board.is_castling(move) or board.is_en_passant(move), meta.lines[i]
