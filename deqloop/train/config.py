"""Everything that defines a training run: one validated tree of settings.

    config = TrainConfig.from_flat(task=NAME, task_options={...the task's settings...}, depth_offset=2,
                                   width=32, heads=4, attention="local", window=3, loss="progressive",
                                   steps=2000, out="runs/ps")
    config.model.width, config.solve.max_iter, config.optim.lr, config.run.out

The tree nests the model's own settings (:class:`~deqloop.model.ModelSettings`, the block;
:class:`~deqloop.model.SolveSettings`, its default solve) beside the training's own groups
(:mod:`deqloop.train.settings`): each setting is declared once, with its one default. The task's
own settings (lengths, data files, augmentation, ...) live in ``task_options``: the fields of the
task's dataclass, validated by building the task. Every setting has a flat name, its field's name
(``solve.precision`` is ``solve_precision``; :mod:`deqloop.flat_names`): ``deqloop train``'s flags
(``--max-iter``) and :meth:`TrainConfig.from_flat` use those.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deqloop.adjoint import EQUILIBRIUM_BACKWARDS, Backward, Implicit
from deqloop.errors import ConfigError
from deqloop.flat_names import group_class, leaves, nest
from deqloop.model import Architecture, LoopedDEQConfig, ModelSettings, SolveSettings
from deqloop.model.config import SOLVE_SETTINGS
from deqloop.tasks import DEFAULT_TASK, Task, get_task, task_class
from deqloop.train.settings import (AMP_MODES, LOSSES, SCHEDULES, EvalSettings, ObjectiveSettings, OptimSettings,
                                    RunSettings)
from deqloop.train.tracking import LOGGERS
from deqloop.validate import choice, known_keys, setting

__all__ = ["AMP_MODES", "DEFAULT_RECIPE", "EQUILIBRIUM_BACKWARDS", "LOGGERS", "LOSSES", "RUNTIME_FIELDS", "SCHEDULES",
           "STORED_DEFAULTS", "TrainConfig", "upgrade_stored"]


DEFAULT_RECIPE: dict[str, Any] = {"backward": "phantom", "backward_options": {"steps": 5, "tau": 0.8}}
"""The equilibrium loss's gradient when none is named: the one that trained best and most
reliably in the recipe ablation (RESULTS.md, ``python -m experiments.sweep --preset recipes``:
with a 40-iteration budget its Anderson-solved answers are 100 / 100 / 99 % exact at 48 bits over
three seeds, plain iteration reaching 75 / 100 / 73 %): the phantom gradient through 5 damped
steps, τ = 0.8. Options given without a backward go over its options; a backward given explicitly
takes its own defaults (phantom's: one undamped step, the Jacobian-free gradient). The model's own
default (:class:`~deqloop.model.SolveSettings`) stays the implicit gradient, which the progressive
loss leaves unused."""

# Fields that describe how a run is executed rather than what it computes (flat names): they may
# differ between a run and its resumption.
RUNTIME_FIELDS = frozenset({"resume", "overwrite", "progress", "threads", "device", "out", "logger", "prefetch",
                            "stability_every", "stability_size",  # the monitor measures, never trains
                            "max_consecutive_skips",  # only decides when a failing run gives up
                            "compile", "compile_segment"})  # the same function, compiled or not

_SOLVE_HELP = ("the solve of the training forward (its max_iter: the training depth) and the model's default "
               "solve; None: the model's defaults, with the equilibrium loss's DEFAULT_RECIPE")


@dataclass
class TrainConfig:
    """Everything that defines a training run; validated at construction.

    Unknown keys in :meth:`from_dict` / :meth:`from_flat` and impossible combinations raise
    :class:`ConfigError` (a ``ValueError``; unknown keys also a ``TypeError``).

    ``max_iter`` (``solve.max_iter``) is the training depth: the equilibrium loss's solver budget
    (split into ``fp_states`` segments by the fixed-point correction), or the progressive loss's
    exact count of plain iterations unless ``depth_offset`` makes that per batch
    (:meth:`depth`). The model trained stores ``max_iter = depth()`` as its default solve.
    """

    task: str = setting("a registered task (see deqloop.tasks.task_names(); a user's own is added with "
                        "register_task) or 'package.module:ClassName'", default=DEFAULT_TASK)
    task_options: dict[str, Any] = setting("the task's own settings (the fields of its dataclass); after "
                                           "construction it holds all of them, defaults included",
                                           default_factory=dict)
    model: ModelSettings = setting("the block (deqloop.model.ModelSettings); the task fixes vocabulary, classes "
                                   "and grid", default_factory=ModelSettings)
    objective: ObjectiveSettings = setting("the loss and the fixed-point training recipes",
                                           default_factory=ObjectiveSettings)
    solve: SolveSettings | None = field(default=None, metadata={"help": _SOLVE_HELP,
                                                                "flat_names": {"precision": "solve_precision"}})
    optim: OptimSettings = setting("data pool, steps, batch, optimizer, schedule", default_factory=OptimSettings)
    eval: EvalSettings = setting("evaluation, metrics, stability monitor", default_factory=EvalSettings)
    run: RunSettings = setting("seed, run folder, checkpoints, device, runtime", default_factory=RunSettings)

    def __post_init__(self) -> None:
        for name, kind in _GROUPS.items():
            if not isinstance(getattr(self, name), kind) and not (name == "solve" and self.solve is None):
                raise ConfigError(f"{name} must be a {kind.__name__}, got {type(getattr(self, name)).__name__}")
        if not isinstance(self.task_options, dict):
            raise ConfigError(f"task_options must be a dict, got {type(self.task_options).__name__}")
        self._task = get_task(self.task, **self.task_options)  # validates the task's settings
        self.task_options = self._task.settings() or dict(self.task_options)  # every setting, as plain values
        o = self.objective
        if self.solve is None:
            self.solve = SolveSettings(**training_solve(o.loss, {}))
        if o.loss == "equilibrium":
            choice("backward", _backward_spec(self.solve)[0], EQUILIBRIUM_BACKWARDS)
            if o.pretrain_steps >= self.optim.steps:
                raise ConfigError(f"pretrain_steps ({o.pretrain_steps}) must be below steps ({self.optim.steps}): "
                                  "the equilibrium loss would never train")
        elif _backward_spec(self.solve) != _backward_spec(SolveSettings()):
            raise ConfigError(_PROGRESSIVE_BACKWARD)
        if o.depth_offset is not None and self._task.propagation_depth() is None:
            raise ConfigError(f"depth_offset needs a task that reports its propagation depth; task "
                              f"{self.task!r} does not")
        if not self.run.out:
            self.run.out = str(Path("runs") / self.task.replace(":", "_"))
        self.model_config()  # the architecture is validated by the model's config, with the task's shapes

    # -- derived -------------------------------------------------------------------------------

    def build_task(self) -> Task:
        """The task this run trains on (built once, from ``task`` and ``task_options``)."""
        return self._task

    def depth(self, x: Any = None) -> int:
        """Iterations per training forward for a batch ``x`` (``None``: the largest training batch):
        the progressive loss's plain iterations (:meth:`plain_depth`), or the equilibrium loss's
        solver budget ``max_iter``."""
        return self.plain_depth(x) if self.objective.loss == "progressive" else self.solve.max_iter

    def plain_depth(self, x: Any = None) -> int:
        """Plain iterations of the progressive loss (or warm start) on ``x``: the task's propagation
        depth plus ``depth_offset`` when that is set, else ``max_iter``."""
        if self.objective.depth_offset is not None:
            return self._task.propagation_depth(x) + self.objective.depth_offset
        return self.solve.max_iter

    def model_config(self) -> LoopedDEQConfig:
        """The :class:`LoopedDEQConfig` this run trains: the model settings with the task's shapes
        and the run's compile flag; the solve settings with ``max_iter = depth()``."""
        t = self._task
        block = {f.name: getattr(self.model, f.name) for f in dataclasses.fields(ModelSettings)}
        arch = Architecture(**block, vocab_size=t.vocab_size, num_classes=t.num_classes, grid=t.grid,
                            compile=self.run.compile is True,
                            compile_segment=0 if self.run.compile_segment == "auto" else self.run.compile_segment)
        return LoopedDEQConfig(arch, self.solve.with_(max_iter=self.depth()))

    @property
    def implicit(self) -> bool:
        """Whether steps take the exact implicit gradient (the IFT assumes converged solves)."""
        return self.objective.loss == "equilibrium" and isinstance(self.solve.adjoint, Implicit)

    # -- stored forms --------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The nested form, plain and JSON-serializable (tuples become lists; a backward object is
        stored by name), as checkpoints and ``config.json`` hold it."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "solve"}
        out = json.loads(json.dumps({k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v
                                     for k, v in values.items()}))
        solve = {name: getattr(self.solve, name) for name in SOLVE_SETTINGS}
        solve["backward"], solve["backward_options"] = _backward_spec(self.solve)
        return {**out, "solve": json.loads(json.dumps(solve))}

    def to_flat(self) -> dict[str, Any]:
        """Every setting by its flat name (plain values; under the progressive loss ``backward`` is
        ``None`` and ``backward_options`` empty: that loss uses none), as :meth:`from_flat` reads it."""
        nested = self.to_dict()
        flat = {name: _get(nested, leaf.path) for name, leaf in leaves(TrainConfig).items()}
        if self.objective.loss == "progressive":
            flat.update(backward=None, backward_options={})
        return flat

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with settings changed by flat name (``config.replace(resume=True, lr=1e-3)``),
        validated as a new config."""
        return TrainConfig.from_flat({**self.to_flat(), **changes})

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from :meth:`to_dict`'s nested form (a group may be absent: its defaults), or from a
        flat dict (no group given: read by :meth:`from_flat`). Unknown keys are an error that lists
        the allowed ones."""
        if not any(isinstance(values.get(g), dict) for g in _GROUPS):
            return cls.from_flat(values)
        known_keys(values, [f.name for f in dataclasses.fields(cls)], "TrainConfig")
        built = dict(values)
        for name, kind in _GROUPS.items():
            if isinstance(values.get(name), dict):
                known_keys(values[name], [f.name for f in dataclasses.fields(kind)], f"TrainConfig.{name}")
                built[name] = kind(**values[name])
        return cls(**built)

    @classmethod
    def from_flat(cls, values: dict[str, Any] | None = None, /, **more: Any) -> TrainConfig:
        """Build from flat setting names (those of ``deqloop train``'s flags, ``max_iter`` for
        ``--max-iter``) given as a dict and/or keywords; unknown names are an error that lists the
        allowed ones. The stable way to build a config from name → value pairs."""
        return cls.from_dict(nest_flat({**(values or {}), **more}))


_HINTS = typing.get_type_hints(TrainConfig)
_GROUPS: dict[str, type] = {f.name: kind for f in dataclasses.fields(TrainConfig)  # model: ModelSettings, ...
                            if (kind := group_class(_HINTS[f.name])) is not None}
_PROGRESSIVE_BACKWARD = ("backward and backward_options apply to loss='equilibrium'; the progressive loss "
                         "backpropagates through plain iterations")


def _get(tree: dict[str, Any], path: tuple[str, ...]) -> Any:
    for part in path:
        tree = tree[part]
    return tree


def _backward_spec(solve: SolveSettings) -> tuple[str, dict[str, Any]]:
    """``(name, options)`` of a solve's backward, as given (a backward object: its own spec)."""
    if isinstance(solve.backward, Backward):
        return solve.backward.to_spec()
    return solve.backward, dict(solve.backward_options)


def training_solve(loss: str, given: dict[str, Any]) -> dict[str, Any]:
    """The solve fields of a training config for ``loss`` from those ``given`` by flat name (a
    ``backward`` of ``None`` counts as not given): under the equilibrium loss without a backward,
    :data:`DEFAULT_RECIPE`'s, its options under those given. The progressive loss takes none."""
    given = {k: v for k, v in given.items() if not (k == "backward" and v is None)}
    options = given.get("backward_options", {})
    if loss == "progressive" and ("backward" in given or options):
        raise ConfigError(_PROGRESSIVE_BACKWARD)
    if loss == "equilibrium" and "backward" not in given and isinstance(options, dict):
        given = {**given, **DEFAULT_RECIPE, "backward_options": {**DEFAULT_RECIPE["backward_options"], **options}}
    return given


def nest_flat(values: dict[str, Any]) -> dict[str, Any]:
    """Flat settings (``deqloop train``'s names) in the nested form of :meth:`TrainConfig.to_dict`
    (only the groups given), the solve group resolved by :func:`training_solve`."""
    nested = nest(TrainConfig, values, "TrainConfig")
    nested["solve"] = training_solve(nested.get("objective", {}).get("loss", ObjectiveSettings.loss),
                                     nested.get("solve", {}))
    return nested


STORED_DEFAULTS: dict[str, Any] = {"detach_z0": True, "solve_precision": "float32"}
"""What a stored flat config that lacks a field ran with: the form before the field existed (a run
trained before ``detach_z0`` existed detached z₀; one before ``solve_precision`` solved in float32,
since autocast then ran on CUDA alone and no run had used it)."""


def upgrade_stored(values: dict[str, Any]) -> dict[str, Any]:
    """A stored training config (a checkpoint's or ``config.json``'s) in the nested form of
    :meth:`TrainConfig.to_dict`: a flat one (before the settings were nested) with the fields it
    predates filled in as that run ran them (:data:`STORED_DEFAULTS`) and nested; for the task's
    settings its class's ``stored_defaults`` (e.g. an earlier chess encoding). A new dict;
    ``values`` is not changed."""
    flat = not any(isinstance(values.get(g), dict) for g in _GROUPS)
    out = {**{k: v for k, v in STORED_DEFAULTS.items() if k not in values}, **values} if flat else dict(values)
    options = values.get("task_options")
    if isinstance(options, dict):
        try:
            legacy = task_class(values.get("task", DEFAULT_TASK)).stored_defaults
        except ConfigError:  # an unknown task fails where the config is built, with its own message
            legacy = {}
        out["task_options"] = {**{k: v for k, v in legacy.items() if k not in options}, **options}
    return nest_flat(out) if flat else out


def stored_flat(values: dict[str, Any]) -> dict[str, Any]:
    """A stored training config (either form) by flat names, without building it."""
    nested = upgrade_stored(values)
    flat = {}
    for name, leaf in leaves(TrainConfig).items():
        try:
            flat[name] = _get(nested, leaf.path)
        except (KeyError, TypeError):
            continue
    return flat
