"""compile="auto": the rule, the decision from a run's own step times, and the compiled step giving
the eager step's losses and gradients; the stability monitor on a compiled model."""

from __future__ import annotations


import pytest
import torch

from deqloop.errors import ConfigError
from deqloop.model.compiled import CompiledBlock
from deqloop.train import Trainer
from deqloop.train import autocompile as ac
from deqloop.train.autocompile import AutoCompile, compile_pays
from deqloop.train.monitor import StabilityMonitor, probe_batch

from test_train import tiny_config


def test_the_rule_is_steps_times_saving_against_compile_time():
    # 1,500 steps × 0.25 × 1 s = 375 s > 30 s; 100 × 0.25 × 1 s = 25 s ≤ 30 s
    assert compile_pays(1.0, 1500, saving=0.25, compile_seconds=30.0)
    assert not compile_pays(1.0, 100, saving=0.25, compile_seconds=30.0)
    assert not compile_pays(1.0, 120, saving=0.25, compile_seconds=30.0)  # 30 s is not more than 30 s
    assert compile_pays(1.0, 121, saving=0.25, compile_seconds=30.0)


def observe_all(watch: AutoCompile, seconds, shapes, total):
    return [watch.observe(i, total, t, s) for i, (t, s) in enumerate(zip(seconds, shapes))]


def test_the_decision_comes_once_after_the_probe_steps():
    shape = (64, 9, 9)
    # a warm-up step (untimed, 9 s), then 3 probes with median 1 s: 1,496 steps left × 0.25 × 1 s > 30 s
    watch = AutoCompile(eligible=True)
    assert observe_all(watch, [9.0, 1.0, 2.0, 0.5, 1.0, 1.0], [shape] * 6, 1500) == [False, False, False, True,
                                                                                        False, False]
    assert watch.decision["compile"] and watch.decision["step_seconds"] == 1.0 and watch.decision["steps_left"] == 1496
    short = AutoCompile(eligible=True)
    assert not any(observe_all(short, [1.0] * 5, [shape] * 5, 100)) and short.decision["compile"] is False
    varying = AutoCompile(eligible=True)
    assert not any(observe_all(varying, [1.0] * 5, [(8, 5), (8, 6), (8, 5), (8, 5), (8, 5)], 10**6))
    assert "change shape" in varying.decision["reason"]


def test_the_segments_are_decided_with_the_block_by_their_own_figures(monkeypatch):
    monkeypatch.setattr(ac, "SEGMENT_SAVING", 0.05)
    monkeypatch.setattr(ac, "SEGMENT_SECONDS", 20.0)
    shape = (64, 9, 9)
    for total, expected in ((200, 0), (404, 0), (405, 16), (2000, 16)):
        # steps left: total − 4; at 1 s a step the block pays from 121 left (0.25 × 121 > 30), the
        # segments from 401 (0.05 × 400 = 20 is not more than 20 s)
        watch = AutoCompile(eligible=True, segments=True)
        assert observe_all(watch, [1.0] * 4, [shape] * 4, total)[-1]
        assert watch.decision["compile_segment"] == expected
        assert watch.model_changes() == {"compile": True, "compile_segment": expected}
    fixed = AutoCompile(eligible=True)  # compile_segment given: the block alone is decided
    assert observe_all(fixed, [1.0] * 4, [shape] * 4, 2000)[-1]
    assert "compile_segment" not in fixed.decision and fixed.model_changes() == {"compile": True}
    slow_block = AutoCompile(eligible=True, segments=True)  # the block does not pay: nor do the segments
    assert not any(observe_all(slow_block, [0.01] * 4, [shape] * 4, 2000))
    assert "compile_segment" not in slow_block.decision


def test_who_is_eligible(tmp_path, monkeypatch):
    assert AutoCompile.for_run(tiny_config(tmp_path)).eligible
    assert AutoCompile.for_run(tiny_config(tmp_path)).segments  # compile_segment="auto", the default
    assert not AutoCompile.for_run(tiny_config(tmp_path, compile_segment=8)).segments
    assert not AutoCompile.for_run(tiny_config(tmp_path), world=2).eligible
    eq = AutoCompile.for_run(tiny_config(tmp_path, loss="equilibrium", depth_offset=None, max_iter=6))
    assert not eq.eligible and "varying number of rows" in eq.reason
    monkeypatch.setenv("PATH", str(tmp_path))  # no C++ compiler to be found
    monkeypatch.delenv("CXX", raising=False)
    bare = AutoCompile.for_run(tiny_config(tmp_path))
    assert not bare.eligible and "no C++ compiler" in bare.reason
    monkeypatch.undo()
    explicit = AutoCompile.for_run(tiny_config(tmp_path, compile=False))
    assert explicit.decided and not explicit.observe(0, 10, 1.0, (1,))
    with pytest.raises(ConfigError, match="compile must be True, False or 'auto', got 'yes'"):
        tiny_config(tmp_path, compile="yes")


def fast_compile(monkeypatch):
    """torch.compile through AOTAutograd without code generation: the compiled path, in seconds."""
    monkeypatch.setattr(CompiledBlock, "backend", "aot_eager")


def test_a_run_that_pays_compiles_and_trains_as_the_eager_one(tmp_path, monkeypatch):
    compiled = []  # the block's forward as torch.compile receives it (returned as is: numerics are tested below)
    monkeypatch.setattr(torch, "compile", lambda fn, **k: compiled.append(fn) or fn)
    monkeypatch.setattr(ac, "COMPILE_SECONDS", 0.0)  # any saving pays
    monkeypatch.setattr(ac, "SEGMENT_SECONDS", 0.0)  # the segments too
    fixed = dict(min_length=6, steps=6, eval_size=0)  # one shape, so the rule applies
    auto = Trainer(tiny_config(tmp_path / "auto", **fixed))
    eager = Trainer(tiny_config(tmp_path / "eager", compile=False, **fixed))
    for step in range(6):
        a, b = auto.step(step), eager.step(step)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-7)
        assert auto.model.config.arch.compile == (step >= ac.PROBE_STEPS)  # decided after 1 + 3 steps
        assert auto.model.config.arch.compile_segment == (ac.SEGMENT_LENGTH if step >= ac.PROBE_STEPS else 0)
    # the segments' functions (one per length) and the block's (the no-grad iterations), once each
    assert len(compiled) == 6 and eager.model._compiled_block is None
    for p, q in zip(auto.model.parameters(), eager.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)


def compiled_and_eager_grads(tmp_path, **overrides):
    c = tiny_config(tmp_path / "c", compile=True, min_length=6, eval_size=0, **overrides)
    e = tiny_config(tmp_path / "e", compile=False, min_length=6, eval_size=0, **overrides)
    out = []
    for config in (c, e):
        trainer = Trainer(config)
        x, y = trainer.batches(0)
        loss, _, _ = trainer.objective(x, y, config.depth(x), 0)
        loss.backward()
        out.append((loss.detach(), [p.grad.clone() for p in trainer.model.parameters()]))
    return out


def test_the_compiled_step_gives_the_eager_loss_and_gradients(tmp_path, monkeypatch):
    fast_compile(monkeypatch)
    (lc, gc), (le, ge) = compiled_and_eager_grads(tmp_path, alpha=0.5)
    torch.testing.assert_close(lc, le, rtol=1e-5, atol=1e-7)
    for a, b in zip(gc, ge):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_the_inductor_compiled_step_gives_the_eager_loss_and_gradients(tmp_path):
    torch._dynamo.reset()
    (lc, gc), (le, ge) = compiled_and_eager_grads(tmp_path, alpha=0.5)
    torch.testing.assert_close(lc, le, rtol=1e-4, atol=1e-6)
    for a, b in zip(gc, ge):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


def test_the_monitor_measures_a_compiled_model_through_the_eager_block(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "compile", lambda fn, **k: calls.append(fn) or fn)
    trainer = Trainer(tiny_config(tmp_path, compile=True, stability_every=2, min_length=6))
    eager = Trainer(tiny_config(tmp_path / "eager", compile=False, min_length=6))
    eager.model.load_state_dict(trainer.model.state_dict())
    probe = probe_batch(trainer.task, 4, 0)
    compiled = StabilityMonitor(trainer.model, probe, seed=0).measure(1)
    assert trainer.model.config.arch.compile and not calls  # measured, and nothing compiled for it
    reference = StabilityMonitor(eager.model, probe, seed=0).measure(1)
    assert compiled.keys() == reference.keys()
    for key, value in reference.items():
        if isinstance(value, float):
            assert compiled[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
        else:
            assert compiled[key] == value, key


def test_the_command_line_flag(capsys):
    import argparse

    from deqloop.cli.train import add

    parser = argparse.ArgumentParser()
    add(parser.add_subparsers(), "prefix_sums")
    for argv, expected in ((["--compile"], True), (["--compile", "auto"], "auto"), (["--compile", "false"], False)):
        assert parser.parse_args(["train", *argv]).compile == expected
    assert not hasattr(parser.parse_args(["train"]), "compile")  # absent: the config's default, auto
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--compile", "maybe"])
    assert "--compile takes auto, true or false, got 'maybe'" in capsys.readouterr().err


def test_evaluation_compiles_its_plain_iterations_and_solves_where_it_pays(monkeypatch):
    from deqloop.eval.evaluate import evaluate_model
    from deqloop.model import LoopedDEQ
    from deqloop.tasks import get_task

    task = get_task("prefix_sums", length=6)
    model = LoopedDEQ(vocab_size=task.vocab_size, num_classes=task.num_classes, grid=task.grid, width=16, heads=2)
    splits = {"val": task.make("val", 8, seed=1), "hard": task.make("hard", 8, seed=1)}
    states = []
    monkeypatch.setattr(torch, "compile", lambda fn, **k: (lambda *a: states.append(model.config.arch.compile)
                                                            or fn(*a)))
    eager = evaluate_model(model, splits, task, iters=[1, 4], solver="anderson", compile=False)
    assert not states
    monkeypatch.setattr(ac, "COMPILE_SECONDS", 0.0)  # any saving pays
    auto = evaluate_model(model, splits, task, iters=[1, 4], solver="anderson")
    # 2 splits × 4 iterations through the compiled block, then the solves' evaluations
    solves = len(states) - 2 * 4
    assert solves > 0 and all(states)
    states.clear()
    evaluate_model(model, splits, task, iters=[1, 4])
    assert len(states) == 2 * 4  # without the solves
    assert not model.config.arch.compile  # restored
    assert auto.compiled == {"val": True, "hard": True} and eager.compiled == {"val": False, "hard": False}
    timed = ("seconds", "compiled")
    assert {k: v for k, v in auto.to_dict().items() if k not in timed} == \
        {k: v for k, v in eager.to_dict().items() if k not in timed}
    monkeypatch.setattr(ac, "COMPILE_SECONDS", 1e9)
    states.clear()
    evaluate_model(model, splits, task, iters=[1, 4], compile="auto")
    assert not states
