"""``compile="auto"``: compile the block when it pays for itself over the rest of the run.

Compiling the block (``torch.compile``) costs a one-off compilation and then saves a fraction of
every step. The rule, measured by ``benchmarks/throughput.py`` on the 2-core CPU (README,
"Throughput"):

    compile  ⇔  steps_left · COMPILE_SAVING · t_step  >  COMPILE_SECONDS

with ``t_step`` the median wall time of the run's own first eager steps (after one warm-up step).
The trainer times :data:`PROBE_STEPS` steps eagerly, then decides once. It does not compile (and
says why in the log) when the probed batches differ in shape (a length curriculum: every new
shape would compile again), when the loss is not the progressive one (a solver evaluates a
varying number of rows per call), with the Jacobian penalty (double backward runs eagerly), or
where torch.compile cannot build code (no C++ compiler for the CPU, no Triton for a GPU).

With ``compile_segment="auto"`` (the default) the same decision also picks the progressive loss's
compiled segments (``deqloop/model/compiled.py``: its graded iterations as segments of 1, 2, 4, 8,
:data:`SEGMENT_LENGTH` iterations) by the same rule with their own figures, measured beside the
compiled block (README, "Throughput"):

    segments  ⇔  compile  ∧  steps_left · SEGMENT_SAVING · t_step  >  SEGMENT_SECONDS
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import statistics
from dataclasses import dataclass, field
from typing import Any

__all__ = ["COMPILE_SAVING", "COMPILE_SECONDS", "PROBE_STEPS", "SEGMENT_LENGTH", "SEGMENT_SAVING", "SEGMENT_SECONDS",
           "AutoCompile", "compile_pays"]

log = logging.getLogger("deqloop.train")

COMPILE_SECONDS = 30.0  # compiling the block: its training graph (10–18 s of CPU measured) and its no-grad one
COMPILE_SAVING = 0.25  # the fraction of an eager step saved (sudoku cell, CPU: 0.27 measured)
PROBE_STEPS = 3  # eager steps timed (after one warm-up step) before deciding
SEGMENT_LENGTH = 16  # the longest compiled segment: k ≤ 31 in at most 5 calls
SEGMENT_SECONDS = 30.0  # compiling the segments beyond the block's graphs (23–28 s of CPU measured)
SEGMENT_SAVING = 0.03  # the fraction of an eager step saved beyond the compiled block's (two runs each: the
# sudoku cell 0.035 and 0.053, the prefix-sums cell at depth 14 0.062 and 0.045; one run: 0.008 at depth 30)


def compile_pays(step_seconds: float, steps_left: int, *, saving: float | None = None,
                 compile_seconds: float | None = None) -> bool:
    """True when ``steps_left`` steps of ``step_seconds`` save more than compiling costs
    (``saving``, ``compile_seconds``: :data:`COMPILE_SAVING`, :data:`COMPILE_SECONDS` unless given)."""
    saving = COMPILE_SAVING if saving is None else saving
    compile_seconds = COMPILE_SECONDS if compile_seconds is None else compile_seconds
    return steps_left * saving * step_seconds > compile_seconds


def compiler_missing(device_type: str) -> str:
    """Why ``torch.compile``'s default backend cannot build code here ("" when it can): it needs a
    C++ compiler for the CPU and Triton for a GPU."""
    if device_type == "cuda":
        return "" if importlib.util.find_spec("triton") is not None else "Triton is not installed"
    names = [c for c in (os.environ.get("CXX"), "g++", "clang++", "c++") if c]
    return "" if any(shutil.which(c) for c in names) else "no C++ compiler on the PATH (g++, clang++ or c++)"


@dataclass
class AutoCompile:
    """Watches the first steps of a run and decides, once, whether to compile the block.

    ``eligible`` is False (with ``reason``) where the rule does not apply (see the module docstring).
    :meth:`observe` takes each step's wall time and batch shape; it returns True exactly once, at
    the step after which the block should be compiled.
    """

    eligible: bool
    reason: str = ""
    seconds: list[float] = field(default_factory=list)
    shapes: set[tuple[int, ...]] = field(default_factory=set)
    warmed: bool = False
    decided: bool = False
    decision: dict = field(default_factory=dict)
    segments: bool = False  # also decide the compiled segments (compile_segment="auto")

    @classmethod
    def for_run(cls, config, world: int = 1, device_type: str = "cpu") -> AutoCompile:
        """The watcher of a :class:`~deqloop.train.TrainConfig`'s run over ``world`` processes on
        ``device_type``; already decided (silently) unless ``compile="auto"``."""
        if config.run.compile != "auto":
            return cls(eligible=False, decided=True, decision={"compile": config.run.compile, "reason": "set explicitly"})
        missing = compiler_missing(device_type)
        if missing:
            return cls(eligible=False, reason=missing)
        if world > 1:
            return cls(eligible=False, reason="several processes would each decide on their own timings")
        if config.objective.loss != "progressive":
            return cls(eligible=False, reason=f"the {config.objective.loss} loss calls the block on a varying number of rows")
        return cls(eligible=True, segments=config.run.compile_segment == "auto")

    def observe(self, step: int, total_steps: int, seconds: float, shape: tuple[int, ...]) -> bool:
        if self.decided:
            return False
        if not self.eligible:
            self._decide(False, self.reason)
            return False
        self.shapes.add(tuple(shape))
        if not self.warmed:
            self.warmed = True  # the first step (of a run or a resumption) warms caches: not timed
            return False
        self.seconds.append(seconds)
        if len(self.seconds) < PROBE_STEPS:
            return False
        t = statistics.median(self.seconds)
        left = total_steps - (step + 1)
        if len(self.shapes) > 1:
            return self._decide(False, f"the training batches change shape ({len(self.shapes)} shapes in "
                                       f"{step + 1} steps)", t, left)
        pays = compile_pays(t, left)
        why = (f"{left} steps × {COMPILE_SAVING:.2f} × {t:.3f} s = {left * COMPILE_SAVING * t:.0f} s "
               f"{'>' if pays else '≤'} {COMPILE_SECONDS:.0f} s of compilation")
        decided = self._decide(pays, why, t, left)
        if pays and self.segments:
            segments = compile_pays(t, left, saving=SEGMENT_SAVING, compile_seconds=SEGMENT_SECONDS)
            self.decision["compile_segment"] = SEGMENT_LENGTH if segments else 0
            log.info("compile_segment=auto: %s (%d steps × %.2f × %.3f s = %.0f s %s %.0f s of compilation)",
                     f"segments of up to {SEGMENT_LENGTH} iterations" if segments else "one compiled call an iteration",
                     left, SEGMENT_SAVING, t, left * SEGMENT_SAVING * t, ">" if segments else "≤", SEGMENT_SECONDS)
        return decided

    def _decide(self, compile: bool, why: str, step_seconds: float | None = None, left: int | None = None) -> bool:
        self.decided = True
        self.decision = {"compile": compile, "reason": why, "step_seconds": step_seconds, "steps_left": left}
        log.info("compile=auto: %s (%s)", "compiling the block" if compile else "not compiling", why)
        return compile

    def model_changes(self) -> dict[str, Any]:
        """What the model's config changes to when :meth:`observe` says to compile: ``compile``, and
        ``compile_segment`` where the segments were decided too."""
        return {"compile": True, **({"compile_segment": self.decision["compile_segment"]}
                                    if "compile_segment" in self.decision else {})}
