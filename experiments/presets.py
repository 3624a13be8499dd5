"""Sweep presets: which configurations to train, at what scale, and how to measure them.

A run is one point of the grid recall × norm × regime × task × seed. ``regime`` is how the loop
is trained: ``"progressive"`` (backpropagation through plain iterations, the truncated progressive
term weighted by ``alpha = 0.5``, z₀ detached at n = 0: the form the committed results were
measured with; the paper's is ``alpha = 1`` with z₀'s gradient, the ``paper`` preset's), ``"implicit"`` (fixed-point training with
exact implicit differentiation) or ``"phantom"`` (fixed-point training with the phantom
gradient: backpropagation through 5 damped steps, τ = 0.8, from the detached fixed point).

* ``tiny``: seconds per run on CPU; for tests and for checking a machine.
* ``cpu``: small widths and short training, seed 0, on the 2-core machine with two runs at a
  time (measured there, training plus evaluation and analysis):

  - prefix sums, the whole grid of recall × norm × regime (36 runs), the regimes being the
    progressive loss and fixed-point training with the recipe that did best for each gradient in
    the ``recipes`` ablation judged by the Anderson solve (``phantom+budget``,
    ``implicit+fallback+warm+budget``): about 2.5 min a run, about 45 min in all with two at a
    time;
  - sudoku by blanks (train 4–24, hard 25–35, also tested on 36–45 and 46–55 blanks): all recalls
    × post and sandwich norm × progressive (6 runs), 500 steps, about 10 min of training a run;
  - chess, the same grid: 15–30 min a run.

  Everything else (other norms and regimes, more seeds) is one flag away, at the same scale:
  ``--norms``, ``--regimes`` and ``--seeds`` replace the default grid's axis for every task.
* ``recipes``: the fixed-point training recipes on the cpu prefix-sums cell (internal recall,
  post norm, width 32, local window 3, train 4–12 bits, test 48): each recipe alone (warm start,
  Jacobian penalty, fixed-point correction, mixed initial states, a contractive gate, a
  40-iteration budget) with the
  exact implicit and with the phantom gradient, the Neumann adjoint, and the plain regimes beside
  them, 3 seeds each (``regime`` names like ``implicit+warm``; see ``REGIME_TRAIN``).
* ``paper``: the paper's prefix-sums split on CPU in the paper's regime (train on lengths 8–32
  bits, reached by a difficulty schedule from 4–8 bits over the first 900 of 1,500 steps; test at
  512 bits with up to 600 iterations): internal recall, post norm, width 32, local attention over
  5 cells (the paper's kernel), trained with the paper's progressive loss (``alpha = 1``, z₀'s
  gradient kept at n = 0) through 30 iterations and its schedule (exponential warm-up over 150
  steps, ×0.1 from step 900), 3 seeds. Summaries go to ``results/paper_split`` (their run names
  are the cpu grid's).
* ``chess``: chess at a larger CPU budget, one run of about 45 min in the background: the cpu
  chess cell (internal recall, post norm, width 64) trained for 3,000 steps on the whole ≤ 1600
  Lichess file (batch 64, about 10 passes), tested on 1,024 puzzles rated 1601–2000 beside the
  random-legal and greedy baselines. Summaries go to ``results/chess_long``.
* ``seed-gpu``: the paper's own grid, as its authors ran it (``experiments/run_all.bash``): recall
  internal / external / none / fixed (the untied baseline: 15 different blocks, no recall, one
  iteration) × residual peri / pre / gru (GRU-cell merge, peri norm) / post × prefix sums (32 → 512
  bits, local attention of kernel 5), sudoku (Sudoku-Extreme split at its 80th rating percentile:
  ``--sudoku-extreme DIR`` with its ``train.csv`` and ``test.csv``) and chess (Lichess ≤ 1600 →
  1601–2000) × lr 1e-4, 3e-4, 1e-3 (sudoku also 3e-3) × seeds 0, 1, 2, in the ``paper`` regime
  (progressive loss, alpha 1, z₀'s gradient kept at n = 0, training depth 30, the paper's
  schedule), width 256, 8 heads, batch 500, bf16, tested at 1…500 iterations; summaries go to
  ``results/seed_gpu``. ``benchmarks/gpu.sh`` runs it on a GPU.
* ``seed-cpu``: the same grid and regime scaled to 2 CPU cores: width 32 (64 on boards), 4 heads,
  batch 64, 600 steps on prefix sums (1,500 on boards), sudoku by blanks (4–24 → 25–35, since
  Sudoku-Extreme is not bundled), 128 test examples; every other setting the paper's. Summaries go
  to ``results/seed_cpu``. Measured (prefix sums, internal recall, post norm, lr 1e-3, one
  thread): about 7 min of CPU time a run (2.7 min training, 3.8 min evaluation at 512 bits up to
  500 iterations, 0.4 min analysis); 30 min of wall time on the 2-core machine shared with a
  dozen other processes. The 144 prefix-sums runs take about 8.5 h with two at a time on a
  quiet machine; that first run reached 87.5 % on 32 bits and 10.2 % on 512 bits at 500
  iterations.
* ``gpu``: the paper's scale (width 256, 8 heads, bf16 on CUDA) on deqloop's cpu grid.

The cpu, recipes and gpu presets run the stability monitor (``stability_every``: every 25 steps
on CPU, about 5 % of a prefix-sums run's training time by ``benchmarks/monitor.py``), seed-cpu
every 50 steps and seed-gpu every 100–250; its traces go into each run's summary, and RESULTS.md
draws ρ over training for the seed presets.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from typing import Any

from deqloop.names import NORMS, RECALLS
from deqloop.train.recipes import EARLIER_PROGRESSIVE, PAPER_PROGRESSIVE, get_recipe, nested

# the regimes name their recipes explicitly: no warm start unless a regime asks for one (the
# equilibrium loss's default recipe would otherwise add it; deqloop.train.config.DEFAULT_RECIPE)
_EQ = {"loss": "equilibrium", "solver": "anderson", "pretrain_steps": 0}
_PHANTOM = {"backward": "phantom", "backward_options": {"steps": 5, "tau": 0.8}}
# the progressive regimes below keep the form their committed results were measured with: z0
# detached at n = 0 (the paper's form, z0's gradient kept, is TrainConfig's default)
_WARM = {"pretrain_fraction": 2 / 3, "alpha": 0.5, "detach_z0": True}  # the first two thirds of the steps progressive
# Each fixed-point training recipe alone (deqloop/train/objectives.py), with the exact implicit
# gradient and with the phantom gradient; the budget recipe runs the solver to 40 iterations.
_RECIPES = {"budget": {"max_iter": 40}, "warm": _WARM, "jac": {"jac_reg": 0.1}, "fp": {"fp_states": 3},
            "mixed": {"train_init": "mixed"}, "gate": {"gate": 0.5}}
REGIME_TRAIN: dict[str, dict[str, Any]] = {
    # the paper's regime: the progressive loss with alpha 1 and z0's gradient kept at n = 0, the
    # paper's learning-rate schedule (deepthinking/utils/training.py, train_model.py)
    "paper": dict(PAPER_PROGRESSIVE),
    "progressive": dict(EARLIER_PROGRESSIVE),
    "implicit": {**_EQ, "backward": "implicit"},
    "phantom": {**_EQ, **_PHANTOM},
    **{f"implicit+{name}": {**_EQ, "backward": "implicit", **r} for name, r in _RECIPES.items()},
    **{f"phantom+{name}": {**_EQ, **_PHANTOM, **r} for name, r in _RECIPES.items()},
    "neumann+budget": {**_EQ, "backward": "neumann", "backward_options": {"k": 5}, "max_iter": 40},
    # combinations: the warm start with an approximate adjoint and the 40-iteration budget did best
    # in single-seed trials (48 bits: phantom 84 %, Neumann 89 %; exact implicit 1 %)
    "phantom+warm+budget": {**_EQ, **_PHANTOM, **_WARM, "max_iter": 40},
    "neumann+warm+budget": {**_EQ, "backward": "neumann", "backward_options": {"k": 5}, **_WARM, "max_iter": 40},
    "implicit+warm+budget": {**_EQ, "backward": "implicit", **_WARM, "max_iter": 40},
    # the exact implicit gradient where the solves converged, the Jacobian-free one elsewhere
    "implicit+fallback+budget": {**_EQ, "backward": "implicit", "backward_options": {"fallback": "jfb"},
                                 "max_iter": 40},
    # ... after a warm start
    "implicit+fallback+warm+budget": {**_EQ, "backward": "implicit", "backward_options": {"fallback": "jfb"},
                                      **_WARM, "max_iter": 40},
}
REGIMES = tuple(REGIME_TRAIN)

# The paper's sweep has two more rows than deqloop's recall × norm (experiments/run_all.bash:17-19,
# 57-77 of the authors' code): the recall "fixed" (the untied baseline: 15 different blocks, no
# recall, trained and tested at one iteration) and the residual row "gru" (a GRU-cell merge with
# peri norm). A run spec names them as its recall and its norm; ``Preset.train_fields`` turns them
# into the model's settings (PAPER_ROWS).
FIXED_BLOCKS = 15
PAPER_ROWS: dict[str, dict[str, Any]] = {
    "fixed": {"recall": "none", "blocks": FIXED_BLOCKS, "max_iter": 1},
    "gru": {"residual": "gru", "norm": "peri"},
}
SPEC_RECALLS = (*RECALLS, "fixed")
SPEC_NORMS = (*NORMS, "gru")
_AXES: dict[str, tuple[str, ...] | None] = {"recall": SPEC_RECALLS, "norm": SPEC_NORMS, "regime": REGIMES,
                                            "lr": None, "seed": None}


def _outside(axis: str, values: tuple) -> list:
    """The values not allowed on ``axis`` (seeds: anything but a non-negative integer; learning
    rates: anything but a positive number)."""
    allowed = _AXES[axis]
    if axis == "lr":
        return [v for v in values if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0]
    if allowed is None:
        return [v for v in values if not isinstance(v, int) or isinstance(v, bool) or v < 0]
    return [v for v in values if v not in allowed]


def _allowed(axis: str) -> str:
    if axis == "lr":
        return "positive numbers"
    return ", ".join(_AXES[axis]) if _AXES[axis] is not None else "non-negative integers"


@dataclass(frozen=True)
class RunSpec:
    """One training run of a sweep."""

    task: str
    recall: str
    norm: str
    regime: str
    seed: int
    lr: float | None = None
    """The learning rate, where the preset sweeps it (None: the task's own, and no ``-lr`` in the name)."""

    @property
    def name(self) -> str:
        lr = f"-lr{self.lr:g}" if self.lr is not None else ""
        return f"{self.task}/{self.recall}-{self.norm}-{self.regime}{lr}-s{self.seed}"

    @property
    def config_key(self) -> tuple:
        """The configuration without the seed (seeds are averaged)."""
        key = (self.task, self.recall, self.norm, self.regime)
        return key if self.lr is None else (*key, self.lr)


@dataclass(frozen=True)
class Preset:
    """A sweep: the grid, the per-task training settings, and the measurement sizes.

    ``train`` maps a task to :class:`deqloop.train.TrainConfig` fields shared by all its runs (the
    task's own settings under ``"task_options"``); ``regime_train`` maps a regime to the fields that
    define it (they override ``train``).
    """

    name: str
    tasks: tuple[str, ...]
    seeds: tuple[int, ...]
    train: dict[str, dict[str, Any]]
    recalls: tuple[str, ...] = RECALLS
    norms: tuple[str, ...] = NORMS
    regimes: tuple[str, ...] = ("progressive", "implicit", "phantom")
    lrs: tuple[float, ...] | None = None
    """Learning rates to sweep (each run's ``lr``); None: one run per cell at the task's ``lr``."""
    task_grid: dict[str, dict[str, tuple]] = field(default_factory=dict)
    regime_train: dict[str, dict[str, Any]] = field(default_factory=lambda: dict(REGIME_TRAIN))
    eval_iters: tuple[int, ...] = (1, 2, 5, 10, 30, 100, 300, 500)
    eval_n: int = 512
    analyze_n: int = 32
    analysis: dict[str, Any] = field(default_factory=dict)
    extra_sets: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """More test sets per task, in the task's ``extra_split`` terms (e.g. sudoku's ``"blanks:36-45"``),
    evaluated like the hard split."""
    results: str = "results/runs"
    """Where the sweep writes this preset's run summaries by default (a preset whose runs share names
    with another's, e.g. the same cell at another split, keeps them apart)."""

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ValueError(f"preset {self.name!r} names no tasks")
        for name, axis, values in (("recalls", "recall", self.recalls), ("norms", "norm", self.norms),
                                   ("regimes", "regime", self.regimes), ("lrs", "lr", self.lrs or (1.0,))):
            if _outside(axis, values) or not values:
                raise ValueError(f"preset {self.name!r}: {name} {list(values)} — allowed: {_allowed(axis)}")
        missing = [t for t in self.tasks if t not in self.train]
        if missing:
            raise ValueError(f"preset {self.name!r} has no training settings for task(s) {missing}")
        for task, axes in self.task_grid.items():
            if task not in self.tasks:
                raise ValueError(f"preset {self.name!r}: task_grid names task {task!r}, not one of its tasks "
                                 f"{', '.join(self.tasks)}")
            for key, values in axes.items():
                if key not in _AXES:
                    raise ValueError(f"preset {self.name!r}: task_grid[{task!r}] has unknown axis {key!r}; "
                                     f"allowed: {', '.join(_AXES)}")
                if _outside(key, values) or not values:
                    raise ValueError(f"preset {self.name!r}: task_grid[{task!r}][{key!r}] = {list(values)} — "
                                     f"allowed: {_allowed(key)}")

    def grid(self, task: str) -> dict[str, tuple]:
        """The default grid of ``task``: the preset's axes, narrowed by ``task_grid`` where it names them."""
        base = {"recall": self.recalls, "norm": self.norms, "regime": self.regimes, "lr": self.lrs or (None,),
                "seed": self.seeds}
        return {**base, **self.task_grid.get(task, {})}

    def runs(self, **only: tuple | None) -> list[RunSpec]:
        """The runs of the grid, tasks first (so a partial sweep finishes whole tasks).

        Each keyword (``task``, ``recall``, ``norm``, ``regime``, ``lr``, ``seed``) that is given replaces
        that axis for every task: it may name any allowed value, also one outside the preset's
        default grid (``runs(task=("sudoku",), norm=("pre",))`` trains sudoku with pre norm at this
        preset's scale). Axes not given keep the default :meth:`grid` of each task.
        """
        unknown = [k for k in only if k not in ("task", *_AXES)]
        if unknown:
            raise ValueError(f"unknown filter {unknown[0]!r}; allowed: task, {', '.join(_AXES)}")
        tasks = only.get("task") or self.tasks
        bad = [t for t in tasks if t not in self.tasks]
        if bad:
            raise ValueError(f"task {bad} not in preset {self.name!r}: {', '.join(self.tasks)}")
        for key, values in only.items():
            bad = _outside(key, values or ()) if key != "task" else []
            if bad:
                raise ValueError(f"{key} {bad}; allowed: {_allowed(key)}")
        specs = []
        for task in tasks:
            grid = {**self.grid(task), **{k: v for k, v in only.items() if v and k != "task"}}
            specs += [RunSpec(task, r, n, g, s, lr) for r, n, g, s, lr in
                      itertools.product(grid["recall"], grid["norm"], grid["regime"], grid["seed"], grid["lr"])]
        return specs

    def train_fields(self, spec: RunSpec) -> dict[str, Any]:
        """The TrainConfig fields of ``spec`` (without ``out``)."""
        train = self.train[spec.task]
        fields = {"task": spec.task, **train, "task_options": dict(train.get("task_options", {})),
                  **self.regime_train[spec.regime], "recall": spec.recall, "norm": spec.norm, "seed": spec.seed}
        for row in (spec.recall, spec.norm):  # the paper's rows "fixed" and "gru" as model settings
            fields.update(PAPER_ROWS.get(row, {}))
        if spec.recall == "fixed":
            fields.pop("depth_offset", None)  # one iteration, whatever the input's length
        if spec.lr is not None:
            fields["lr"] = spec.lr
        fraction = fields.pop("pretrain_fraction", None)
        if fraction is not None:  # a warm start for a fraction of this task's steps
            fields["pretrain_steps"] = max(1, round(fraction * fields.get("steps", 1000)))
        if fields["loss"] == "equilibrium" and not fields.get("pretrain_steps"):
            fields.pop("depth_offset", None)  # plain-iteration depths belong to the progressive loss
        return fields

    def solves(self, spec: RunSpec) -> bool:
        """Whether ``spec``'s model is a loop to solve and analyse (not the paper's untied baseline)."""
        return spec.recall != "fixed"

    def eval_iters_for(self, spec: RunSpec) -> tuple[int, ...]:
        """The test-time counts of ``spec``: the preset's, or 1 alone for the untied baseline (the
        paper tests it at its one iteration, ``run_all.bash:71-77``)."""
        return self.eval_iters if self.solves(spec) else (1,)

    def with_(self, **changes: Any) -> "Preset":
        return dataclasses.replace(self, **changes)


def _cell(name: str) -> dict[str, Any]:
    """The TrainConfig fields a preset's runs of one task share: recipe ``name``'s settings
    (deqloop/train/recipes.py), the task's own under ``task_options``; the cell adds its regime."""
    return {k: v for k, v in nested(get_recipe(name).settings).items() if k != "task"}


# A sudoku or chess run takes 15–30 min on one core, so their default CPU grid is post and
# sandwich norm under the progressive regime; other cells are one flag away (--norms, --regimes).
_SMALL_GRID: dict[str, tuple] = {"norm": ("post", "sandwich"), "regime": ("progressive",)}

# The paper's grid (experiments/run_all.bash of the authors' code): recall internal / external /
# none / fixed × residual peri / pre / gru / post × prefix sums, sudoku, chess × lr 1e-4, 3e-4, 1e-3
# × seeds 0, 1, 2, trained by the progressive loss (alpha 1, z0's gradient at n = 0) at 30
# iterations with the paper's schedule, AdamW (weight decay 0.01, clip 1), width 256, 8 heads,
# local attention of kernel 5 on prefix sums and full attention on boards, batch 500, bf16, and
# tested at 1…500 iterations (recipes seed-gpu/*). The sudoku grid also runs lr 3e-3 (the paper's
# sudoku tables). seed-cpu/* are the same grid and regime on 2 CPU cores: width 32 (4 heads), batch
# 64 and fewer steps; sudoku by blanks since Sudoku-Extreme is not bundled (see the ``seed-cpu``
# entry of the module docstring for what it costs).
_SEED_GRID = dict(recalls=("internal", "external", "none", "fixed"), norms=("peri", "pre", "gru", "post"),
                  regimes=("paper",), lrs=(1e-4, 3e-4, 1e-3), seeds=(0, 1, 2))
_SEED_LRS = {"sudoku": {"lr": (1e-4, 3e-4, 1e-3, 3e-3)}}
_SEED_EVAL = (1, 2, 5, 10, 20, 30, 50, 100, 200, 300, 400, 500)
_TASKS = ("prefix_sums", "sudoku", "chess")


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        name="tiny",
        tasks=("prefix_sums",),
        seeds=(0,),
        recalls=("none", "internal"),
        norms=("post",),
        train={"prefix_sums": _cell("tiny/prefix_sums")},
        eval_iters=(1, 4, 8, 16),
        eval_n=32,
        analyze_n=4,
        analysis=dict(eig_ncv=8, eig_maxiter=5, resolvent_ncv=4, resolvent_maxiter=3, linear_maxiter=3,
                      refine_max_iter=50, directions=2, progress=False),
    ),
    "cpu": Preset(
        name="cpu",
        tasks=("prefix_sums", "sudoku", "chess"),
        seeds=(0,),
        train={"prefix_sums": _cell("cpu/prefix_sums"), "sudoku": _cell("cpu/sudoku"), "chess": _cell("cpu/chess")},
        task_grid={"prefix_sums": {"regime": ("progressive", "phantom+budget", "implicit+fallback+warm+budget")},
                   "sudoku": _SMALL_GRID, "chess": _SMALL_GRID},
        extra_sets={"sudoku": ("blanks:36-45", "blanks:46-55")},
        eval_n=256,
        analyze_n=16,
        analysis=dict(eig_ncv=12, eig_maxiter=10, resolvent_ncv=6, resolvent_maxiter=4, progress=False),
    ),
    "recipes": Preset(
        name="recipes",
        tasks=("prefix_sums",),
        seeds=(0, 1, 2),
        recalls=("internal",),
        norms=("post",),
        regimes=REGIMES,
        train={"prefix_sums": _cell("cpu/prefix_sums")},
        eval_n=256,
        analyze_n=16,
        analysis=dict(eig_ncv=12, eig_maxiter=10, resolvent_ncv=6, resolvent_maxiter=4, progress=False),
    ),
    "paper": Preset(
        name="paper",
        tasks=("prefix_sums",),
        seeds=(0, 1, 2),
        recalls=("internal",),
        norms=("post",),
        regimes=("progressive",),
        train={"prefix_sums": _cell("paper/prefix_sums")},
        regime_train={**REGIME_TRAIN, "progressive": {"loss": "progressive"}},  # the paper's form, its defaults
        eval_iters=(1, 10, 30, 100, 300, 500, 600),
        eval_n=128,
        analyze_n=8,
        analysis=dict(eig_ncv=12, eig_maxiter=10, resolvent_ncv=6, resolvent_maxiter=4, progress=False),
        results="results/paper_split",
    ),
    "chess": Preset(
        name="chess",
        tasks=("chess",),
        seeds=(0,),
        recalls=("internal",),
        norms=("post",),
        regimes=("progressive",),
        train={"chess": _cell("chess/chess")},
        eval_iters=(1, 2, 4, 8, 12, 16, 24, 48),
        eval_n=1024,
        analyze_n=16,
        analysis=dict(eig_ncv=12, eig_maxiter=10, resolvent_ncv=6, resolvent_maxiter=4, progress=False),
        results="results/chess_long",
    ),
    **{name: Preset(name=name, tasks=_TASKS, train={t: _cell(f"{name}/{t}") for t in _TASKS}, task_grid=_SEED_LRS,
                    eval_iters=_SEED_EVAL, eval_n=eval_n, analyze_n=analyze_n, analysis=dict(analysis, progress=False),
                    results=f"results/{name.replace('-', '_')}", **_SEED_GRID)
       for name, eval_n, analyze_n, analysis in (
           ("seed-gpu", 1000, 64, {}),
           ("seed-cpu", 128, 8, dict(eig_ncv=8, eig_maxiter=5, resolvent_ncv=4, resolvent_maxiter=3)))},
    "gpu": Preset(
        name="gpu",
        tasks=_TASKS,
        seeds=(0, 1, 2),
        train={t: _cell(f"gpu/{t}") for t in _TASKS},
        eval_n=2048,
        analyze_n=64,
        analysis=dict(progress=False),
    ),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]


TASK_ORDER: tuple[str, ...] = tuple(dict.fromkeys(t for p in PRESETS.values() for t in p.tasks))
"""Every preset's tasks, in the order the report lists them."""
