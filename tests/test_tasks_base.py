"""The shared task protocol: registry, errors, line reading."""

from __future__ import annotations

import pytest
import torch
import zstandard

from deqloop.errors import ConfigError, ConfigKeyError
from deqloop.tasks import BANDS, DataError, Task, get_task
from deqloop.tasks.base import as_predictions, token_view
from deqloop.tasks.io import Rows, check_on_error, iter_lines


def test_get_task_knows_the_three_tasks_and_lists_them_on_error():
    for name in ("prefix_sums", "sudoku", "chess"):
        task = get_task(name)
        assert task.name == name
        assert isinstance(task, Task)
    with pytest.raises(ConfigError, match="'prefix_sums', 'sudoku', 'chess'"):
        get_task("go")
    with pytest.raises(ConfigKeyError, match=r"unknown key\(s\) \['no_such_option'\]"):
        get_task("prefix_sums", no_such_option=1)


@pytest.mark.parametrize("name", ["prefix_sums", "sudoku", "chess"])
def test_make_returns_tokens_and_classes_in_range(name, tmp_path, monkeypatch):
    monkeypatch.setenv("DEQLOOP_CACHE", str(tmp_path))
    task = get_task(name)
    for band in ("train", "val"):
        x, y = task.make(band, 3, seed=0)
        assert x.shape == y.shape == (3, *task.grid)
        assert x.dtype == y.dtype == torch.long
        assert 0 <= x.min() and x.max() < task.vocab_size
        assert 0 <= y.min() and y.max() < task.num_classes
        logits = torch.nn.functional.one_hot(y, task.num_classes).float()
        assert task.correct(logits, y, x).all()
        assert torch.all(task.cell_accuracy(logits, y, x) == 1.0)
        # one wrong cell in example 1 (a blank for sudoku, a marked square for chess) fails it alone,
        # and costs one of its scored cells (sudoku scores the blanks only)
        flat = y.clone().flatten(1)
        cell = {"prefix_sums": 0, "sudoku": int((x[1].flatten() == 0).nonzero()[0]),
                "chess": int((y[1].flatten() == 1).nonzero()[0])}[name]
        flat[1, cell] = (flat[1, cell] + 1) % task.num_classes
        wrong = torch.nn.functional.one_hot(flat.view_as(y), task.num_classes).float()
        assert task.correct(wrong, y, x).tolist() == [True, False, True]
        scored = int((x[1] == 0).sum()) if name == "sudoku" else x[1].numel()
        expected = torch.tensor([1.0, 1 - 1 / scored, 1.0])
        torch.testing.assert_close(task.cell_accuracy(wrong, y, x).double(), expected.double())
    assert BANDS == ("train", "val", "hard")


def test_data_error_names_file_line_value_and_expectation():
    error = DataError("data/x.csv", 7, "bad puzzle string", "12x", "81 characters")
    assert str(error) == "data/x.csv:7: bad puzzle string (value '12x'; expected 81 characters)"
    assert (error.path, error.line, error.problem) == ("data/x.csv", 7, "bad puzzle string")
    assert isinstance(error, ValueError)
    long = DataError("f", 1, "p", "y" * 500)
    assert len(str(long)) < 120


def test_on_error_must_be_raise_or_skip():
    assert check_on_error("skip") == "skip"
    with pytest.raises(ValueError, match="'raise', 'skip'"):
        check_on_error("ignore")


def test_rows_skip_counts_by_problem():
    rows = Rows("f.csv", "skip")
    rows.bad(3, "bad FEN")
    rows.bad(4, "bad FEN")
    rows.bad(9, "illegal move")
    summary = rows.finish()
    assert summary.skipped == {"bad FEN": 2, "illegal move": 1}
    assert summary.n_skipped == 3 and [e.line for e in summary.first_errors] == [3, 4, 9]
    assert "3 skipped (2 bad FEN, 1 illegal move)" in str(summary)


def test_iter_lines_reads_plain_and_zst_alike(tmp_path):
    text = "a,b\r\nc,d\n\ne\n"
    plain = tmp_path / "f.csv"
    plain.write_text(text, newline="")
    packed = tmp_path / "f.csv.zst"
    packed.write_bytes(zstandard.ZstdCompressor().compress(text.encode()))
    expected = [(1, "a,b"), (2, "c,d"), (3, ""), (4, "e")]
    assert list(iter_lines(plain, Rows(plain, "raise"))) == expected
    assert list(iter_lines(packed, Rows(packed, "raise"))) == expected


def test_iter_lines_reports_bad_utf8_and_corrupt_zst(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"ok\nbro\xffken\nfine\n")
    with pytest.raises(DataError, match=r"bad.csv:2: line is not UTF-8"):
        list(iter_lines(bad, Rows(bad, "raise")))
    rows = Rows(bad, "skip")
    assert [n for n, _ in iter_lines(bad, rows)] == [1, 3]
    assert rows.summary.skipped == {"line is not UTF-8": 1}
    corrupt = tmp_path / "c.csv.zst"
    corrupt.write_bytes(zstandard.ZstdCompressor().compress(b"x\n" * 1000)[:-8] + b"\x00" * 8)
    with pytest.raises(DataError, match="corrupt zstd stream"):
        list(iter_lines(corrupt, Rows(corrupt, "skip")))


def test_as_predictions_takes_logits_or_ids():
    y = torch.tensor([[1, 0, 2]])
    logits = torch.nn.functional.one_hot(y, 3).float()
    assert torch.equal(as_predictions(logits, y), y)
    assert torch.equal(as_predictions(y.int(), y), y)
    with pytest.raises(ValueError, match="logits"):
        as_predictions(torch.zeros(1, 4, 3), y)


def test_token_view_writes_digits_compactly_and_rows_with_slashes():
    assert token_view(torch.tensor([1, 0, 1, 1])) == "1011"
    assert token_view(torch.tensor([[5, 3, 0], [0, 0, 7]])) == "530/007"
    assert token_view(torch.tensor([3, 12, 0])) == "3 12 0"  # an id of two digits: spaces
    assert token_view(torch.tensor([[10, 1], [2, 3]])) == "10 1/2 3"


def test_show_by_default_lists_the_tokens_and_the_verdict():
    task = get_task("prefix_sums")
    x = torch.tensor([[1, 0, 1], [1, 1, 0]])
    y = torch.tensor([[1, 1, 0], [1, 0, 0]])  # running parities
    predicted = torch.tensor([[1, 1, 0], [1, 1, 0]])  # the first right, the second wrong in its middle cell
    logits = torch.nn.functional.one_hot(predicted, 2).float() * 3 - 1
    assert task.show(x, y, logits) == [
        {"input": "101", "target": "110", "predicted": "110", "correct": "yes"},
        {"input": "110", "target": "100", "predicted": "110", "correct": "no"},
    ]
    assert task.show(x[1:], y[1:], predicted[1:]) == task.show(x, y, logits)[1:]  # class ids alike


def test_shared_data_dir_honours_the_environment(monkeypatch, tmp_path):
    from deqloop.tasks.io import shared_data_dir

    monkeypatch.setenv("DEQLOOP_SHARED", str(tmp_path))
    assert shared_data_dir() == tmp_path / "data"
    monkeypatch.delenv("DEQLOOP_SHARED")
    assert shared_data_dir().parts[-2:] == ("shared", "data")
