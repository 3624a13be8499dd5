"""Training objectives: what a step minimises and what it reports.

* :class:`Equilibrium` — solve for the fixed point with the model's solver and take the gradient
  the backward mode gives (``Implicit``, ``Phantom``, ``Unrolled``, ...).
* :class:`Progressive` — the deep-thinking loss. Plain iterations ``z ← f(z; e)`` from z₀; with
  weight ``1 − alpha`` the loss after all ``depth`` iterations (backpropagated through all of
  them) and with weight ``alpha`` the loss after ``n ~ U{0..depth−1}`` iterations without gradient
  followed by ``k ~ U{1..depth−n}`` with gradient. ``alpha=0`` is plain backpropagation through
  the iterations, which are exactly those of :meth:`LoopedDEQ.trajectory` (the evaluation's).

Objectives are ``nn.Module``\\ s wrapping the model, so DistributedDataParallel can wrap them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from deqloop import seeds
from deqloop.model import LoopedDEQ
from deqloop.solvers import relative_residual

__all__ = ["Equilibrium", "Objective", "Progressive", "build_objective", "cross_entropy", "progressive_draw"]

log = logging.getLogger("deqloop.train")

Mean = Callable[[torch.Tensor], float]
UNCONVERGED_WARNING = 0.5  # warn (once a run) when fewer forward solves converge in an implicit-gradient step


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over every cell, in float32."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))


def progressive_draw(seed: int, step: int, depth: int) -> tuple[int, int]:
    """The progressive loss's ``(n, k)`` of a step: n ~ U{0..depth−1}, k ~ U{1..depth−n}."""
    g = seeds.generator(seed, seeds.PROGRESSIVE, step)
    n = int(torch.randint(0, depth, (1,), generator=g))
    k = int(torch.randint(1, depth - n + 1, (1,), generator=g))
    return n, k


class Objective(nn.Module):
    """``(x, y, depth, step) ↦ (loss, logits, stats)``; ``metrics(stats, mean)`` for the log."""

    def __init__(self, model: LoopedDEQ):
        super().__init__()
        self.model = model

    def metrics(self, stats: dict[str, Any], mean: Mean) -> dict[str, Any]:
        return {}


class Equilibrium(Objective):
    """Cross-entropy at the fixed point; gradients from the model's backward mode.

    ``warn_unconverged``: warn once when fewer than half of a logged step's forward solves
    converged (the implicit gradient assumes z* = f(z*)).
    """

    def __init__(self, model: LoopedDEQ, *, warn_unconverged: bool = False):
        super().__init__(model)
        self.warn_unconverged = warn_unconverged

    def forward(self, x: torch.Tensor, y: torch.Tensor, depth: int, step: int):
        out = self.model(x, max_iter=depth)
        return cross_entropy(out.logits, y), out.logits, {"solution": out.solution, "step": step}

    def metrics(self, stats: dict[str, Any], mean: Mean) -> dict[str, Any]:
        sol = stats["solution"]
        m: dict[str, Any] = {
            "iterations": mean(sol.iterations.float().mean()),
            "iterations_max": int(sol.iterations.max()),
            "residual": mean(sol.residual.mean()),
            "residual_max": float(sol.residual.max()),
            "converged": mean(sol.converged.float().mean()),
        }
        b = sol.backward
        if b.residual is not None:
            m["backward_residual"] = mean(b.residual.float().mean())
            m["backward_iterations"] = mean(b.iterations.float().mean())
            m["backward_converged"] = mean(b.converged.float().mean())
        if self.warn_unconverged and m["converged"] < UNCONVERGED_WARNING:
            self.warn_unconverged = False
            s = self.model.config.solve
            log.warning("step %d: only %.0f%% of the forward solves converged within max_iter=%d (rtol %g); the "
                        "implicit gradient assumes z* = f(z*) and is biased where that fails — a larger --max-iter, "
                        "or backward='phantom', may train better", stats["step"] + 1, 100 * m["converged"],
                        s.max_iter, s.rtol)
        return m


class Progressive(Objective):
    """The deep-thinking loss (see the module docstring), with ``(n, k)`` drawn from ``(seed, step)``."""

    def __init__(self, model: LoopedDEQ, *, alpha: float, seed: int):
        super().__init__(model)
        self.alpha, self.seed = alpha, seed

    def forward(self, x: torch.Tensor, y: torch.Tensor, depth: int, step: int):
        m, alpha = self.model, self.alpha
        n, k = progressive_draw(self.seed, step, depth) if alpha > 0 else (0, 0)
        e = m.embed(x)  # (B, *grid, D)
        z0 = m.initial_state(e)
        loss = x.new_zeros((), dtype=torch.float32)
        logits = z_n = residual = None
        if alpha < 1.0:  # every iteration, backpropagated
            z_prev = z = z0
            for t, z_next in enumerate(m.iterates(z0, e, depth)):
                if t == n:
                    z_n = z.detach()
                z_prev, z = z, z_next
            logits = m.readout(z)
            loss = loss + (1.0 - alpha) * cross_entropy(logits, y)
            residual = relative_residual(z, z_prev)
        if alpha > 0.0:  # n iterations without gradient, then k with
            if z_n is None:
                with torch.no_grad():
                    z_n = m.iterate(z0.detach(), e, n)
            z_prev = z = z_n
            for z_next in m.iterates(z_n, e, k):
                z_prev, z = z, z_next
            part = m.readout(z)
            loss = loss + alpha * cross_entropy(part, y)
            if logits is None:
                logits, residual = part, relative_residual(z, z_prev)
        return loss, logits, {"residual": residual, "depth": depth, "n": n, "k": k}

    def metrics(self, stats: dict[str, Any], mean: Mean) -> dict[str, Any]:
        m: dict[str, Any] = {"iterations": stats["depth"]}
        if self.alpha > 0:
            m["n"], m["k"] = stats["n"], stats["k"]
        m["residual"] = mean(stats["residual"].mean())
        return m


def build_objective(model: LoopedDEQ, config: Any) -> Objective:
    """The objective a :class:`~deqloop.train.TrainConfig` asks for."""
    if config.loss == "progressive":
        return Progressive(model, alpha=config.alpha, seed=config.seed)
    return Equilibrium(model, warn_unconverged=config.implicit)
