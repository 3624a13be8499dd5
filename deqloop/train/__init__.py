"""Training a :class:`~deqloop.model.LoopedDEQ` on a task, top to bottom:

    deqloop/train/config.py      TrainConfig: task + its settings, model, objective, solve, optim, eval, run
    deqloop/train/settings.py    the training's own groups: ObjectiveSettings, OptimSettings, EvalSettings, RunSettings
    deqloop/train/recipes.py     named configs as data: recipe("demo", steps=100) -> TrainConfig
    deqloop/train/data.py        Batches: this rank's shard of each step's batch, a pure function of (seed, step)
    deqloop/train/objectives.py  Equilibrium (fixed-point gradients) and Progressive (deep-thinking loss)
    deqloop/train/trainer.py     Trainer: the loop (step, log, evaluate, checkpoint, resume)
    deqloop/train/resume.py      what a checkpoint of a run holds; resuming checks it is the same run
    deqloop/train/runtime.py     processes, RNG states, AMP, optimizer groups and schedule
    deqloop/train/interrupt.py   SIGINT/SIGTERM: stop after the current step, checkpoint, say how to resume
    deqloop/train/metrics.py     metrics.jsonl; tracking.py: TensorBoard / W&B sinks

    config = TrainConfig.from_flat(task=NAME, task_options={...the task's settings...},
                                   depth_offset=2, width=32, heads=4, attention="local", window=3,
                                   loss="progressive", steps=2000, out="runs/ps")
    config.model.width, config.solve.max_iter, config.optim.steps   # the settings, nested (train/config.py)
    result = train(config)                 # writes runs/ps/{config.json,metrics.jsonl,last.pt}
"""

from deqloop.errors import TrainingError, TrainingInterrupted
from deqloop.train.config import AMP_MODES, LOGGERS, LOSSES, SCHEDULES, TrainConfig
from deqloop.train.data import Batches
from deqloop.train.metrics import read_metrics
from deqloop.train.objectives import Equilibrium, Objective, Progressive, progressive_draw
from deqloop.train.recipes import recipe, recipe_names
from deqloop.train.settings import EvalSettings, ObjectiveSettings, OptimSettings, RunSettings
from deqloop.train.trainer import TrainResult, Trainer, train

__all__ = ["AMP_MODES", "Batches", "Equilibrium", "EvalSettings", "LOGGERS", "LOSSES", "Objective", "ObjectiveSettings",
           "OptimSettings", "Progressive", "RunSettings", "SCHEDULES", "TrainConfig", "TrainResult", "Trainer",
           "TrainingError", "TrainingInterrupted", "progressive_draw", "read_metrics", "recipe", "recipe_names",
           "train"]
