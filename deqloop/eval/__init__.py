"""Evaluation: accuracy against test-time iterations and adaptive compute.

    deqloop/eval/curves.py   the measurements (no I/O): iteration_sweep, adaptive_accuracy
    deqloop/eval/report.py   tables, plots, EvalReport
    deqloop/eval/evaluate.py evaluate_model / evaluate_run: one pass per split
"""

from deqloop.eval.curves import (
    AdaptiveResult,
    Sweep,
    accuracy_by_iterations,
    adaptive_accuracy,
    auto_batch_size,
    check_iters,
    iteration_sweep,
    parse_iters,
)
from deqloop.eval.evaluate import evaluate_model, evaluate_run
from deqloop.eval.report import EvalReport, IterationCurves, settle_table

__all__ = ["AdaptiveResult", "EvalReport", "IterationCurves", "Sweep", "accuracy_by_iterations", "adaptive_accuracy",
           "auto_batch_size", "check_iters", "evaluate_model", "evaluate_run", "iteration_sweep", "parse_iters",
           "settle_table"]
