"""Sweep presets: which configurations to train, at what scale, and how to measure them.

A run is one point of the grid recall × norm × regime × task × seed (× learning rate where a preset
sweeps it). Each task's training settings are a named recipe (``deqloop/train/recipes.py``,
``<preset>/<task>``: what each is for and what it costs); a cell adds its recall, norm, regime
(:data:`REGIME_TRAIN`), learning rate and seed. ``regime`` is how the loop is trained: ``"paper"``
(the paper's progressive loss: ``alpha = 1``, z₀'s gradient kept at n = 0, its schedule),
``"progressive"`` (``alpha = 0.5``, z₀ detached: the form the committed cpu results were measured
with), ``"implicit"`` / ``"phantom"`` (fixed-point training with exact implicit differentiation, or
backpropagation through 5 damped steps, τ = 0.8, from the detached fixed point) and those with one
fixed-point training recipe added (``implicit+warm``, ``phantom+budget``, ...).

* ``tiny``: seconds per run on CPU; for tests and for checking a machine.
* ``cpu``: deqloop's own grid on the 2-core machine, seed 0, two runs at a time: prefix sums over
  recall × norm × {progressive, ``phantom+budget``, ``implicit+fallback+warm+budget``} (the recipes
  that did best per gradient in the ``recipes`` ablation), about 2.5 min a run, 45 min in all;
  sudoku by blanks (train 4–24, hard 25–35, also tested on 36–45 and 46–55) and chess, post and
  sandwich norm, progressive, about 10 and 15–30 min of training a run. ``--norms``,
  ``--regimes`` and ``--seeds`` replace the default grid's axis for every task.
* ``recipes``: each fixed-point training recipe alone, with both gradients, the Neumann adjoint and
  the plain regimes beside them, on the cpu prefix-sums cell (internal recall, post norm), 3 seeds.
* ``paper``: the paper's prefix-sums split on CPU in the paper's regime (train 8–32 bits by a
  difficulty schedule, test 512 up to 600 iterations), 3 seeds; summaries in ``results/paper_split``.
* ``chess``: the cpu chess cell for 3,000 steps on the whole ≤ 1600 Lichess file (about 45 min),
  tested on 1,024 puzzles rated 1601–2000 beside the random-legal and greedy baselines;
  summaries in ``results/chess_long``.
* ``seed-gpu``: the paper's own grid as its authors ran it (``experiments/run_all.bash``): recall
  internal / external / none / fixed (the untied baseline: 15 blocks, one iteration) × residual
  peri / pre / gru (GRU-cell merge, peri norm) / post × prefix sums (32 → 512 bits), sudoku
  (Sudoku-Extreme at its 80th rating percentile: ``--sudoku-extreme DIR``) and chess (Lichess
  ≤ 1600 → 1601–2000) × lr 1e-4, 3e-4, 1e-3 (sudoku also 3e-3) × seeds 0, 1, 2 in the ``paper``
  regime, width 256, batch 500, bf16, tested at 1…500 iterations; ``benchmarks/gpu.sh`` runs it.
* ``seed-cpu``: the same grid and regime on 2 CPU cores (width 32, 64 on boards; batch 64; 600
  steps on prefix sums, 1,500 on boards; sudoku by blanks; 128 test examples). Measured (prefix
  sums, internal recall, post norm, lr 1e-3, seed 0, one thread; each phase as ``sweep.run_one``
  runs it, CPU time of the process and of torch.compile's worker processes, load average 4–6):
  about 4.5 min of CPU time a run — 1.7 min training (85 s, and 15 s in the compile workers:
  ``compile="auto"`` compiled the block), 2.2–2.7 min evaluation at 512 bits up to 500 iterations
  (133–162 s in three runs, settled examples dropped; ``python benchmarks/eval_pass.py --run RUN
  --preset seed-cpu --recall internal --norm post --lr 1e-3 --modes drop`` on a finished run: 143
  s), 0.3–0.4 min analysis (18–22 s); the 144 prefix-sums runs, were all as long, would take about
  5.5 h with two at a time on a quiet machine (144 × 4.5 min / 2).
* ``gpu``: the paper's scale (width 256, 8 heads, bf16 on CUDA) on deqloop's cpu grid.

Every preset but ``tiny`` runs the stability monitor (``stability_every`` in its recipes; about 5 %
of a prefix-sums run's training time by ``benchmarks/monitor.py``); RESULTS.md draws its ρ traces.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from typing import Any

from deqloop.names import NORMS, RECALLS
from deqloop.train.recipes import EARLIER_PROGRESSIVE, PAPER_PROGRESSIVE, get_recipe, nested

# The regimes name their recipes explicitly: no warm start unless a regime asks for one (the
# equilibrium loss's default recipe would otherwise add it; deqloop.train.config.DEFAULT_RECIPE).
_EQ = {"loss": "equilibrium", "solver": "anderson", "pretrain_steps": 0}
_GRADIENTS = {"implicit": {**_EQ, "backward": "implicit"},
              "phantom": {**_EQ, "backward": "phantom", "backward_options": {"steps": 5, "tau": 0.8}},
              "neumann": {**_EQ, "backward": "neumann", "backward_options": {"k": 5}}}
# Each fixed-point training recipe (deqloop/train/objectives.py); "budget" runs the solver to 40
# iterations; "warm" trains the first two thirds of the steps by the progressive loss (alpha 0.5, z0
# detached: the form its committed results were measured with).
_RECIPES = {"budget": {"max_iter": 40}, "warm": {"pretrain_fraction": 2 / 3, "alpha": 0.5, "detach_z0": True},
            "jac": {"jac_reg": 0.1}, "fp": {"fp_states": 3}, "mixed": {"train_init": "mixed"}, "gate": {"gate": 0.5}}
# the exact implicit gradient where the solves converged, the Jacobian-free one elsewhere
_PARTS = {**_RECIPES, "fallback": {"backward_options": {"fallback": "jfb"}}}


def _regime(name: str) -> dict[str, Any]:
    """The fields of regime ``"gradient+part+..."``: the gradient's, then each part's in turn."""
    gradient, *parts = name.split("+")
    return {k: v for d in (_GRADIENTS[gradient], *(_PARTS[p] for p in parts)) for k, v in d.items()}


REGIME_TRAIN: dict[str, dict[str, Any]] = {
    "paper": dict(PAPER_PROGRESSIVE),  # the paper's regime (deqloop.train.recipes.PAPER_PROGRESSIVE)
    "progressive": dict(EARLIER_PROGRESSIVE),
    # each recipe alone with both gradients; then the combinations: the warm start with an approximate
    # adjoint and the 40-iteration budget did best in single-seed trials (48 bits: phantom 84 %,
    # Neumann 89 %; exact implicit 1 %)
    **{name: _regime(name) for name in (
        "implicit", "phantom", *(f"{g}+{r}" for g in ("implicit", "phantom") for r in _RECIPES), "neumann+budget",
        "phantom+warm+budget", "neumann+warm+budget", "implicit+warm+budget", "implicit+fallback+budget",
        "implicit+fallback+warm+budget")},
}
REGIMES = tuple(REGIME_TRAIN)

# The paper's sweep has two more rows than deqloop's recall × norm (experiments/run_all.bash:17-19,
# 57-77 of the authors' code): the recall "fixed" (the untied baseline: 15 different blocks, no
# recall, trained and tested at one iteration) and the residual row "gru" (a GRU-cell merge with
# peri norm). A run spec names them as its recall and its norm; ``Preset.train_fields`` turns them
# into the model's settings.
PAPER_ROWS: dict[str, dict[str, Any]] = {
    "fixed": {"recall": "none", "blocks": 15, "max_iter": 1},
    "gru": {"residual": "gru", "norm": "peri"},
}
SPEC_RECALLS = (*RECALLS, "fixed")
SPEC_NORMS = (*NORMS, "gru")
_AXES: dict[str, tuple[str, ...] | None] = {"recall": SPEC_RECALLS, "norm": SPEC_NORMS, "regime": REGIMES,
                                            "lr": None, "seed": None}


def _check(axis: str, values: tuple, what: str, empty: bool = False) -> None:
    """Raise ValueError ``"{what} [bad values]; allowed: ..."`` where ``values`` holds a value not allowed
    on ``axis`` (seeds: non-negative integers; learning rates: positive numbers), or is empty unless ``empty``."""
    if axis == "lr":
        bad, allowed = [v for v in values if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0], \
            "positive numbers"
    elif _AXES[axis] is None:
        bad, allowed = [v for v in values if not isinstance(v, int) or isinstance(v, bool) or v < 0], \
            "non-negative integers"
    else:
        bad, allowed = [v for v in values if v not in _AXES[axis]], ", ".join(_AXES[axis])
    if bad or not (values or empty):
        raise ValueError(f"{what} {bad}; allowed: {allowed}")


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
        where = f"preset {self.name!r}"
        if not self.tasks:
            raise ValueError(f"{where} names no tasks")
        for axis, values in (("recall", self.recalls), ("norm", self.norms), ("regime", self.regimes),
                             ("lr", self.lrs or (1.0,))):
            _check(axis, values, f"{where}: {axis}s")
        missing = [t for t in self.tasks if t not in self.train]
        if missing:
            raise ValueError(f"{where} has no training settings for task(s) {missing}")
        for task, axes in self.task_grid.items():
            if task not in self.tasks:
                raise ValueError(f"{where}: task_grid names task {task!r}, not one of its tasks {', '.join(self.tasks)}")
            for key, values in axes.items():
                if key not in _AXES:
                    raise ValueError(f"{where}: task_grid[{task!r}] has unknown axis {key!r}; allowed: {', '.join(_AXES)}")
                _check(key, values, f"{where}: task_grid[{task!r}][{key!r}] =")

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
            if key != "task":
                _check(key, values or (), key, empty=True)
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
                  **self.regime_train[spec.regime], "recall": spec.recall, "norm": spec.norm, "seed": spec.seed,
                  **PAPER_ROWS.get(spec.recall, {}), **PAPER_ROWS.get(spec.norm, {})}  # the paper's rows as settings
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
# The paper's grid (experiments/run_all.bash of the authors' code; the module docstring's seed-gpu);
# the sudoku grid also runs lr 3e-3 (the paper's sudoku tables).
_SEED_GRID = dict(recalls=("internal", "external", "none", "fixed"), norms=("peri", "pre", "gru", "post"),
                  regimes=("paper",), lrs=(1e-4, 3e-4, 1e-3), seeds=(0, 1, 2),
                  task_grid={"sudoku": {"lr": (1e-4, 3e-4, 1e-3, 3e-3)}},
                  eval_iters=(1, 2, 5, 10, 20, 30, 50, 100, 200, 300, 400, 500))
_TASKS = ("prefix_sums", "sudoku", "chess")
_ANALYSIS = dict(eig_ncv=12, eig_maxiter=10, resolvent_ncv=6, resolvent_maxiter=4, progress=False)  # a CPU's budget
_ONE_CELL = dict(recalls=("internal",), norms=("post",))


def _preset(name: str, tasks: tuple[str, ...] = ("prefix_sums",), recipe: str | None = None, **kw: Any) -> Preset:
    """Preset ``name`` with each task's training settings from recipe ``<recipe or name>/<task>``."""
    return Preset(name=name, tasks=tasks, train={t: _cell(f"{recipe or name}/{t}") for t in tasks}, **kw)


PRESETS: dict[str, Preset] = {p.name: p for p in (
    _preset("tiny", seeds=(0,), recalls=("none", "internal"), norms=("post",), eval_iters=(1, 4, 8, 16), eval_n=32,
            analyze_n=4, analysis=dict(eig_ncv=8, eig_maxiter=5, resolvent_ncv=4, resolvent_maxiter=3, linear_maxiter=3,
                                       refine_max_iter=50, directions=2, progress=False)),
    _preset("cpu", _TASKS, seeds=(0,), task_grid={
        "prefix_sums": {"regime": ("progressive", "phantom+budget", "implicit+fallback+warm+budget")},
        "sudoku": _SMALL_GRID, "chess": _SMALL_GRID}, extra_sets={"sudoku": ("blanks:36-45", "blanks:46-55")},
        eval_n=256, analyze_n=16, analysis=_ANALYSIS),
    _preset("recipes", recipe="cpu", seeds=(0, 1, 2), **_ONE_CELL, regimes=REGIMES, eval_n=256, analyze_n=16,
            analysis=_ANALYSIS),
    _preset("paper", seeds=(0, 1, 2), **_ONE_CELL, regimes=("progressive",),
            regime_train={**REGIME_TRAIN, "progressive": {"loss": "progressive"}},  # the paper's form, its defaults
            eval_iters=(1, 10, 30, 100, 300, 500, 600), eval_n=128, analyze_n=8, analysis=_ANALYSIS,
            results="results/paper_split"),
    _preset("chess", ("chess",), seeds=(0,), **_ONE_CELL, regimes=("progressive",),
            eval_iters=(1, 2, 4, 8, 12, 16, 24, 48), eval_n=1024, analyze_n=16, analysis=_ANALYSIS,
            results="results/chess_long"),
    _preset("seed-gpu", _TASKS, eval_n=1000, analyze_n=64, analysis=dict(progress=False), results="results/seed_gpu",
            **_SEED_GRID),
    _preset("seed-cpu", _TASKS, eval_n=128, analyze_n=8, results="results/seed_cpu", **_SEED_GRID,
            analysis=dict(eig_ncv=8, eig_maxiter=5, resolvent_ncv=4, resolvent_maxiter=3, progress=False)),
    _preset("gpu", _TASKS, seeds=(0, 1, 2), eval_n=2048, analyze_n=64, analysis=dict(progress=False)),
)}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]


TASK_ORDER: tuple[str, ...] = tuple(dict.fromkeys(t for p in PRESETS.values() for t in p.tasks))
"""Every preset's tasks, in the order the report lists them."""
