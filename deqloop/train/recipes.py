"""Named training recipes: each a plain dict of ``deqloop train`` settings, built into a
:class:`~deqloop.train.TrainConfig` by :func:`recipe`.

    config = recipe("demo", steps=100, out="runs/d")       # the demo's recipe, two settings changed
    deqloop train --recipe demo --steps 100 --out runs/d   # the same from the command line
    deqloop train --list-recipes                           # every name, with what it is for

A recipe's keys are the flat names of the ``deqloop train`` flags (``max_iter`` for
``--max-iter``), the task's own settings (``length`` for prefix sums) beside the training ones.
Explicit settings win over the recipe's. The demo (``deqloop demo``), the examples
(``examples/*.py``) and the sweep presets (``experiments/presets.py``) build their configs from
these recipes; a preset's cell adds its recall, norm, regime, learning rate and seed on top.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from deqloop.errors import ConfigError
from deqloop.tasks import DEFAULT_TASK, task_class
from deqloop.train.config import TrainConfig

__all__ = ["EARLIER_PROGRESSIVE", "PAPER_PROGRESSIVE", "RECIPES", "Recipe", "config_from_flat", "get_recipe",
           "nested", "recipe", "recipe_names", "recipe_values"]

# The regimes the recipes below train in (a sweep preset swaps them per cell: experiments/presets.py).
PAPER_PROGRESSIVE: dict[str, Any] = {"loss": "progressive", "alpha": 1.0, "detach_z0": False, "schedule": "paper"}
"""The paper's regime: the progressive loss with alpha 1 (experiments/run_all.bash:92 of the authors'
code, ``problem.hyp.alpha=1``), z0's gradient kept at n = 0 (deepthinking/utils/training.py:154-171)
and the paper's learning-rate schedule (deepthinking/utils/training.py, train_model.py)."""
EARLIER_PROGRESSIVE: dict[str, Any] = {"loss": "progressive", "alpha": 0.5, "detach_z0": True}
"""The progressive loss as deqloop's committed cpu-preset results were measured: alpha 0.5, z0
detached at n = 0 (the paper's form keeps z0's gradient)."""
PROGRESSIVE_ONLY = ("alpha", "depth_offset", "detach_z0")
"""Settings of the progressive loss (and a warm start) alone: a recipe's are dropped when the
explicit settings choose another loss without a warm start (``--loss equilibrium`` works with
every recipe as it stands)."""


@dataclass(frozen=True)
class Recipe:
    """A named training configuration as data.

    ``settings`` are flat ``deqloop train`` settings; ``regime`` the loss and its settings (kept
    apart so that a sweep preset can swap them per cell); ``unless`` maps a key of ``settings`` to
    the explicit settings that drop it (e.g. a training length given drops the recipe's schedule).
    """

    about: str
    settings: Mapping[str, Any]
    regime: Mapping[str, Any] = field(default_factory=dict)
    unless: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.about.strip():
            raise ConfigError("a recipe needs a line saying what it is for and where its numbers come from")
        if "task" not in self.settings:
            raise ConfigError(f"recipe settings {dict(self.settings)} name no task")
        both = sorted(set(self.settings) & set(self.regime))
        if both:
            raise ConfigError(f"recipe settings and regime both set {', '.join(both)}; set each once")
        stray = sorted(set(self.unless) - set(self.settings))
        if stray:
            raise ConfigError(f"recipe 'unless' names {', '.join(stray)}, not among its settings")

    def values(self) -> dict[str, Any]:
        """Settings and regime, flat (a deep copy)."""
        return copy.deepcopy({**self.settings, **self.regime})

    def listing(self) -> str:
        """The values as ``name value, ...`` (for help texts)."""
        return ", ".join(f"{k} {v}" for k, v in self.values().items())


_PREFIX_SPLIT = dict(length=32, min_length=8, start_length=8, start_min_length=4, ramp_steps=900)
_CPU = dict(threads=1, progress=False)
_SEED_GRID = "the paper's grid (experiments/run_all.bash:16-22, 48-56, 92-105 of the authors' code)"
_SEED_GPU = dict(width=256, heads=8, max_iter=30, batch_size=500, amp="auto", progress=False)
_SEED_CPU = dict(width=32, heads=4, max_iter=30, batch_size=64, stability_every=50, **_CPU)
# sudoku by blanks: train on 4-24 (about 2 rounds of naked singles), hard 25-35 (about twice that)
_SUDOKU_BLANKS = dict(task="sudoku", augment=True, blanks=(4, 24), hard_blanks=(25, 35))
# chess as its committed cpu results were measured: the earlier encoding (ranks flipped for black, no
# king mirror) and top 2 by logit1 - logit0; the paper's (the task's default) is one option away
_CHESS_EARLIER = dict(encoding="rank_flip", scores="margin")

RECIPES: dict[str, Recipe] = {
    "demo": Recipe(
        "deqloop demo: prefix sums on 4-12 bits, tested at 48 and 96, a few minutes on 2 CPU cores (README's "
        "figures); lr 2e-3 with cosine decay, the length curriculum measured in ../shared/NOTES.md",
        dict(task="prefix_sums", length=12, min_length=4, hard_length=48, depth_offset=2, width=32, heads=4,
             mlp_ratio=4.0, recall="internal", norm="post", attention="local", window=3, loss="progressive",
             alpha=0.0, steps=800, batch_size=64, lr=2e-3, warmup_steps=0, schedule="cosine", weight_decay=0.01,
             grad_clip=1.0, eval_size=0, log_every=50, checkpoint_every=800, threads=1)),
    "examples/prefix_sums": Recipe(
        "examples/prefix_sums.py: the paper's split on CPU (8-32 bits by a schedule from 4-8 over 900 of 1,500 "
        "steps, tested at 128 and 512 bits); a --length given drops the schedule",
        dict(task="prefix_sums", hard_length=128, width=32, heads=4, attention="local", window=3, recall="internal",
             norm="post", loss="progressive", alpha=0.0, steps=1500, batch_size=64, lr=2e-3, warmup_steps=0,
             log_every=50, eval_size=0, threads=1, **_PREFIX_SPLIT, depth_offset=2),
        unless={k: ("length",) for k in _PREFIX_SPLIT}),
    "examples/sudoku": Recipe(
        "examples/sudoku.py: train on 4-24 blanks, hard 25-35 (blanks: the difficulty axis a CPU can climb, "
        "../shared/NOTES.md), about 30 min on 2 CPU cores (README's figures); --train-band/--hard-band/--data "
        "drop the blank bands",
        dict(task="sudoku", augment=True, width=64, heads=4, attention="full", recall="internal", norm="post",
             loss="progressive", alpha=0.5, detach_z0=True, max_iter=16, batch_size=64, lr=1e-3, steps=1500,
             log_every=50, checkpoint_every=250, eval_size=0, threads=2, blanks=(4, 24), hard_blanks=(25, 35)),
        unless={"blanks": ("train_band", "data"), "hard_blanks": ("hard_band", "data")}),
    "examples/chess": Recipe(
        "examples/chess.py: 2 passes over 2,000 easy puzzles, a few minutes on 2 CPU cores (the example passes the "
        "shared Lichess files as --data when found)",
        dict(task="chess", train_size=2000, epochs=2, width=32, heads=4, attention="full", recall="internal",
             norm="post", loss="progressive", alpha=0.5, max_iter=12, batch_size=32, lr=1e-3, log_every=20,
             checkpoint_every=200, eval_size=0, threads=1)),
    "tiny/prefix_sums": Recipe(
        "the tiny preset: seconds a run on CPU, for tests and for checking a machine",
        dict(task="prefix_sums", length=6, min_length=4, hard_length=12, depth_offset=2, width=16, heads=2,
             attention="local", window=3, max_iter=8, steps=8, batch_size=16, lr=2e-3, warmup_steps=0, **_CPU),
        EARLIER_PROGRESSIVE),
    "cpu/prefix_sums": Recipe(
        "the cpu and recipes presets' prefix-sums cell: 4-12 bits, tested at 48, about 2.5 min a run on CPU "
        "(experiments/presets.py's docstring)",
        dict(task="prefix_sums", length=12, min_length=4, hard_length=48, depth_offset=2, width=32, heads=4,
             attention="local", window=3, max_iter=14, steps=600, batch_size=128, lr=2e-3, warmup_steps=0,
             schedule="cosine", stability_every=25, **_CPU),
        EARLIER_PROGRESSIVE),
    "cpu/sudoku": Recipe(
        "the cpu preset's sudoku cell: blanks 4-24, hard 25-35, about 10 min of training a run on CPU",
        dict(_SUDOKU_BLANKS, width=64, heads=4, attention="full", max_iter=16, steps=500, batch_size=64, lr=1e-3,
             stability_every=25, **_CPU),
        EARLIER_PROGRESSIVE),
    "cpu/chess": Recipe(
        "the cpu preset's chess cell (the earlier board encoding its committed results used): 15-30 min a run",
        dict(task="chess", **_CHESS_EARLIER, width=64, heads=4, max_iter=16, steps=500, batch_size=64, lr=1e-3,
             stability_every=25, **_CPU),
        EARLIER_PROGRESSIVE),
    "chess/chess": Recipe(
        "the chess preset: the cpu chess cell for 3,000 steps, ~0.9 s a step on one core (about 45 min)",
        dict(task="chess", **_CHESS_EARLIER, width=64, heads=4, attention="full", max_iter=12, steps=3000,
             batch_size=64, lr=1e-3, stability_every=250, **_CPU),
        EARLIER_PROGRESSIVE),
    "paper/prefix_sums": Recipe(
        "the paper preset: the paper's prefix-sums split on CPU in its regime (train 8-32 bits by a schedule, test "
        "512; local attention over 5 cells, its kernel_size, experiments/run_all.bash:104; 30 iterations, :56)",
        dict(task="prefix_sums", **_PREFIX_SPLIT, hard_length=512, max_iter=30, width=32, heads=4,
             attention="local", window=5, steps=1500, batch_size=64, lr=2e-3, schedule="paper", stability_every=50,
             **_CPU),
        {"loss": "progressive"}),  # the paper's form is the progressive loss's default
    "seed-gpu/prefix_sums": Recipe(
        f"the seed-gpu preset's prefix sums, {_SEED_GRID}: width 256, batch 500, kernel 5, 32 -> 512 bits, "
        "100 epochs of 10,000 strings (2,000 steps)",
        dict(task="prefix_sums", length=32, min_length=32, hard_length=512, **_SEED_GPU, attention="local", window=5,
             steps=2000, stability_every=100),
        PAPER_PROGRESSIVE),
    "seed-gpu/sudoku": Recipe(
        f"the seed-gpu preset's sudoku, {_SEED_GRID}: Sudoku-Extreme split at its 80th rating percentile (needs "
        "its train.csv and test.csv as --data and --test-data), 100 epochs of 40,000 puzzles",
        dict(task="sudoku", split="paper", **_SEED_GPU, attention="full", steps=8000, stability_every=250),
        PAPER_PROGRESSIVE),
    "seed-gpu/chess": Recipe(
        f"the seed-gpu preset's chess, {_SEED_GRID}: Lichess <= 1600 -> 1601-2000",
        dict(task="chess", **_SEED_GPU, attention="full", steps=8000, stability_every=250),
        PAPER_PROGRESSIVE),
    "seed-cpu/prefix_sums": Recipe(
        "the seed-cpu preset's prefix sums: the seed-gpu recipe on 2 CPU cores (width 32, batch 64, 600 steps), "
        "about 7 min of CPU time a run (experiments/presets.py's docstring)",
        dict(task="prefix_sums", length=32, min_length=32, hard_length=512, **_SEED_CPU, attention="local", window=5,
             steps=600),
        PAPER_PROGRESSIVE),
    "seed-cpu/sudoku": Recipe(
        "the seed-cpu preset's sudoku: by blanks (4-24 -> 25-35, Sudoku-Extreme is not bundled), width 64",
        dict(_SUDOKU_BLANKS, **dict(_SEED_CPU, width=64), attention="full", steps=1500),
        PAPER_PROGRESSIVE),
    "seed-cpu/chess": Recipe(
        "the seed-cpu preset's chess: width 64, 1,500 steps",
        dict(task="chess", **dict(_SEED_CPU, width=64), attention="full", steps=1500),
        PAPER_PROGRESSIVE),
    "gpu/prefix_sums": Recipe(
        "the gpu preset's prefix sums: deqloop's cpu grid at the paper's scale (width 256, 8 heads, bf16)",
        dict(task="prefix_sums", length=32, min_length=8, hard_length=512, depth_offset=4, width=256, heads=8,
             attention="local", window=5, max_iter=36, steps=4000, batch_size=256, lr=1e-3, amp="auto",
             progress=False, stability_every=100),
        EARLIER_PROGRESSIVE),
    "gpu/sudoku": Recipe(
        "the gpu preset's sudoku at the paper's scale (the task's default rating bands)",
        dict(task="sudoku", augment=True, width=256, heads=8, max_iter=32, steps=10000, batch_size=256, lr=5e-4,
             amp="auto", progress=False, stability_every=250),
        EARLIER_PROGRESSIVE),
    "gpu/chess": Recipe(
        "the gpu preset's chess at the paper's scale",
        dict(task="chess", width=256, heads=8, max_iter=32, steps=10000, batch_size=256, lr=5e-4, amp="auto",
             progress=False, stability_every=250),
        EARLIER_PROGRESSIVE),
}


def recipe_names() -> tuple[str, ...]:
    """The names of :data:`RECIPES`."""
    return tuple(RECIPES)


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``; an unknown name is a :class:`ConfigError` listing the known ones."""
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}")
    return RECIPES[name]


def recipe_values(name: str, **overrides: Any) -> dict[str, Any]:
    """Recipe ``name``'s flat settings with ``overrides`` on top (the explicit settings win).

    A recipe key that an explicit setting makes moot is dropped first: those the recipe's
    ``unless`` names, and the progressive loss's own (:data:`PROGRESSIVE_ONLY`) when the loss is
    another one without a warm start (``pretrain_steps``)."""
    r = get_recipe(name)
    values = r.values()
    for key, given in r.unless.items():
        if any(g in overrides for g in given):
            values.pop(key, None)
    loss = overrides.get("loss", values.get("loss"))
    warm = overrides.get("pretrain_steps", values.get("pretrain_steps"))
    if loss != "progressive" and not warm:
        for key in PROGRESSIVE_ONLY:
            values.pop(key, None)
    return {**values, **overrides}


def nested(values: Mapping[str, Any]) -> dict[str, Any]:
    """Flat settings as :meth:`TrainConfig.from_flat` takes them: the task's own settings (the
    fields of its dataclass) under ``task_options`` (merged into one given there)."""
    out = dict(values)
    cls = task_class(out.get("task", DEFAULT_TASK))
    names = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    options = dict(out.pop("task_options", None) or {})
    options.update({k: out.pop(k) for k in list(out) if k in names})
    if options:
        out["task_options"] = options
    return out


def config_from_flat(values: Mapping[str, Any]) -> TrainConfig:
    """A :class:`TrainConfig` from flat settings (the task's beside the training ones:
    :meth:`TrainConfig.from_flat` after :func:`nested`); unknown names are an error that lists the
    allowed ones."""
    return TrainConfig.from_flat(nested(values))


def recipe(name: str, **overrides: Any) -> TrainConfig:
    """The :class:`TrainConfig` of recipe ``name`` with ``overrides`` (flat settings) on top.

        recipe("examples/sudoku", steps=100, width=32)
        recipe("cpu/prefix_sums", loss="equilibrium", backward="implicit")   # alpha, depth_offset dropped
    """
    return config_from_flat(recipe_values(name, **overrides))
