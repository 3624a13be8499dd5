"""Data files read whole or refused by name: a ``.zst`` cut short, old Mac line endings, a byte
order mark, an empty file, a puzzle given twice, a line that never ends."""

from __future__ import annotations

import tracemalloc

import pytest
import zstandard

from deqloop.tasks import chess_data, sudoku_data
from deqloop.tasks.io import DataError, Rows, iter_lines
from deqloop.tasks.zstd_frames import check_complete
from test_tasks_chess import HEADER, ROW
from test_tasks_sudoku import EASY, EASY_ANSWER, SEVENTEEN

# Three different valid puzzles: EASY with its digits relabelled (1 -> 2 -> ... -> 9 -> 1) is another one.
RELABEL = str.maketrans("123456789", "234567891")
PUZZLES = [(EASY, EASY_ANSWER), (EASY.translate(RELABEL), EASY_ANSWER.translate(RELABEL)),
           (EASY.translate(RELABEL).translate(RELABEL), EASY_ANSWER.translate(RELABEL).translate(RELABEL))]


def csv_text(rows, newline="\n") -> str:
    lines = ["source,question,answer,rating"] + [f"t,{q},{a},{i}" for i, (q, a) in enumerate(rows)]
    return newline.join(lines) + newline


@pytest.mark.parametrize("fraction", [0.25, 0.5, 0.999])
def test_a_truncated_zst_is_named_even_when_skipping_bad_rows(tmp_path, fraction):
    rows = [ROW.replace("0495p", f"p{i}") for i in range(3000)]
    packed = zstandard.ZstdCompressor().compress(("\n".join([HEADER, *rows]) + "\n").encode())
    cut = tmp_path / "p.csv.zst"
    cut.write_bytes(packed[: int(len(packed) * fraction)])
    with pytest.raises(DataError, match=r"p.csv.zst: truncated or damaged zstd file: the data ends in frame 1"):
        chess_data.load_lichess(cut, on_error="skip")
    whole = tmp_path / "whole.csv.zst"
    whole.write_bytes(packed)
    assert check_complete(whole) is None and len(chess_data.load_lichess(whole)[0]) == 3000


def test_a_zst_of_several_frames_is_read_whole(tmp_path):
    compress = zstandard.ZstdCompressor().compress
    text = csv_text(PUZZLES)
    head, tail = text.split("\n", 2)[:2], text.split("\n", 2)[2]
    path = tmp_path / "s.csv.zst"
    path.write_bytes(compress(("\n".join(head) + "\n").encode()) + compress(tail.encode()))
    assert check_complete(path) is None
    x, y = sudoku_data.load(path)
    assert len(x) == 3  # before: the first frame only, the header


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_line_endings_of_every_platform_read_the_same(tmp_path, newline):
    path = tmp_path / "s.csv"
    path.write_bytes(csv_text(PUZZLES, newline).encode())
    x, y, meta = sudoku_data.load(path, return_meta=True)
    assert len(x) == 3 and meta.lines == [2, 3, 4]


def test_a_byte_order_mark_is_not_part_of_the_first_field(tmp_path):
    lines = tmp_path / "s.txt"
    lines.write_bytes(b"\xef\xbb\xbf" + "\n".join(q for q, _ in PUZZLES).encode() + b"\n")
    assert len(sudoku_data.load(lines)[0]) == 3
    csv = tmp_path / "s.csv"
    csv.write_bytes(b"\xef\xbb\xbf" + csv_text(PUZZLES).encode())
    _, _, meta = sudoku_data.load(csv, return_meta=True)
    assert meta.sources == ["t", "t", "t"]


@pytest.mark.parametrize("content", ["", "\n\n", "source,question,answer,rating\n", "# only a comment\n"])
def test_a_file_without_puzzles_is_named(tmp_path, content):
    path = tmp_path / "s.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=r"s.csv: no puzzle rows"):
        sudoku_data.load(path, on_error="skip")


def test_a_file_whose_every_row_is_bad_is_named(tmp_path):
    path = tmp_path / "s.txt"
    path.write_text("123\n456\n")
    with pytest.raises(DataError, match=r"s.txt: no puzzle loaded: .*2 skipped \(2 bad puzzle string\)"):
        sudoku_data.load(path, on_error="skip")


def test_a_puzzle_given_twice_is_an_error_naming_both_lines_or_dropped_and_counted(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text(csv_text([PUZZLES[0], PUZZLES[1], PUZZLES[0], (SEVENTEEN, "")]))
    with pytest.raises(DataError, match=r"s.csv:4: duplicate puzzle: the same as line 2"):
        sudoku_data.load(path)
    x, y, meta = sudoku_data.load(path, on_error="skip", return_meta=True)
    assert meta.lines == [2, 3, 5] and meta.summary.skipped == {"duplicate puzzle: the same as line 2": 1}


def test_a_line_that_never_ends_stops_at_the_cap_in_bounded_memory(tmp_path):
    path = tmp_path / "p.csv.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress((HEADER + "\n" + "a" * (64 << 20)).encode()))
    assert path.stat().st_size < 64 << 10
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=r"p.csv.zst:2: line longer than 1048576 bytes"):
            chess_data.load_lichess(path, on_error="skip")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20  # before: the whole 64 MiB line (and its decoded copy) in memory


def test_iter_lines_numbers_lines_across_chunk_boundaries(tmp_path):
    path = tmp_path / "x.txt"
    text = "".join(f"{i}{'x' * (i * 37 % 5000)}\r\n" for i in range(200))
    path.write_bytes(text.encode())
    got = list(iter_lines(path, Rows(path, "raise")))
    assert [n for n, _ in got] == list(range(1, 201))
    assert [t for _, t in got] == text.split("\r\n")[:-1]


def test_the_line_cap_holds_for_lines_inside_one_chunk(tmp_path):
    path = tmp_path / "x.txt"
    path.write_text("short\n" + "y" * 200 + "\nshort\n")
    with pytest.raises(DataError, match=r"x.txt:2: line longer than 100 bytes"):
        list(iter_lines(path, Rows(path, "skip"), max_line=100))
