"""Measure a model on named splits: :func:`evaluate_model` (one pass per split: its iteration sweep,
then its solve, compiled where that pays) and :func:`evaluate_run` (a saved run on its task's bands).

    report = evaluate_run(Run.load("runs/x/last.pt"), iters=[1, 10, 100], n=256)
    print(report.text())
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from deqloop.errors import ConfigError
from deqloop.eval.curves import adaptive_accuracy, iteration_sweep
from deqloop.eval.report import EvalReport, IterationCurves, paper_iterations
from deqloop.validate import integer

__all__ = ["DROP_FRACTION", "compile_pays_for", "evaluate_model", "evaluate_run"]

DROP_FRACTION = 0.1  # evaluate_model drops an example at this fraction of the settling tolerance (see there)
EVAL_COMPILE_SAVING = 0.35  # the share of an evaluation's time compiling saves (measured 1.57–1.70×: 36–41 %)


def compile_pays_for(model: torch.nn.Module, x: torch.Tensor, iterations: int) -> bool:
    """Whether compiling pays for ``iterations`` plain iterations on ``x`` (in batches of
    :func:`~deqloop.eval.curves.auto_batch_size`): one eager iteration on the first batch is timed
    and the rule of :mod:`deqloop.train.autocompile` applied with the evaluation's saving."""
    from deqloop.eval.curves import auto_batch_size
    from deqloop.train.autocompile import compile_pays

    if getattr(getattr(model, "config", None), "arch", None) is None or model.config.arch.compile:
        return False
    size = auto_batch_size(x)
    device = next(model.parameters()).device
    with torch.no_grad():
        e = model.embed(x[:size].to(device))
        z = model.step(e, e)  # warms caches
        start = time.perf_counter()
        model.step(z, e).sum().item()  # (the item waits for an accelerator)
        seconds = time.perf_counter() - start
    calls = -(-len(x) // size) * iterations
    return compile_pays(seconds, calls, saving=EVAL_COMPILE_SAVING)


@contextlib.contextmanager
def _compiled(model: torch.nn.Module, enabled: bool):
    """The model's block compiled inside (when ``enabled``), its config restored after."""
    if not enabled:
        yield
        return
    previous = model.config
    model.config = previous.replace(compile=True)
    try:
        yield
    finally:
        model.config = previous


def evaluate_model(
    model: torch.nn.Module,
    splits: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    task: Any,
    *,
    iters: Sequence[int],
    train_depth: int | None = None,
    settle_rtol: float = 1e-3,
    solver: str | None = None,
    solver_rtol: float = 1e-4,
    cells: bool = True,
    baselines: bool = True,
    device: str | torch.device | None = None,
    compile: bool | str = "auto",
    drop_rtol: float | str | None = "auto",
    examples: int = 4,
) -> EvalReport:
    """Iteration curves and settling statistics of ``model`` on named ``(x, y)`` splits.

    ``compile``: run each split's plain iterations and its solve through the compiled block —
    ``"auto"`` where it pays (:func:`compile_pays_for`, counting ``max(iters)`` calls for each), ``True``
    always, ``False`` never. The block's batch dimension is compiled dynamic, so the batches that
    shrink as examples are dropped or converge need no new graph.

    ``drop_rtol``: the sweep stops iterating an example once its state changes by no more than this,
    relative (:func:`~deqloop.eval.curves.iteration_sweep`), and carries its answer there to every
    later count — ``"auto"`` (the default) at :data:`DROP_FRACTION` × ``settle_rtol``, a number ≤
    ``settle_rtol``, or None: never (every example iterated to ``max(iters)``). Measured with
    :func:`~deqloop.eval.curves.iteration_sweep` on a seed-cpu prefix-sums model (internal recall,
    post norm, lr 1e-3, seed 0; its 128 hard strings of 512 bits, 500 iterations): dropping at 1e-4
    left every exact-match value and the settling statistics as they were and moved the fraction of
    cells right by at most 1e-4, with 360 evaluations an example instead of 500; dropping at the
    settling tolerance 1e-3 itself took 340 and moved the cell fraction by up to 2e-3 (answers on
    single cells still changed after settling).

    ``task`` supplies ``correct``, ``name`` and, if ``cells``, ``cell_accuracy`` (the fraction of
    cells right, reported beside exact match). With ``solver`` each split is also solved to
    ``solver_rtol`` with at most ``max(iters)`` evaluations. With ``baselines``, a task that has a
    ``baselines(x, y)`` method (:meth:`deqloop.tasks.base.Task.baselines`) has them measured on
    each split's examples.

    ``examples``: how many examples of the ``hard`` split (else of the last split) the report shows
    with the model's answer after the paper's count (:func:`paper_iterations`, else the last count),
    through the task's ``show``: the readouts the sweep scored there, no further pass.
    """
    if not splits:
        raise ConfigError("nothing to evaluate: no splits")
    integer("examples", examples, minimum=0)
    if isinstance(drop_rtol, str):
        if drop_rtol != "auto":
            raise ConfigError(f"drop_rtol must be 'auto', a tolerance or None, got {drop_rtol!r}")
        drop_rtol = DROP_FRACTION * settle_rtol
    curves = IterationCurves(list(iters), train_depth=train_depth)
    report = EvalReport(checkpoint="", task=task.name, n={k: len(v[0]) for k, v in splits.items()},
                        curves=curves, settle_rtol=settle_rtol, paper_iterations=paper_iterations(model))
    shown = ("hard" if "hard" in splits else list(splits)[-1]) if examples > 0 and hasattr(task, "show") else None
    at = report.paper_iterations if report.paper_iterations in curves.iters else curves.iters[-1]
    cell_accuracy = task.cell_accuracy if cells else None
    if cell_accuracy is not None:
        report.cells = IterationCurves(list(iters), train_depth=train_depth)
    if solver is not None:
        report.solver_name, report.solver_rtol = solver, solver_rtol
    report.drop_rtol = drop_rtol
    calls = curves.iters[-1] * (2 if solver is not None else 1)  # the sweep's iterations and the solve's at most
    for name, (x, y) in splits.items():  # one split at a time: its sweep, then its solve, compiled or not
        start = time.perf_counter()
        compiled = compile is True or (compile == "auto" and compile_pays_for(model, x, calls))
        report.compiled[name] = compiled
        with _compiled(model, compiled):
            sweep = iteration_sweep(model, x, y, task.correct, curves.iters, rtol=settle_rtol, drop_rtol=drop_rtol,
                                    cells=cell_accuracy, device=device, keep=(at, examples) if name == shown else None)
            report.seconds[name] = {"sweep": time.perf_counter() - start}
            if solver is not None:
                start = time.perf_counter()
                res = adaptive_accuracy(model, x, y, task.correct, solver=solver, max_iter=curves.iters[-1],
                                        rtol=solver_rtol, device=device)
                report.solver[name] = res.summary()
                report.seconds[name]["solve"] = time.perf_counter() - start
        if sweep.kept is not None:
            k = len(sweep.kept)
            report.examples = {"split": name, "iterations": at, "rows": task.show(x[:k], y[:k], sweep.kept)}
        curves.add(name, sweep.accuracy)
        if report.cells is not None and sweep.cell_accuracy is not None:
            report.cells.add(name, sweep.cell_accuracy)
        report.settling[name] = sweep.settle_summary()
        report.dynamics[name] = {"norm_ratio": sweep.norm_ratio, "cosine": sweep.cosine}
        report.evaluations[name] = float(sweep.evaluations.double().mean())
        measure = getattr(task, "baselines", None) if baselines else None
        if measure is not None:
            report.baselines[name] = {k: float(v) for k, v in measure(x, y).items()}
    return report


def evaluate_run(
    run: Any,
    *,
    iters: Sequence[int],
    n: int = 512,
    splits: Mapping[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    bands: Sequence[str] = ("val", "hard"),
    settle_rtol: float = 1e-3,
    solver: str | None = None,
    solver_rtol: float = 1e-4,
    cells: bool = True,
    seed: int = 12345,
    device: str | torch.device = "cpu",
    compile: bool | str = "auto",
    drop_rtol: float | str | None = "auto",
    examples: int = 4,
) -> EvalReport:
    """Evaluate a :class:`deqloop.run.Run` on its task's ``bands`` and on extra ``splits``.

    Each split gets an iteration curve and settling statistics from one pass; with ``solver``
    (e.g. ``"anderson"``) each split is also solved to ``solver_rtol`` with at most
    ``max(iters)`` evaluations. ``compile``, ``drop_rtol`` and ``examples`` as :func:`evaluate_model`'s.
    """
    task = run.require_task()
    sets = {band: task.make(band, n, seed=seed) for band in bands}
    sets.update(splits or {})
    if not sets:
        raise ConfigError("nothing to evaluate: no bands and no splits")
    report = evaluate_model(run.model.to(device), sets, task, iters=iters, train_depth=run.train_depth,
                            settle_rtol=settle_rtol, solver=solver, solver_rtol=solver_rtol, cells=cells, device=device,
                            compile=compile, drop_rtol=drop_rtol, examples=examples)
    report.checkpoint = str(run.path)
    return report
