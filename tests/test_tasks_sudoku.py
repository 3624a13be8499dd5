"""Sudoku: the rating solver, generator, loaders, metric and augmentation."""

from __future__ import annotations

import csv
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deqloop.errors import ConfigError
from deqloop.tasks import DataError, get_task, sudoku, sudoku_data
from deqloop.tasks.sudoku import Sudoku

# A rating-0 puzzle and its solution; a 17-clue puzzle of rating 31.
SEVENTEEN = ".................1....23.4......4.3...5........67....8.3........9.1....724.5....."
EASY = "53..7....6..195....98....6.8...6...34..8.3..17...2...6.6....28....419..5....8..79"
EASY_ANSWER = "534678912672195348198342567859761423426853791713924856961537284287419635345286179"


def shared_rows(shared_data: Path, name: str, max_rating: int | None = None, limit: int = 40) -> list[dict]:
    rows = []
    with open(shared_data / "sudoku" / name) as f:
        for row in csv.DictReader(f):
            if max_rating is None or int(row["rating"]) <= max_rating:
                rows.append(row)
            if len(rows) == limit:
                break
    return rows


def grid(text: str) -> torch.Tensor:
    return torch.tensor([0 if c in ".0" else int(c) for c in text]).view(1, 9, 9)


# --------------------------------------------------------------------------------------------- solver


def test_solver_reproduces_shared_ratings_and_answers(shared_data):
    rows = shared_rows(shared_data, "sudoku17_1500.csv", max_rating=150) + shared_rows(
        shared_data, "magictour_top1465.csv", max_rating=150, limit=10
    )
    puzzles = torch.cat([grid(r["question"]) for r in rows])
    result = sudoku.solve(puzzles)
    assert result.solutions.tolist() == [1] * len(rows)
    assert result.guesses.tolist() == [int(r["rating"]) for r in rows]
    assert torch.equal(result.solution, torch.cat([grid(r["answer"]) for r in rows]))


def test_solver_counts_solutions_and_rates():
    result = sudoku.solve(grid(EASY))
    assert result.solutions.item() == 1 and result.guesses.item() == 0
    assert torch.equal(result.solution, grid(EASY_ANSWER))
    empty = torch.zeros(1, 81, dtype=torch.long)
    assert sudoku.solve(empty).solutions.item() == 2
    assert sudoku.solve(empty, max_solutions=5).solutions.item() == 5
    clash = grid(EASY).clone()
    clash[0, 0, 2] = 5  # a second 5 in the first row
    assert sudoku.solve(clash).solutions.item() == 0
    assert sudoku.rate(torch.cat([grid(EASY), clash, empty.view(1, 9, 9)])).tolist() == [0, -1, -1]
    with pytest.raises(ValueError, match="shape"):
        sudoku.solve(torch.zeros(2, 80))
    with pytest.raises(ValueError, match="digits 0-9"):
        sudoku.solve(torch.full((1, 81), 10))


# --------------------------------------------------------------------------------------------- generator


def test_easy_generation_is_rating_zero_unique_cached_and_prefix_stable(tmp_path, monkeypatch):
    x, y, meta = sudoku.generate(40, "easy", seed=3, cache_dir=tmp_path, return_meta=True)
    assert x.shape == y.shape == (40, 9, 9)
    result = sudoku.solve(x)
    assert result.solutions.tolist() == [1] * 40 and result.guesses.tolist() == [0] * 40
    assert torch.equal(result.solution, y)
    assert meta.ratings.tolist() == [0] * 40 and meta.puzzles_per_second > 0
    assert ((x == 0) | (x == y)).all() and (x == 0).sum() > 40 * 40  # many blanks
    assert len({tuple(p) for p in x.view(40, 81).tolist()}) == 40
    assert len(list((tmp_path / "sudoku").glob("*.npz"))) == 1

    def no_drawing(*args, **kwargs):
        raise AssertionError("the cached set should have been reused")

    monkeypatch.setattr(sudoku_data, "_draw_chunk", no_drawing)
    x2, y2, meta2 = sudoku.generate(10, "easy", seed=3, cache_dir=tmp_path, return_meta=True)
    assert torch.equal(x2, x[:10]) and torch.equal(y2, y[:10]) and meta2.puzzles_per_second is None


def test_generation_without_cache_is_deterministic_and_seeded(tmp_path):
    a = sudoku.generate(5, "easy", seed=1, use_cache=False)
    b = sudoku.generate(5, "easy", seed=1, use_cache=False)
    c = sudoku.generate(5, "easy", seed=2, use_cache=False)
    d = sudoku.generate(5, "easy", seed=1, stream=1, use_cache=False)
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0]) and not torch.equal(a[0], d[0])


def test_rated_band_generation_keeps_ratings_in_band(tmp_path):
    x, y, meta = sudoku.generate(20, (5, 60), seed=0, cache_dir=tmp_path, return_meta=True)
    result = sudoku.solve(x)
    assert result.solutions.tolist() == [1] * 20
    assert torch.equal(result.guesses, meta.ratings)
    assert ((meta.ratings >= 5) & (meta.ratings <= 60)).all()
    assert torch.equal(result.solution, y)


@pytest.mark.parametrize("band", ["extreme", (5, 2), (-1, None), [0, 1]])
def test_generate_rejects_unknown_bands(band):
    with pytest.raises(ValueError, match="band"):
        sudoku.generate(1, band)


@pytest.mark.slow
def test_default_hard_band(tmp_path):
    x, y, meta = sudoku.generate(30, "hard", seed=0, cache_dir=tmp_path, return_meta=True)
    assert (meta.ratings >= 100).all()
    assert torch.equal(sudoku.rate(x), meta.ratings)


# --------------------------------------------------------------------------------------------- loaders


def test_load_shared_csv(shared_data):
    for name, rows in (("sudoku17_1500.csv", 1500), ("magictour_top1465.csv", 1465)):
        x, y, meta = sudoku.load(shared_data / "sudoku" / name, return_meta=True)
        assert x.shape == y.shape == (rows, 9, 9)
        assert sudoku.is_valid_solution(y).all()
        assert sudoku.correct(y, y, x).all()
        # every row as the csv module reads the file: givens, answers, ratings, sources
        with open(shared_data / "sudoku" / name, newline="") as f:
            table = list(csv.DictReader(f))
        digits = lambda s: torch.tensor([0 if c == "." else int(c) for c in s])  # noqa: E731
        assert torch.equal(x.view(rows, 81), torch.stack([digits(r["question"]) for r in table]))
        assert torch.equal(y.view(rows, 81), torch.stack([digits(r["answer"]) for r in table]))
        assert meta.ratings.tolist() == [int(r["rating"]) for r in table]
        assert meta.sources == [r["source"] for r in table]
        assert meta.summary.loaded == rows and not meta.summary.skipped and meta.lines == list(range(2, rows + 2))
    assert (x != 0).sum(dim=(1, 2)).min() >= 17


def test_line_files_are_solved_and_rated(shared_data, tmp_path):
    rows = shared_rows(shared_data, "sudoku17_1500.csv", max_rating=100, limit=12)
    path = tmp_path / "puzzles.txt"
    lines = ["# a comment", ""]
    for i, row in enumerate(rows):
        q = row["question"]
        lines.append(q.replace(".", "0") if i % 2 else q + "   # trailing comment")
    path.write_text("\n".join(lines) + "\n")
    x, y, meta = sudoku.load(path, return_meta=True)
    assert torch.equal(y, torch.cat([grid(r["answer"]) for r in rows]))
    assert meta.ratings.tolist() == [int(r["rating"]) for r in rows]
    assert meta.lines == list(range(3, 3 + len(rows)))


def test_csv_variants_header_optional_and_columns_optional(tmp_path):
    headerless = tmp_path / "a.csv"
    headerless.write_text(f"mine,{EASY},{EASY_ANSWER},0\n")
    x, y = sudoku.load(headerless)
    assert torch.equal(x, grid(EASY)) and torch.equal(y, grid(EASY_ANSWER))
    question_only = tmp_path / "b.csv"
    question_only.write_text(f"question,source\n{EASY},web\n")
    x, y, meta = sudoku.load(question_only, return_meta=True)
    assert torch.equal(y, grid(EASY_ANSWER)) and meta.ratings.tolist() == [0] and meta.sources == ["web"]
    kaggle = tmp_path / "c.csv"  # the layout of the 1M-sudoku Kaggle set
    kaggle.write_text(f"quizzes,solutions\n{EASY.replace('.', '0')},{EASY_ANSWER}\n")
    assert torch.equal(sudoku.load(kaggle)[1], grid(EASY_ANSWER))


BAD_ROWS = [
    (f"s,{EASY},{EASY_ANSWER}", "wrong number of columns"),
    (f"s,{EASY[:80]},{EASY_ANSWER},0", "bad puzzle string"),
    (f"s,{EASY[:80]}x,{EASY_ANSWER},0", "bad puzzle string"),
    (f"s,{EASY},{EASY_ANSWER[:80]}0,0", "bad answer string"),
    (f"s,{EASY},{EASY_ANSWER},-3", "rating is not a non-negative integer"),
    (f"s,{EASY},{EASY_ANSWER},hard", "rating is not a non-negative integer"),
    (f"s,{EASY},{EASY_ANSWER},{10**20}", "rating is not a non-negative integer"),
    (f"s,55{EASY[2:]},{EASY_ANSWER},0", "contradictory givens"),
    (f"s,{EASY},{EASY_ANSWER[1:]}{EASY_ANSWER[0]},0", "answer is not a valid sudoku solution"),
    (f"s,{EASY},{EASY_ANSWER.translate(str.maketrans('12', '21'))},0", "answer contradicts the givens"),
    (f"s,{'.' * 80}1,,", "puzzle has more than one solution"),
    # consistent givens, but r1c9 can hold nothing: 1-8 in its row, 9 in its column
    (f"s,12345678.{'.' * 17}9{'.' * 54},,", "puzzle has no solution"),
]


@pytest.mark.parametrize("row, problem", BAD_ROWS)
def test_bad_rows_name_file_line_and_problem(tmp_path, row, problem):
    path = tmp_path / "bad.csv"
    path.write_text(f"source,question,answer,rating\ns,{EASY},{EASY_ANSWER},0\n{row}\n")
    with pytest.raises(DataError, match=rf"bad.csv:3: {problem}") as info:
        sudoku.load(path)
    assert info.value.line == 3 and info.value.problem.startswith(problem)
    x, y, meta = sudoku.load(path, on_error="skip", return_meta=True)
    assert len(x) == 1 and meta.summary.rows == 2 and meta.summary.n_skipped == 1


def test_non_unique_puzzles_load_when_allowed(tmp_path):
    path = tmp_path / "open.txt"
    path.write_text("." * 80 + "1\n")
    x, y, meta = sudoku.load(path, require_unique=False, return_meta=True)
    assert sudoku.is_valid_solution(y).all() and y[0, 8, 8] == 1 and meta.ratings.tolist() == [-1]


def test_line_file_errors_and_on_error_values(tmp_path):
    path = tmp_path / "lines.txt"
    path.write_text(f"{EASY}\n{EASY}9\n")
    with pytest.raises(DataError, match=r"lines.txt:2: bad puzzle string"):
        sudoku.load(path)
    with pytest.raises(ValueError, match="'raise', 'skip'"):
        sudoku.load(path, on_error="warn")


# A pool of row pieces, valid and broken, that hypothesis mixes into whole files.
_PIECES = [EASY, EASY_ANSWER, EASY[:80], EASY + "1", EASY.replace(".", "0"), "5" * 81, "." * 81, "", "0", "-1", "x", "9" * 25]


@st.composite
def sudoku_rows(draw) -> str:
    if draw(st.booleans()):  # structured: four fields built from (possibly mangled) pieces
        fields = [draw(st.sampled_from(["s", ""]))]
        for _ in range(3):
            piece = draw(st.sampled_from(_PIECES))
            if piece and draw(st.booleans()):
                i = draw(st.integers(0, len(piece) - 1))
                piece = piece[:i] + draw(st.sampled_from(list("0123456789.,x# é\x00"))) + piece[i + 1 :]
            fields.append(piece)
        fields = fields[: draw(st.integers(2, 5))]
        return ",".join(fields)
    return draw(st.text(max_size=100).filter(lambda t: "\n" not in t and "\r" not in t))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(sudoku_rows(), min_size=20, max_size=30), header=st.booleans(), lines=st.booleans())
def test_fuzz_only_data_errors_escape(rows, header, lines):
    """60 files of 20-30 generated rows each (1,200+ rows): nothing but DataError escapes."""
    body = [r.split(",")[1] if lines and "," in r else r for r in rows]
    text = ("source,question,answer,rating\n" if header and not lines else "") + "\n".join(body) + "\n"
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.csv"
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
        try:
            x, y = sudoku.load(path)
            assert sudoku.correct(y, y, x).all()
        except DataError as error:  # a row, or (line None) the whole file: no puzzle row at all
            assert error.path == str(path) and (error.problem.startswith("no puzzle rows") or error.line >= 1)
        try:
            x, y, meta = sudoku.load(path, on_error="skip", return_meta=True)
        except DataError as error:  # skipping, only a file left without puzzles is an error
            assert error.line is None and error.problem.startswith("no puzzle")
            return
        assert len(x) == meta.summary.loaded == meta.summary.rows - meta.summary.n_skipped > 0
        assert sudoku.is_valid_solution(y).all() and ((x == 0) | (x == y)).all()


# --------------------------------------------------------------------------------------------- metric


def test_correct_accepts_any_valid_completion_and_counts_cells():
    x, y = grid(EASY), grid(EASY_ANSWER)
    logits = torch.nn.functional.one_hot(y, 10).float()
    assert sudoku.correct(logits, y, x).item() and sudoku.correct(y, y).item()
    wrong = y.clone()
    wrong[0, 0, 2], wrong[0, 0, 3] = y[0, 0, 3], y[0, 0, 2]  # two blanks swapped: rows still fine
    assert not sudoku.correct(wrong, y, x).item()
    assert sudoku.cell_accuracy(wrong, y, x).item() == pytest.approx(1 - 2 / (x == 0).sum().item())
    assert sudoku.cell_accuracy(wrong, y).item() == pytest.approx(79 / 81)
    # an open puzzle: a different valid grid that keeps the givens counts as solved
    opened = torch.zeros_like(x)
    relabelled = (y % 9) + 1
    assert sudoku.correct(relabelled, y, opened).item()
    assert not sudoku.correct(relabelled, y).item()
    blank_pred = y.clone()
    blank_pred[0, 0, 2] = 0
    assert not sudoku.correct(blank_pred, y, x).item()


def test_split_by_rating_quantiles():
    ratings = torch.tensor([0, 0, 0, 0, 1, 2, 5, 9, 40, 100, -1])
    easy, hard = sudoku.split_by_rating(ratings, 0.5, 0.8)
    assert easy.tolist() == [0, 1, 2, 3, 4] and hard.tolist() == [8, 9]
    with pytest.raises(ValueError, match="quantile"):
        sudoku.split_by_rating(ratings, 0.9, 0.5)


# --------------------------------------------------------------------------------------------- augmentation


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_augmentation_keeps_puzzles_valid_and_unique(seed):
    x = torch.cat([grid(EASY)] * 4 + [grid(SEVENTEEN)])
    y = sudoku.solve(x).solution
    ax, ay = sudoku.augment(x, y, generator=torch.Generator().manual_seed(seed))
    assert sudoku.is_valid_solution(ay).all()
    assert ((ax == 0) | (ax == ay)).all() and torch.equal((ax == 0).sum((1, 2)), (x == 0).sum((1, 2)))
    result = sudoku.solve(ax)
    assert result.solutions.tolist() == [1] * 5 and torch.equal(result.solution, ay)


def test_augmentation_varies_and_rejects_bad_shapes():
    x, y = grid(EASY).repeat(16, 1, 1), grid(EASY_ANSWER).repeat(16, 1, 1)
    ax, _ = sudoku.augment(x, y, generator=torch.Generator().manual_seed(0))
    assert len({tuple(p) for p in ax.view(16, 81).tolist()}) == 16
    with pytest.raises(ValueError, match=r"\(n, 9, 9\)"):
        sudoku.augment(x.view(16, 81), y.view(16, 81))


def test_task_augments_training_batches_only_when_asked():
    x, y = grid(EASY).repeat(4, 1, 1), grid(EASY_ANSWER).repeat(4, 1, 1)
    plain = Sudoku().augment_batch(x, y, torch.Generator().manual_seed(0))
    assert plain[0] is x and plain[1] is y
    ax, ay = Sudoku(augment=True).augment_batch(x, y, torch.Generator().manual_seed(0))
    bx, by = sudoku.augment(x, y, generator=torch.Generator().manual_seed(0))
    assert torch.equal(ax, bx) and torch.equal(ay, by) and not torch.equal(ax, x)
    assert sudoku.correct(ay, ay, ax).all()


# --------------------------------------------------------------------------------------------- task


def test_task_from_data_splits_by_rating(shared_data):
    path = shared_data / "sudoku" / "sudoku17_1500.csv"
    task = get_task("sudoku", data=path)
    x, _, meta = sudoku.load(path, return_meta=True)
    rating = {tuple(p): r for p, r in zip(x.view(-1, 81).tolist(), meta.ratings.tolist())}
    easy_max = meta.ratings.double().quantile(0.5, interpolation="lower").item()
    hard_min = meta.ratings.double().quantile(0.9, interpolation="higher").item()
    x_train, _ = task.make("train", 200, seed=0)
    x_val, _ = task.make("val", 50, seed=0)
    x_hard, _ = task.make("hard", 100, seed=0)
    train = {tuple(p) for p in x_train.view(-1, 81).tolist()}
    val = {tuple(p) for p in x_val.view(-1, 81).tolist()}
    hard = {tuple(p) for p in x_hard.view(-1, 81).tolist()}
    assert len(train) == 200 and len(val) == 50 and len(hard) == 100 and not train & val
    assert all(rating[p] <= easy_max for p in train | val)
    assert all(rating[p] >= hard_min and rating[p] > easy_max for p in hard)
    assert torch.equal(task.make("train", 200, seed=0)[0], x_train)
    with pytest.raises(ValueError, match="has 150 puzzles, 1000 requested"):
        task.make("hard", 1000)


def test_task_config_is_validated(tmp_path):
    assert Sudoku().grid == (9, 9)
    with pytest.raises(ValueError, match="val_fraction"):
        Sudoku(val_fraction=1.5)
    with pytest.raises(ValueError, match="band"):
        Sudoku(hard_band="impossible")
    with pytest.raises(ConfigError, match="no such file"):
        Sudoku(data=tmp_path / "missing.csv")


def test_numpy_input_is_accepted():
    puzzles = np.array([[0 if c == "." else int(c) for c in EASY]])
    assert sudoku.solve(puzzles).solutions.tolist() == [1]


@pytest.mark.slow
def test_solver_reproduces_a_sample_of_every_shared_rating(shared_data):
    for name in ("sudoku17_1500.csv", "magictour_top1465.csv"):
        x, y, meta = sudoku.load(shared_data / "sudoku" / name, return_meta=True)
        bounded = torch.nonzero(meta.ratings <= 1000).flatten()  # the search time grows with the rating
        pick = bounded[torch.randperm(len(bounded), generator=torch.Generator().manual_seed(0))[:60]]
        result = sudoku.solve(x[pick])
        assert torch.equal(result.guesses, meta.ratings[pick]) and torch.equal(result.solution, y[pick])
