"""Training objectives: what a step minimises and what it reports.

* :class:`Equilibrium` — solve for the fixed point with the model's solver and take the gradient
  the backward mode gives (``Implicit``, ``Phantom``, ``Unrolled``, ``Neumann``, ...), with the
  fixed-point training recipes, each a setting of :class:`~deqloop.train.TrainConfig` (its ``objective``):

  - ``fp_states`` (fixed-point correction): the solver budget is split into ``fp_states``
    segments, each continuing from the last; every segment's end state is read out and graded,
    with the backward mode's gradient, weighted ``fp_gamma^(fp_states − 1 − i)`` (normalised).
  - ``jac_reg`` (Jacobian regularisation, Bai et al. 2021): plus ``jac_reg`` times a Hutchinson
    estimate of ‖∂f/∂z‖²_F / dim at the fixed point, ‖εᵀJ‖² / numel(ε) with ε ~ N(0, I) drawn
    from ``(seed, step)``, every ``jac_reg_every`` steps.
  - ``train_init`` (path independence): the training solves start from another z₀, e.g.
    ``"mixed"`` (Gaussian entries kept with probability 1/2), so the fixed point cannot depend on
    the starting state.
  - ``pretrain_steps`` (warm start, as MDEQ): the first steps train with the progressive loss;
    :class:`WarmStart` switches objectives at that step.
  - the approximate adjoint ``backward="neumann"`` and the solver budget ``max_iter`` are the
    model's own settings.

  Unset, the equilibrium loss uses the gradient that trained best in the ablation
  (``python -m experiments.sweep --preset recipes``): ``backward="phantom"`` (5 damped steps,
  τ = 0.8), no warm start; see :data:`deqloop.train.config.DEFAULT_RECIPE`.
* :class:`Progressive` — the deep-thinking loss. Plain iterations ``z ← f(z; e)`` from z₀; with
  weight ``1 − alpha`` the loss after all ``depth`` iterations (backpropagated through all of
  them) and with weight ``alpha`` the loss after ``n ~ U{0..depth−1}`` iterations without gradient
  followed by ``k ~ U{1..depth−n}`` with gradient. ``alpha=0`` is plain backpropagation through
  the iterations, which are exactly those of :meth:`LoopedDEQ.trajectory` (the evaluation's).

  The paper's form is the default (``--loss progressive``: ``alpha = 1``, training depth 30 in its
  runs): the draw is ``deepthinking/utils/training.py:118-121`` of the authors' code (``randrange``
  over the same ranges), and at ``n = 0`` the ``k`` graded iterations start from z₀ = e *with* its
  gradient (``training.py:154-171``: no interim state is passed, so the model starts from its
  input projection, ``deepthinking/models/transformer.py:147-151``), so the embedding also learns
  through z₀ — with recall ``none`` that is its only gradient. ``detach_z0=True`` is deqloop's
  earlier form: z₀ detached at ``n = 0`` as at every other ``n``.

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
from deqloop.tools.correction import correction_weights, segments
from deqloop.tools.penalty import jacobian_penalty

__all__ = ["Equilibrium", "Objective", "Progressive", "WarmStart", "build_objective", "cross_entropy",
           "progressive_draw"]

log = logging.getLogger("deqloop.train")

Mean = Callable[[torch.Tensor], float]
MaskFn = Callable[[torch.Tensor, torch.Tensor], "torch.Tensor | None"]
UNCONVERGED_WARNING = 0.5  # warn (once a run) when fewer forward solves converge in an implicit-gradient step


def cross_entropy(logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy in float32 over every cell, or over the cells where ``mask`` (shaped
    like ``y``) is true (0 when none is)."""
    flat = logits.float().reshape(-1, logits.shape[-1])
    if mask is None:
        return F.cross_entropy(flat, y.reshape(-1))
    keep = mask.reshape(-1).to(flat.dtype)
    return (F.cross_entropy(flat, y.reshape(-1), reduction="none") * keep).sum() / keep.sum().clamp(min=1)


def progressive_draw(seed: int, step: int, depth: int) -> tuple[int, int]:
    """The progressive loss's ``(n, k)`` of a step: n ~ U{0..depth−1}, k ~ U{1..depth−n} (the
    paper's ``rand_method="basic"``, ``deepthinking/utils/training.py:118-121``), so
    P(n, k) = 1 / (depth · (depth − n))."""
    g = seeds.generator(seed, seeds.PROGRESSIVE, step)
    n = int(torch.randint(0, depth, (1,), generator=g))
    k = int(torch.randint(1, depth - n + 1, (1,), generator=g))
    return n, k


class Objective(nn.Module):
    """``(x, y, depth, step) ↦ (loss, logits, stats)``; ``metrics(stats, mean)`` for the log.

    ``loss_mask(x, y)`` (e.g. :meth:`Task.loss_mask <deqloop.tasks.Task.loss_mask>`) picks the
    cells the cross-entropy grades; ``None`` (or a mask of ``None``) grades every cell.
    """

    def __init__(self, model: LoopedDEQ, loss_mask: MaskFn | None = None):
        super().__init__()
        self.model = model
        self.loss_mask = loss_mask

    def mask(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        """The cells of the batch the loss grades (``None``: every cell)."""
        return self.loss_mask(x, y) if self.loss_mask is not None else None

    def metrics(self, stats: dict[str, Any], mean: Mean) -> dict[str, Any]:
        return {}


class Equilibrium(Objective):
    """Cross-entropy at the fixed point; gradients from the model's backward mode; the recipes of
    the module docstring (defaults: none of them).

    ``warn_unconverged``: warn once when fewer than half of a logged step's forward solves
    converged (the implicit gradient assumes z* = f(z*)).
    """

    def __init__(self, model: LoopedDEQ, *, seed: int = 0, fp_states: int = 1, fp_gamma: float = 0.8,
                 jac_reg: float = 0.0, jac_reg_every: int = 1, train_init: str | None = None,
                 warn_unconverged: bool = False, loss_mask: MaskFn | None = None):
        super().__init__(model, loss_mask)
        self.seed, self.fp_states, self.fp_gamma = seed, fp_states, fp_gamma
        self.jac_reg, self.jac_reg_every, self.train_init = jac_reg, jac_reg_every, train_init
        self.warn_unconverged = warn_unconverged
        self._weights = correction_weights(fp_states, fp_gamma)  # resolved once, not per step
        self._segments: dict[int, list[int]] = {}

    def segment_weights(self) -> list[float]:
        """The weights of the ``fp_states`` graded states, last (the fixed point) largest; sum 1
        (:func:`deqloop.tools.correction_weights`)."""
        return list(self._weights)

    def segment_budgets(self, depth: int) -> list[int]:
        """The solver budget of each graded segment of a ``depth``-iteration solve
        (:func:`deqloop.tools.correction.segments`), computed once per depth."""
        if depth not in self._segments:
            self._segments[depth] = segments(depth, self.fp_states)
        return self._segments[depth]

    def forward(self, x: torch.Tensor, y: torch.Tensor, depth: int, step: int):
        init = {"init": self.train_init} if self.train_init is not None else {}
        loss = x.new_zeros((), dtype=torch.float32)
        mask = self.mask(x, y)
        z0 = None
        for weight, budget in zip(self._weights, self.segment_budgets(depth)):
            out = self.model(x, z0=z0, max_iter=budget, **init)
            loss = loss + weight * cross_entropy(out.logits, y, mask)
            z0 = out.solution.z.detach()
        stats: dict[str, Any] = {"solution": out.solution, "step": step}
        if self.jac_reg > 0 and step % self.jac_reg_every == 0:
            jac = self.jacobian_penalty(x, out.solution.z, step)
            loss = loss + self.jac_reg * jac.float()
            stats["jac_fro"] = jac.detach()
        return loss, out.logits, stats

    def jacobian_penalty(self, x: torch.Tensor, z: torch.Tensor, step: int) -> torch.Tensor:
        """‖εᵀ ∂f/∂z‖² / numel(ε) at the state ``z`` (detached), ε ~ N(0, I) from ``(seed, step)``
        drawn on ``z``'s device:
        an unbiased estimate of ‖∂f/∂z‖²_F / dim, differentiable in the parameters."""
        e = self.model.embed(x)
        with self.model.use_attention_backend("math"):  # the fused CPU kernels have no double backward
            return jacobian_penalty(lambda z_in: self.model.step(z_in, e), z,
                                    generator=seeds.generator(self.seed, seeds.JACOBIAN, step, device=z.device))

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
        if "jac_fro" in stats:
            m["jac_fro"] = mean(stats["jac_fro"])
        if self.warn_unconverged and m["converged"] < UNCONVERGED_WARNING:
            self.warn_unconverged = False
            s = self.model.config.solve
            log.warning("step %d: only %.0f%% of the forward solves converged within max_iter=%d (rtol %g); the "
                        "implicit gradient assumes z* = f(z*) and is biased where that fails — a larger --max-iter, "
                        "or backward='phantom', may train better", stats["step"] + 1, 100 * m["converged"],
                        s.max_iter, s.rtol)
        return m


class Progressive(Objective):
    """The deep-thinking loss (see the module docstring), with ``(n, k)`` drawn from ``(seed, step)``.

    ``alpha`` weighs the truncated term (1: the paper's, only it); ``detach_z0`` (default
    ``False``, the paper's) cuts the gradient through z₀ when the draw is ``n = 0``.
    """

    def __init__(self, model: LoopedDEQ, *, alpha: float = 1.0, seed: int, detach_z0: bool = False,
                 loss_mask: MaskFn | None = None):
        super().__init__(model, loss_mask)
        self.alpha, self.seed, self.detach_z0 = alpha, seed, detach_z0

    def forward(self, x: torch.Tensor, y: torch.Tensor, depth: int, step: int):
        m, alpha = self.model, self.alpha
        n, k = progressive_draw(self.seed, step, depth) if alpha > 0 else (0, 0)
        e = m.embed(x)  # (B, *grid, D)
        z0 = m.initial_state(e)
        loss = x.new_zeros((), dtype=torch.float32)
        mask = self.mask(x, y)
        logits = z_n = residual = None
        if alpha < 1.0:  # every iteration, backpropagated; z_n read on the way (compiled segments where set)
            z = z0 if n == 0 else m.unroll(z0, e, n)[1]
            z_n = z.detach()
            z_prev, z = m.unroll(z, e, depth - n)
            logits = m.readout(z)
            loss = loss + (1.0 - alpha) * cross_entropy(logits, y, mask)
            residual = relative_residual(z, z_prev)
        if alpha > 0.0:  # n iterations without gradient, then k with
            if n == 0 and not self.detach_z0:
                z_n = z0  # the paper's: the graded iterations start from z0 with its gradient
            elif z_n is None:
                with torch.no_grad():
                    z_n = m.iterate(z0.detach(), e, n)
            z_prev, z = m.unroll(z_n, e, k)  # as compiled segments where compile_segment is set
            part = m.readout(z)
            loss = loss + alpha * cross_entropy(part, y, mask)
            if logits is None:
                logits, residual = part, relative_residual(z, z_prev)
        return loss, logits, {"residual": residual, "depth": depth, "n": n, "k": k}

    def metrics(self, stats: dict[str, Any], mean: Mean) -> dict[str, Any]:
        m: dict[str, Any] = {"iterations": stats["depth"]}
        if self.alpha > 0:
            m["n"], m["k"] = stats["n"], stats["k"]
        m["residual"] = mean(stats["residual"].mean())
        return m


class WarmStart(Objective):
    """The progressive loss for the first ``steps`` steps (with ``plain_depth(x)`` iterations),
    then the equilibrium loss: an equilibrium model warm-started as a weight-tied unrolled net."""

    def __init__(self, warm: Progressive, equilibrium: Equilibrium, steps: int, plain_depth: Callable):
        super().__init__(equilibrium.model)
        self.warm, self.equilibrium, self.steps, self.plain_depth = warm, equilibrium, steps, plain_depth

    def phase(self, step: int) -> Objective:
        return self.warm if step < self.steps else self.equilibrium

    def forward(self, x: torch.Tensor, y: torch.Tensor, depth: int, step: int):
        if step < self.steps:
            loss, logits, stats = self.warm(x, y, self.plain_depth(x), step)
        else:
            loss, logits, stats = self.equilibrium(x, y, depth, step)
        return loss, logits, {**stats, "phase_step": step}

    def metrics(self, stats: dict[str, Any], mean: Mean) -> dict[str, Any]:
        phase = self.phase(stats["phase_step"])
        return {"phase": "warm" if phase is self.warm else "equilibrium", **phase.metrics(stats, mean)}


def build_objective(model: LoopedDEQ, config: Any, loss_mask: MaskFn | None = None) -> Objective:
    """The objective a :class:`~deqloop.train.TrainConfig` asks for; ``loss_mask`` as :class:`Objective`'s."""
    o, seed = config.objective, config.run.seed
    if o.loss == "progressive":
        return Progressive(model, alpha=o.alpha, seed=seed, detach_z0=o.detach_z0, loss_mask=loss_mask)
    equilibrium = Equilibrium(model, seed=seed, fp_states=o.fp_states, fp_gamma=o.fp_gamma, jac_reg=o.jac_reg,
                              jac_reg_every=o.jac_reg_every, train_init=o.train_init,
                              warn_unconverged=config.implicit, loss_mask=loss_mask)
    if o.pretrain_steps:
        warm = Progressive(model, alpha=o.alpha, seed=seed, detach_z0=o.detach_z0, loss_mask=loss_mask)
        return WarmStart(warm, equilibrium, o.pretrain_steps, config.plain_depth)
    return equilibrium
