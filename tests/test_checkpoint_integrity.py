"""A checkpoint is data, never code, and damage to it is named: a forged task makes deqloop import
nothing, an unsafe pickle is refused without torch's advice to load it unsafely, a flipped bit
fails the archive's CRC check, a NaN weight is refused by the tensor's name."""

from __future__ import annotations

import io
import shutil
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from deqloop.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from deqloop.cli import main
from deqloop.run import Run
from deqloop.train import train
from test_train import tiny_config


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    train(tiny_config(out, steps=2, warmup_steps=0, eval_size=0))
    return out


@pytest.fixture
def ckpt(run_dir, tmp_path) -> Path:
    path = tmp_path / "last.pt"
    shutil.copy(run_dir / "last.pt", path)
    return path


def forge(path: Path, **changes) -> None:
    state = load_checkpoint(path)
    for key, value in changes.items():
        if key == "task":
            state["train_config"]["task"] = value
        else:
            state[key] = value
    save_checkpoint(path, state)


@pytest.mark.parametrize("task, spec", [("evil_task:Foo", None), ("copy_evil", "evil_task:Foo")])
def test_a_forged_task_imports_nothing(ckpt, tmp_path, monkeypatch, task, spec):
    code = tmp_path / "code"
    code.mkdir()
    marker = tmp_path / "ran"
    (code / "evil_task.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    monkeypatch.syspath_prepend(str(code))
    forge(ckpt, task=task, **({"task_class": spec} if spec else {}))
    with pytest.raises(CheckpointError, match=r"defined in module 'evil_task'\) is not registered.*--import evil_task"):
        Run.load(ckpt)
    assert not marker.exists() and "evil_task" not in sys.modules


def test_the_cli_loads_a_forged_task_only_with_import_and_says_so_in_one_line(ckpt, tmp_path, monkeypatch, capsys):
    code = tmp_path / "code"
    code.mkdir()
    (code / "evil_task.py").write_text("RAN = True\n")
    monkeypatch.syspath_prepend(str(code))
    forge(ckpt, task="evil_task:Foo")
    assert main(["eval", str(ckpt), "--iters", "1", "--n", "4", "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "never makes deqloop import code" in err[0]
    assert "evil_task" not in sys.modules


def test_an_unsafe_pickle_is_refused_without_advice_to_load_it_unsafely(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("ran",))

    path = tmp_path / "last.pt"
    torch.save({"model": {}, "model_config": {}, "x": Payload()}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "refused" in message and "Unsupported global" in message
    assert "weights_only" not in message and "add_safe_globals" not in message and "\n" not in message


def test_a_flipped_bit_fails_the_crc_check(ckpt):
    data = bytearray(ckpt.read_bytes())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as archive:
        member = next(i for i in archive.infolist() if i.filename.endswith("/data/0"))
        raw = archive.read(member)
    at = bytes(data).index(raw) + len(raw) // 2
    data[at] ^= 0x40
    ckpt.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"corrupt: the CRC check of '.*data/0' fails"):
        load_checkpoint(ckpt)


def test_a_nan_weight_is_refused_by_name(ckpt, capsys):
    state = load_checkpoint(ckpt)
    name = next(k for k, v in state["model"].items() if v.is_floating_point() and v.numel() > 1)
    state["model"][name].view(-1)[1] = float("nan")
    torch.save(state, ckpt)
    with pytest.raises(CheckpointError, match=rf"tensor model\.{name} holds non-finite values"):
        Run.load(ckpt)
    assert main(["analyze", str(ckpt), "--n", "2"]) == 2
    assert "non-finite" in capsys.readouterr().err
