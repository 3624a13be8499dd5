"""deqloop.eval.report on values: the best point of a curve, the numbers in the tables, and the
report's dictionary."""

from __future__ import annotations

import pytest

from deqloop.errors import ConfigError
from deqloop.tasks import Task
from deqloop.eval.report import PAPER_ITERATIONS, EvalReport, IterationCurves, dynamics_table, settle_table


def test_best_is_the_highest_accuracy_at_the_fewest_iterations():
    c = IterationCurves([30, 1, 3, 10, 100])  # sorted to 1, 3, 10, 30, 100
    c.add("val", [0.5, 0.9, 0.9, 0.1, 0.9])
    c.add("hard", [0.0, 0.0, 0.25, 0.75, 0.5])
    c.add("flat", [0.0] * 5)
    assert c.best("val") == (3, 0.9)  # ties: fewest iterations
    assert c.best("hard") == (30, 0.75)
    assert c.best("flat") == (1, 0.0)
    with pytest.raises(KeyError):
        c.best("test")


def test_add_checks_the_length_and_stores_floats():
    c = IterationCurves([1, 2])
    with pytest.raises(ConfigError):
        c.add("val", [0.5])
    c.add("val", [1, 0])
    assert c.curves == {"val": [1.0, 0.0]} and all(type(a) is float for a in c.curves["val"])


def test_iteration_table_shows_percentages_and_marks_the_training_depth():
    c = IterationCurves([30, 1, 10], train_depth=10)
    c.add("val", [0.5, 0.875, 0.875])
    c.add("a_long_split", [0.0, 0.125, 1 / 3])  # a name longer than 8 widens every column to len + 2
    assert c.table().split("\n") == [
        "iterations           val  a_long_split",
        "-" * 38,
        "         1         50.0%          0.0%",
        "        10         87.5%         12.5%  <- training depth",
        "        30         87.5%         33.3%",
    ]
    c = IterationCurves([1, 10], train_depth=30)  # a depth not among the counts: a note below
    c.add("val", [0.25, 1.0])
    assert c.table().split("\n") == [
        "iterations       val",
        "-" * 20,
        "         1     25.0%",
        "        10    100.0%",
        "(training depth: 30 iterations)",
    ]
    c = IterationCurves([2])
    c.add("v", [0.5])
    assert c.table().split("\n") == ["iterations         v", "-" * 20, "         2     50.0%"]


def test_settle_table_numbers():
    rows = {
        "val": {"accuracy": 0.5, "iterations_mean": 12.4, "iterations_median": 9.0, "iterations_max": 40,
                "converged": 0.75},
        "hard": {"accuracy": 1 / 3, "iterations_mean": 3.0, "iterations_median": 2.0, "iterations_max": 7,
                 "converged": 0.125},
    }
    assert settle_table(rows, 1e-3).split("\n") == [
        "adaptive: each input iterates until its state changes by less than rtol=0.001",
        "split               accuracy  iters mean  median   max  settled",
        "-" * 63,
        "val                    50.0%        12.4       9    40    75.0%",
        "hard                   33.3%         3.0       2     7    12.5%",
    ]
    assert settle_table({}, 2.5e-4, what="fixed-point residual").split("\n")[0] == (
        "adaptive: each input iterates until its fixed-point residual changes by less than rtol=0.00025")


def test_eval_report_to_dict():
    curves = IterationCurves([1, 4], train_depth=4)
    curves.add("val", [0.25, 0.5])
    settling = {"val": {"accuracy": 0.5, "iterations_mean": 2.0, "iterations_median": 2.0, "iterations_max": 4,
                        "converged": 1.0}}
    report = EvalReport(checkpoint="runs/x/last.pt", task="prefix_sums", n={"val": 8}, curves=curves,
                        settle_rtol=1e-3, settling=settling)
    curves_dict = {"iters": [1, 4], "train_depth": 4, "accuracy": {"val": [0.25, 0.5]}}
    assert report.to_dict() == {
        "checkpoint": "runs/x/last.pt", "task": "prefix_sums", "n": {"val": 8}, "curves": curves_dict,
        "cells": None, "settle_rtol": 1e-3, "settling": settling, "solver_name": None, "solver_rtol": None,
        "solver": {}, "baselines": {}, "dynamics": {}, "drop_rtol": None, "evaluations": {}, "seconds": {}, "compiled": {},
        "examples": {},
        "paper": {"iterations": 500, "accuracy": {"val": None}}, "best": {"val": [4, 0.5]},
    }
    cells = IterationCurves([1, 4], train_depth=4)
    cells.add("val", [0.75, 0.875])
    solver = {"val": {**settling["val"], "residual_median": 1e-5}}
    report.cells, report.solver_name, report.solver_rtol, report.solver = cells, "anderson", 1e-4, solver
    d = report.to_dict()
    assert d["cells"] == {"iters": [1, 4], "train_depth": 4, "accuracy": {"val": [0.75, 0.875]}}
    assert (d["solver_name"], d["solver_rtol"], d["solver"]) == ("anderson", 1e-4, solver)
    assert d["curves"] == curves_dict and d["settle_rtol"] == 1e-3


class ExactTask:
    name = "exact"

    @staticmethod
    def correct(logits, y, x=None):
        return (logits.argmax(-1) == y).all(-1)

    @staticmethod
    def cell_accuracy(logits, y, x=None):
        return (logits.argmax(-1) == y).double().mean(-1)


def test_evaluate_model_collects_the_sweep_and_the_solver_numbers():
    import torch

    from deqloop.eval.curves import adaptive_accuracy, iteration_sweep
    from deqloop.eval.evaluate import evaluate_model
    from deqloop.model import EARLIER_FORMS, LoopedDEQ

    torch.manual_seed(0)  # the earlier block: the instance whose solver counts the test below relies on
    model = LoopedDEQ(vocab_size=3, num_classes=2, grid=(4,), width=8, heads=2, mlp_ratio=2.0, **EARLIER_FORMS).double()
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randint(0, 3, (6, 4), generator=gen), torch.randint(0, 2, (6, 4), generator=gen)
    task = ExactTask()
    report = evaluate_model(model, {"val": (x, y)}, task, iters=[4, 1, 2], train_depth=4, solver="picard",
                            solver_rtol=0.2)
    sweep = iteration_sweep(model, x, y, task.correct, [1, 2, 4], rtol=1e-3, cells=task.cell_accuracy)
    assert (report.task, report.checkpoint, report.n, report.settle_rtol) == ("exact", "", {"val": 6}, 1e-3)
    assert report.curves.to_dict() == {"iters": [1, 2, 4], "train_depth": 4, "accuracy": {"val": sweep.accuracy}}
    assert report.cells.to_dict() == {"iters": [1, 2, 4], "train_depth": 4,
                                      "accuracy": {"val": sweep.cell_accuracy}}
    assert report.settling == {"val": sweep.settle_summary()}
    assert report.dynamics == {"val": {"norm_ratio": sweep.norm_ratio, "cosine": sweep.cosine}}
    res = adaptive_accuracy(model, x, y, task.correct, solver="picard", max_iter=4, rtol=0.2)
    assert (report.solver_name, report.solver_rtol) == ("picard", 0.2)
    assert report.solver == {"val": res.summary()}
    # the counts tell the solver's tolerance and evaluation limit apart from the defaults
    assert res.summary()["converged"] > 0 and res.summary()["iterations_mean"] < 4
    strict = adaptive_accuracy(model, x, y, task.correct, solver="picard", max_iter=4, rtol=1e-4).summary()
    assert strict != report.solver["val"] and strict["iterations_max"] == 4
    default = evaluate_model(model, {"val": (x, y)}, task, iters=[1, 4], solver="picard")
    assert (default.solver_rtol, default.solver["val"]) == (1e-4, strict)
    plain = evaluate_model(model, {"val": (x, y)}, task, iters=[1], cells=False)
    assert plain.cells is None and plain.solver == {} and plain.solver_name is None
    with pytest.raises(ConfigError):
        evaluate_model(model, {}, task, iters=[1])


class TaskWithBaselines(ExactTask):
    name = "with_baselines"

    @staticmethod
    def baselines(x, y):
        return {"zeros/correct": float((y == 0).all(-1).double().mean())}


def test_evaluate_model_stores_the_tasks_baselines_per_split():
    import torch

    from deqloop.eval.evaluate import evaluate_model
    from deqloop.model import LoopedDEQ

    torch.manual_seed(0)
    model = LoopedDEQ(vocab_size=3, num_classes=2, grid=(4,), width=8, heads=2, mlp_ratio=2.0).double()
    x = torch.zeros(4, 4, dtype=torch.long)
    y = torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
    report = evaluate_model(model, {"val": (x, y), "hard": (x[:2], y[:2])}, TaskWithBaselines(), iters=[1])
    assert report.baselines == {"val": {"zeros/correct": 0.5}, "hard": {"zeros/correct": 0.5}}
    assert report.to_dict()["baselines"] == report.baselines
    assert "baselines on the same examples (no model):\n  val: zeros/correct 50.0%" in report.text()
    assert evaluate_model(model, {"val": (x, y)}, TaskWithBaselines(), iters=[1], baselines=False).baselines == {}
    assert evaluate_model(model, {"val": (x, y)}, ExactTask(), iters=[1]).baselines == {}


def test_the_papers_number_is_the_accuracy_at_500_beside_the_best():
    assert PAPER_ITERATIONS == 500
    c = IterationCurves([1, 30, 500, 1000])
    c.add("val", [0.25, 1.0, 0.75, 0.5])
    c.add("hard", [0.0, 0.125, 0.5, 0.625])
    assert c.at("val") == 0.75 and c.at("hard") == 0.5  # not the last count (1000), not the best
    assert c.at("val", 30) == 1.0 and c.at("val", 2) is None
    assert c.headline().split("\n") == [
        "split                   @500      best      at",
        "-" * 46,
        "val                    75.0%    100.0%      30",
        "hard                   50.0%     62.5%    1000",
    ]
    short = IterationCurves([1, 10])
    short.add("val", [0.5, 1.0])
    assert short.headline(10).split("\n")[2] == "val                   100.0%    100.0%      10"
    assert short.headline().split("\n")[2] == "val                        —    100.0%      10"
    report = EvalReport(checkpoint="c", task="t", n={"val": 8, "hard": 8}, curves=c, settle_rtol=1e-3,
                        settling={k: {"accuracy": 0.0, "iterations_mean": 1.0, "iterations_median": 1.0,
                                      "iterations_max": 1, "converged": 0.0} for k in ("val", "hard")})
    d = report.to_dict()
    assert d["paper"] == {"iterations": 500, "accuracy": {"val": 0.75, "hard": 0.5}}
    assert d["best"] == {"val": [30, 1.0], "hard": [1000, 0.625]}
    assert c.headline() in report.text()


def test_dynamics_table_numbers():
    dyn = {"val": {"norm_ratio": [1.0, 0.5], "cosine": [0.25, 1.0]},
           "hard": {"norm_ratio": [1.0, 12345.0], "cosine": [-0.5, 0.99999]}}
    assert dynamics_table(dyn, [1, 30]).split("\n") == [
        "state by test-time iterations: ‖z_T‖/‖z_1‖ | cos(z_T-1, z_T)",
        "iterations                val               hard",
        "-" * 48,
        "         1         1 | 0.2500        1 | -0.5000",
        "        30       0.5 | 1.0000  1.23e+04 | 1.0000",
    ]


def test_the_untied_baselines_paper_number_is_at_one_iteration():
    import torch

    from deqloop.eval.evaluate import evaluate_model
    from deqloop.eval.report import paper_iterations
    from deqloop.model import LoopedDEQ

    torch.manual_seed(0)
    looped = LoopedDEQ(vocab_size=3, num_classes=2, grid=(4,), width=8, heads=2, mlp_ratio=2.0)
    untied = LoopedDEQ(vocab_size=3, num_classes=2, grid=(4,), width=8, heads=2, mlp_ratio=2.0, blocks=2, recall="none")
    assert paper_iterations(looped) == 500 and paper_iterations(untied) == 1
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randint(0, 3, (6, 4), generator=gen), torch.randint(0, 2, (6, 4), generator=gen)
    report = evaluate_model(untied, {"val": (x, y)}, ExactTask(), iters=[1, 500])
    d = report.to_dict()
    assert d["paper"] == {"iterations": 1, "accuracy": {"val": report.curves.curves["val"][0]}}
    assert "accuracy at 1 iteration)" in report.text() and "@1 " in report.text()


class ShownTask(ExactTask):
    """A task with the protocol's default ``show`` (tokens and verdicts)."""

    name = "shown"
    show = Task.show


def test_the_report_shows_a_few_hard_examples_with_the_answers_the_sweep_read():
    import torch

    from deqloop.eval.evaluate import evaluate_model
    from deqloop.model import LoopedDEQ

    torch.manual_seed(0)
    model = LoopedDEQ(vocab_size=3, num_classes=2, grid=(4,), width=8, heads=2, mlp_ratio=2.0).double()
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randint(0, 3, (6, 4), generator=gen), torch.randint(0, 2, (6, 4), generator=gen)

    def answers(t):  # the readout after t plain iterations, computed here by hand
        with torch.no_grad():
            e = model.embed(x)
            z = model.initial_state(e)
            for _ in range(t):
                z = model.step(z, e)
            return model.readout(z)

    task = ShownTask()
    splits = {"hard": (x[:5], y[:5]), "val": (x, y)}
    report = evaluate_model(model, splits, task, iters=[1, 3], examples=2)
    # the hard split (not the last), at the last count (500 was not scored), its first two examples
    assert report.examples == {"split": "hard", "iterations": 3, "rows": task.show(x[:2], y[:2], answers(3)[:2])}
    assert report.to_dict()["examples"] == report.examples
    lines = report.text().split("\n")
    at = lines.index("examples of hard after 3 iterations (the model's answer as the task shows it):")
    rows = report.examples["rows"]
    assert lines[at + 1:at + 3] == [f"  {i + 1}. input {r['input']}; target {r['target']}; predicted {r['predicted']}; "
                                    f"correct {r['correct']}" for i, r in enumerate(rows)]
    at500 = evaluate_model(model, {"val": (x, y)}, task, iters=[1, 500, 600], examples=3)  # no hard: the last split
    assert at500.examples == {"split": "val", "iterations": 500, "rows": task.show(x[:3], y[:3], answers(500)[:3])}
    assert evaluate_model(model, splits, task, iters=[1], examples=0).examples == {}
    assert evaluate_model(model, splits, ExactTask(), iters=[1]).examples == {}  # a task without show
    assert "examples of" not in evaluate_model(model, splits, ExactTask(), iters=[1]).text()
    with pytest.raises(ConfigError, match="examples"):
        evaluate_model(model, splits, task, iters=[1], examples=-1)


def test_examples_text_cuts_long_values():
    from deqloop.eval.report import examples_text

    shown = {"split": "hard", "iterations": 1, "rows": [{"input": "0" * 12, "correct": "no"}]}
    assert examples_text(shown, width=8).split("\n") == [
        "examples of hard after 1 iteration (the model's answer as the task shows it):",
        "  1. input 0000000…; correct no",
    ]
