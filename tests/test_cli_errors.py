"""Which errors the command line turns into one line: the library's own, and nothing else."""

from __future__ import annotations

import pytest

from deqloop.cli import main
from deqloop.errors import ConfigError, DeqloopError
from deqloop.tasks.io import DataError


@pytest.mark.parametrize("error", [ConfigError("bad width 3"), DataError("f.csv", 7, "bad row")])
def test_library_errors_are_one_line_with_exit_status_2(monkeypatch, capsys, error):
    def fail(config):
        raise error

    monkeypatch.setattr("deqloop.train.train", fail)
    assert main(["train", "--steps", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"deqloop train: error: {str(error).splitlines()[0]}"]
    assert isinstance(error, DeqloopError)


@pytest.mark.parametrize("bug", [ValueError("a bug"), TypeError("another bug"), RuntimeError("torch said no")])
def test_other_exceptions_keep_their_traceback(monkeypatch, bug):
    def fail(config):
        raise bug

    monkeypatch.setattr("deqloop.train.train", fail)
    with pytest.raises(type(bug), match=str(bug)):
        main(["train", "--steps", "1", "--no-progress"])


def test_an_unknown_task_is_one_line(capsys):
    assert main(["train", "--task", "tetris"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown task 'tetris'; allowed: 'prefix_sums', 'sudoku', 'chess'" in err[0]


def test_an_unimportable_module_is_one_line(capsys):
    assert main(["train", "--import", "no_such_module_here", "--steps", "1"]) == 2
    assert "--import no_such_module_here" in capsys.readouterr().err
