"""Trackers beside metrics.jsonl: what each sink writes, read back from its own files."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import struct
import sys
import time
import types
from pathlib import Path

import pytest

from deqloop.train.tracking import LOGGERS, Tracker, flatten, make_tracker, run_id

CONFIG = {"task": "prefix_sums", "width": 32, "lr": 0.001, "eval_iters": [14, 50]}
TRAIN = [
    {"step": 10, "lr": 0.001, "loss": 0.6931, "accuracy": 0.125, "grad_norm": 0.5, "skipped_total": 0, "time": 1.5},
    {"step": 20, "lr": 0.0009, "loss": 0.4375, "accuracy": 0.25, "grad_norm": 0.75, "skipped_total": 0, "time": 3.0},
]
SKIPPED = {"step": 23, "lr": 0.0008, "skipped": True, "reason": "non-finite loss", "skipped_total": 1}
EVAL = {"step": 20, "kind": "eval", "iters": [14, 50], "val_accuracy": [0.875, 1.0], "hard_accuracy": [0.5, 0.625]}


def test_flatten_training_record():
    assert flatten(TRAIN[0]) == {"train/lr": 0.001, "train/loss": 0.6931, "train/accuracy": 0.125,
                                 "train/grad_norm": 0.5, "train/skipped_total": 0.0, "train/time": 1.5}


def test_flatten_skipped_step_logs_the_flag_and_drops_strings():
    assert flatten(SKIPPED) == {"train/lr": 0.0008, "train/skipped": 1.0, "train/skipped_total": 1.0}


def test_flatten_eval_record_one_scalar_per_iteration_count():
    mismatched = {**EVAL, "losses": [0.25, 0.5, 0.75], "note": None}  # a list not paired with iters is left out
    assert flatten(mismatched) == {"eval/val_accuracy@14": 0.875, "eval/val_accuracy@50": 1.0,
                             "eval/hard_accuracy@14": 0.5, "eval/hard_accuracy@50": 0.625}


def test_unknown_logger_names_the_allowed_values():
    assert LOGGERS == ("jsonl", "tensorboard", "wandb")
    with pytest.raises(ValueError, match=re.escape("unknown logger 'x'; allowed: jsonl, tensorboard, wandb")):
        make_tracker("x", "unused", config={})


def test_jsonl_tracker_is_a_no_op(tmp_path):
    tracker = make_tracker("jsonl", tmp_path, config=CONFIG)
    assert type(tracker) is Tracker
    with tracker:
        tracker.log(TRAIN[0], step=10)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind, module", [("tensorboard", "torch.utils.tensorboard"), ("wandb", "wandb")])
def test_missing_package_names_the_extra(kind, module, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    monkeypatch.delenv("WANDB_SILENT", raising=False)
    message = f"--logger {kind} needs the {kind} package: pip install 'deqloop[{kind}]'"
    with pytest.raises(ImportError, match=re.escape(message)):
        make_tracker(kind, tmp_path, config=CONFIG)
    assert "WANDB_SILENT" not in os.environ  # the temporary environment is restored on failure too


def test_wandb_init_arguments_and_environment(tmp_path, monkeypatch):
    """The exact ``wandb.init`` call, against a stand-in module (no wandb needed)."""
    calls = []

    class Run:
        def log(self, data, step):
            calls.append(("log", data, step))

        def finish(self):
            calls.append(("finish",))

    def init(**kwargs):
        env = {k: os.environ.get(k) for k in ("WANDB_MODE", "WANDB_SILENT", "WANDB_ERROR_REPORTING")}
        calls.append(("init", kwargs, env))
        return Run()

    stub = types.SimpleNamespace(Settings=lambda **kwargs: kwargs, init=init)
    monkeypatch.setitem(sys.modules, "wandb", stub)
    for key in ("WANDB_MODE", "WANDB_SILENT", "WANDB_ERROR_REPORTING"):
        monkeypatch.delenv(key, raising=False)
    with make_tracker("wandb", tmp_path, config=CONFIG, run_name="r", resume=True) as tracker:
        tracker.log(EVAL, step=20)
    (_, kwargs, env), log, finish = calls
    settings = kwargs.pop("settings")
    assert kwargs == {"mode": "offline", "dir": str(tmp_path), "project": "deqloop", "name": "r", "config": CONFIG,
                      "resume": "allow", "id": run_id(tmp_path)}
    assert (settings["silent"], settings["console"]) == (True, "off")
    assert env == {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_ERROR_REPORTING": "false"}
    assert not {"WANDB_MODE", "WANDB_SILENT", "WANDB_ERROR_REPORTING"} & set(os.environ)
    assert (log, finish) == (("log", flatten(EVAL), 20), ("finish",))
    calls.clear()
    make_tracker("wandb", tmp_path, config=CONFIG).close()
    assert calls[0][1]["resume"] is None and calls[0][1]["name"] is None and calls[0][1]["id"] == run_id(tmp_path)


# -- TensorBoard -------------------------------------------------------------------------------

def _tensorboard(out: Path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def _scalars(acc, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_tensorboard_scalars_and_config_read_back(tmp_path):
    pytest.importorskip("tensorboard")
    with make_tracker("tensorboard", tmp_path, config=CONFIG) as tracker:
        for record in [*TRAIN, EVAL, SKIPPED]:
            tracker.log(record, step=record["step"])
    acc = _tensorboard(tmp_path)
    assert _scalars(acc, "train/loss") == [(10, pytest.approx(0.6931, abs=1e-6)), (20, pytest.approx(0.4375, abs=1e-6))]
    assert _scalars(acc, "train/accuracy") == [(10, 0.125), (20, 0.25)]
    assert _scalars(acc, "train/lr") == [(10, pytest.approx(0.001, abs=1e-6)), (20, pytest.approx(0.0009, abs=1e-6)),
                                         (23, pytest.approx(0.0008, abs=1e-6))]
    assert _scalars(acc, "train/skipped") == [(23, 1.0)]
    assert _scalars(acc, "eval/hard_accuracy@50") == [(20, 0.625)]
    assert _scalars(acc, "eval/val_accuracy@14") == [(20, 0.875)]
    assert sorted(acc.Tags()["scalars"]) == sorted({*flatten(TRAIN[0]), *flatten(EVAL), *flatten(SKIPPED)})
    (text,) = acc.Tensors("config/text_summary")
    assert json.loads(text.tensor_proto.string_val[0].decode()) == CONFIG


def test_tensorboard_resume_replaces_steps_after_the_checkpoint(tmp_path):
    pytest.importorskip("tensorboard")
    with make_tracker("tensorboard", tmp_path, config=CONFIG) as tracker:
        for step, loss in [(10, 0.5), (20, 0.25), (30, 0.125)]:
            tracker.log({"step": step, "loss": loss}, step=step)
    with make_tracker("tensorboard", tmp_path, config=CONFIG, resume=True) as tracker:  # resumed from step 10
        for step, loss in [(20, 0.375), (30, 0.3125)]:
            tracker.log({"step": step, "loss": loss}, step=step)
    assert _scalars(_tensorboard(tmp_path), "train/loss") == [(10, 0.5), (20, 0.375), (30, 0.3125)]
    with make_tracker("tensorboard", tmp_path, config=CONFIG) as tracker:  # a fresh run hides all of it
        tracker.log({"step": 20, "loss": 0.75}, step=20)
    assert _scalars(_tensorboard(tmp_path), "train/loss") == [(20, 0.75)]


# -- Weights & Biases (offline) ----------------------------------------------------------------

def _wandb_records(path: Path) -> list:
    """The protobuf records of an offline ``run-*.wandb`` file (LevelDB log format, 32 KiB blocks)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block, pos, chunk, records = path.read_bytes(), 32768, 7, b"", []
    if len(data) < 7:  # not written yet
        return []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if pos + 7 + length > len(data):  # a record still being written
            break
        chunk, pos = chunk + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # FULL or LAST
            record = pb.Record()
            record.ParseFromString(chunk)
            records.append(record)
            chunk = b""
    return records


def _wandb_finished(run_dir: Path, timeout: float = 15.0) -> Path:
    """The run's ``.wandb`` file once it holds the exit record: ``finish()`` returns before wandb-core
    (wandb >= 0.19, a separate process) has written the file, so wait for it."""
    deadline = time.monotonic() + timeout
    while True:
        paths = list(run_dir.glob("run-*.wandb"))
        if len(paths) == 1 and any(r.WhichOneof("record_type") == "exit" for r in _wandb_records(paths[0])):
            return paths[0]
        assert time.monotonic() < deadline, f"no finished run-*.wandb in {run_dir} after {timeout} s"
        time.sleep(0.05)


def _wandb_history(path: Path) -> dict[int, dict[str, float]]:
    history = {}
    for r in _wandb_records(path):
        if r.WhichOneof("record_type") == "history":
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
            history[items["_step"]] = {k: v for k, v in items.items() if not k.startswith("_")}
    return history


def test_wandb_offline_run_holds_the_logged_history(tmp_path, monkeypatch):
    if importlib.util.find_spec("wandb") is None:  # not importorskip: wandb must first be imported by the tracker
        pytest.skip("wandb is not installed")
    monkeypatch.delenv("WANDB_SILENT", raising=False)
    out = tmp_path / "run"
    with make_tracker("wandb", out, config=CONFIG, run_name="ps-test") as tracker:
        assert "WANDB_SILENT" not in os.environ  # set for wandb.init only
        for record in [*TRAIN, EVAL]:
            tracker.log(record, step=record["step"])
    (run_dir,) = (out / "wandb").glob(f"offline-run-*-{run_id(out)}")
    path = _wandb_finished(run_dir)
    assert _wandb_history(path) == {10: flatten(TRAIN[0]), 20: {**flatten(TRAIN[1]), **flatten(EVAL)}}
    (run,) = [r.run for r in _wandb_records(path) if r.WhichOneof("record_type") == "run"]
    assert (run.run_id, run.project, run.display_name) == (run_id(out), "deqloop", "ps-test")
    assert {u.key: json.loads(u.value_json) for u in run.config.update if u.key in CONFIG} == CONFIG

    with make_tracker("wandb", out, config=CONFIG, run_name="ps-test", resume=True) as tracker:
        tracker.log(SKIPPED, step=23)
    # Same id, so `wandb sync` appends to one run; a folder made in the same second gets a "-1" suffix.
    (resumed,) = set((out / "wandb").glob(f"offline-run-*-{run_id(out)}*")) - {run_dir}
    assert _wandb_history(_wandb_finished(resumed)) == {23: flatten(SKIPPED)}
    assert run_id(out) == run_id(str(out / ".." / "run")) != run_id(tmp_path / "other")


def test_training_with_the_tensorboard_logger_writes_what_metrics_jsonl_holds(tmp_path):
    pytest.importorskip("tensorboard")
    from deqloop.train import TrainConfig, read_metrics, train

    config = TrainConfig.from_flat(task="prefix_sums", task_options={"length": 5}, width=16, heads=2, attention="local",
                         window=3, loss="progressive", max_iter=2, steps=4, batch_size=8, warmup_steps=0, log_every=2,
                         eval_size=4, logger="tensorboard", threads=1, progress=False, out=str(tmp_path))
    train(config)
    records = list(read_metrics(tmp_path / "metrics.jsonl"))
    acc = _tensorboard(tmp_path)
    losses = [(r["step"], r["loss"]) for r in records if "loss" in r]
    assert [s for s, _ in losses] == [2, 4]
    got = _scalars(acc, "train/loss")
    assert [s for s, _ in got] == [2, 4]
    assert [v for _, v in got] == pytest.approx([v for _, v in losses], rel=1e-6)
    final = [r for r in records if r.get("kind") == "eval"][-1]
    assert _scalars(acc, "eval/hard_accuracy@2") == [(4, pytest.approx(final["hard_accuracy"][0]))]
