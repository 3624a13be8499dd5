"""The report's unit: one configuration (task, recall, norm, regime) with its runs, and the
aggregation helpers over seeds and configurations. Standard library only."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from experiments.presets import NORMS, RECALLS, REGIMES, TASK_ORDER

LEARNED_MARGIN = 0.02  # a configuration "learned" if its best val accuracy exceeds this


def _finite(values: list[float | None]) -> list[float]:
    return [x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]


def _m(values: list[float | None]) -> float | None:
    v = _finite(values)
    return sum(v) / len(v) if v else None


def _med(values: list[float | None]) -> float | None:
    """Median across configurations: sensitivities and Lipschitz constants are heavy-tailed
    (one diverging configuration would dominate a mean)."""
    v = _finite(values)
    return statistics.median(v) if v else None


def _seed_mean(rows: list[list[float]]) -> list[float]:
    """The mean over seeds of per-iteration-count curves."""
    return [statistics.fmean(col) for col in zip(*rows)]


@dataclass
class Config:
    """One configuration (task, recall, norm, regime), averaged over its seeds."""

    task: str
    recall: str
    norm: str
    regime: str
    runs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.recall}/{self.norm}/{self.regime}"

    @property
    def iters(self) -> list[int]:
        return self.runs[0]["eval"]["curves"]["iters"]

    @property
    def train_depth(self) -> int:
        return int(self.runs[0]["train_depth"])

    def curve(self, split: str) -> list[float]:
        return _seed_mean([r["eval"]["curves"]["accuracy"][split] for r in self.runs])

    def best(self, split: str) -> tuple[float, int]:
        curve = self.curve(split)
        i = max(range(len(curve)), key=lambda j: (curve[j], -j))
        return curve[i], self.iters[i]

    def seed_best(self, split: str) -> list[float]:
        """Each seed's accuracy at the iteration count where the mean over seeds is best: the
        values whose mean is ``best(split)[0]``."""
        i = self.iters.index(self.best(split)[1])
        return [r["eval"]["curves"]["accuracy"][split][i] for r in self.runs]

    def cell_curve(self, split: str) -> list[float] | None:
        """Mean fraction of cells right after each count (None when a run did not score cells)."""
        rows = [((r["eval"].get("cells") or {}).get("accuracy") or {}).get(split) for r in self.runs]
        return None if any(row is None for row in rows) else _seed_mean(rows)

    def best_cells(self, split: str) -> float | None:
        """The best mean fraction of cells right over the test-time iteration counts."""
        curve = self.cell_curve(split)
        return max(curve) if curve else None

    def at(self, split: str, iters: int) -> float | None:
        if iters not in self.iters:
            return None
        return self.curve(split)[self.iters.index(iters)]

    def settle(self, split: str, key: str) -> float | None:
        return _m([r["eval"]["settling"][split][key] for r in self.runs])

    def solver(self, split: str, key: str) -> float | None:
        return _m([r["eval"]["solver"].get(split, {}).get(key) for r in self.runs])

    def stab(self, key: str, band: str = "hard") -> float | None:
        return _m([r["analysis"][band].get(key) for r in self.runs])

    def zeros(self, key: str, band: str = "hard") -> float | None:
        return _m([r["analysis"][band]["from_zeros"].get(key) for r in self.runs])

    def train(self, key: str) -> float | None:
        return _m([r["train"].get(key) for r in self.runs])

    @property
    def learned(self) -> bool:
        return self.best("val")[0] > LEARNED_MARGIN


def group(results: list[dict[str, Any]]) -> dict[tuple[str, str, str, str], Config]:
    configs: dict[tuple[str, str, str, str], Config] = {}
    for r in results:
        s = r["spec"]
        key = (s["task"], s["recall"], s["norm"], s["regime"])
        configs.setdefault(key, Config(*key)).runs.append(r)
    order = {t: i for i, t in enumerate(TASK_ORDER)}
    return dict(sorted(configs.items(), key=lambda kv: (order.get(kv[0][0], 9), RECALLS.index(kv[0][1]),
                                                         NORMS.index(kv[0][2]), REGIMES.index(kv[0][3]))))
