"""Stability over training: a cheap probe of the loop map, taken every few training steps.

    monitor = StabilityMonitor(model, probe_x, seed=run_seed)
    record = monitor.measure(step, grad_norms=grad_norms(model))   # {"step", "kind": "stability", ...}

On a small fixed probe batch (drawn once; :func:`probe_batch` takes it from the task's ``"val"``
split with its own seed stream) each measurement records, with the model's solver settings:

* ``rho``, ``rho_max``: the median and the largest over the probe of the spectral radius ρ(∂f/∂z)
  at the forward solve's fixed point, by the library's one estimator
  (:func:`deqloop.analysis.leading_eigenvalues`, Krylov–Schur on Jacobian–vector products) to
  the relative residual ``eig_tol`` within ``eig_matvecs`` products per example, warm-started
  from the previous measurement's leading vectors (a slowly changing Jacobian then needs fewer
  products); ``rho_residual``: the median relative residual ``‖J y − θ y‖ / |θ|`` of the leading
  Ritz pair (how far the estimate is from converged); ``rho_matvecs``: the mean products spent.
* ``forward_converged``, ``forward_iterations``: converged fraction and mean iterations of the
  model's solver from the model's initial state; ``plain_converged``, ``plain_iterations``: the
  same for plain iteration z ← f(z) (reachability).
* ``backward_converged``, ``backward_iterations``: the implicit backward solve for a random unit
  cotangent (as :func:`deqloop.analysis.analyze` measures it).
* ``init_distance``: the median over the probe of ‖z*_e − z*_0‖ / max(‖z*_e‖, ‖z*_0‖) between the
  fixed points the solver reaches from z₀ = e and from z₀ = 0.
* the paper's weight diagnostics (:func:`deqloop.analysis.weights.weight_diagnostics`):
  ``injection_spectral_radius`` ρ(W_x), ``injection_norm`` ‖W_x‖₂, ``injection_norm_ratio``
  ‖W_x‖₂/‖W_h‖₂, ``injection_condition`` σ₁/σ_last(W_x) (with recall), ``qk_norm_product``
  ‖W_Q‖₂‖W_K‖₂, ``attn_out_norm`` ‖W_O‖₂, ``mlp_norm_product`` ‖W₁‖₂‖W₂‖₂.
* ``grad_norm/<group>``: the gradient norm of each parameter group (:data:`GROUPS`), when given.

Every random draw comes from generators of ``(seed, seeds.MONITOR, step)``; the global RNGs are not
touched, so a run trains the same parameters with the monitor on or off. :meth:`state_dict`
holds the warm-start subspace (the trainer checkpoints it under ``"monitor"``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from deqloop import seeds
from deqloop.analysis.backward import backward_stats
from deqloop.analysis.jacobian import LoopJacobian, leading_eigenvalues
from deqloop.analysis.krylov import EigenEstimate
from deqloop.validate import integer, number

__all__ = ["GROUPS", "StabilityMonitor", "grad_norms", "param_group", "probe_batch"]

GROUPS = ("embedding", "attn", "mlp", "inject", "norms", "head", "other")


def param_group(name: str) -> str:
    """The group of a parameter of a :class:`~deqloop.model.LoopedDEQ` by its name: ``embedding.*``,
    ``head.*`` (the readout, its norm included), ``inject`` (recall maps ``*inject*``), ``norms``
    (the block's RMSNorms, q/k norms included), ``attn`` (``block.attn*``: attention and its
    residual gate), ``mlp`` (``block.mlp*``), else ``other``. The index of an untied block
    (``block.3.attn...``) is skipped."""
    parts = [p for p in name.split(".") if not p.isdigit()]
    if parts[0] in ("embedding", "head"):
        return parts[0]
    if "inject" in parts:
        return "inject"
    if len(parts) > 1 and "norm" in parts[-2]:
        return "norms"
    if len(parts) > 1 and parts[0] == "block" and parts[1].startswith(("attn", "mlp")):
        return "attn" if parts[1].startswith("attn") else "mlp"
    return "other"


def grad_norms(model: nn.Module) -> dict[str, float]:
    """``{"grad_norm/<group>": ‖∇‖₂}`` over the parameters with a gradient, per :func:`param_group`."""
    sq: dict[str, Tensor] = {}
    for name, p in model.named_parameters():
        if p.grad is not None:
            g = param_group(name)
            sq[g] = sq.get(g, 0.0) + p.grad.detach().double().pow(2).sum()
    return {f"grad_norm/{g}": float(sq[g].sqrt()) for g in GROUPS if g in sq}


def probe_batch(task: Any, size: int, seed: int) -> Tensor:
    """The monitor's fixed probe inputs: ``size`` examples of ``task``'s ``"val"`` split, drawn with
    the seed stream :data:`deqloop.seeds.MONITOR` of the run's ``seed``."""
    x, _ = task.make("val", integer("stability_size", size), seed=seeds.derive_seed(seed, seeds.MONITOR) % 2**31)
    return x


class StabilityMonitor:
    """Stability measurements of ``model`` on the fixed probe inputs ``probe_x`` (see the module
    docstring).

    Args:
        model: a :class:`~deqloop.model.LoopedDEQ` (not modified; compiled or not: the probes run
            through the uncompiled block, :meth:`~deqloop.model.LoopedDEQ.eager`).
        probe_x: token ids ``(P, *grid)``, the same for every measurement.
        seed: the run's seed; measurement ``step`` draws from ``(seed, seeds.MONITOR, step)``.
        eig_tol: relative residual of the leading Ritz pair at which the ρ estimate stops.
        eig_matvecs: Jacobian–vector products per probe example at most (the estimate stops there,
            unconverged, with its residual recorded).
        rtol, max_iter: the solves' tolerance and budget (``None``: the model's own).
    """

    def __init__(self, model: nn.Module, probe_x: Tensor, *, seed: int, eig_tol: float = 1e-3, eig_matvecs: int = 24,
                 rtol: float | None = None, max_iter: int | None = None):
        self.model, self.seed = model, integer("seed", seed, 0)
        self.eig_tol = number("eig_tol", eig_tol, low=0, low_open=True, high=1, high_open=True)
        self.eig_matvecs = integer("eig_matvecs", eig_matvecs, 3)
        self.rtol = None if rtol is None else number("rtol", rtol, low=0, low_open=True)
        self.max_iter = None if max_iter is None else integer("max_iter", max_iter)
        self.probe_x = probe_x
        self.basis: Tensor | None = None  # (P, n, 2) warm start: the last estimate's leading vectors

    # -- state -----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"basis": None if self.basis is None else self.basis.detach().cpu().clone()}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore the warm start (``None`` or a basis of another shape: start cold next time)."""
        basis = (state or {}).get("basis")
        self.basis = None if basis is None else basis.clone()

    # -- measuring -------------------------------------------------------------------------------

    def spectral_radius(self, z: Tensor, e: Tensor, seed: int, *, tol: float | None = None,
                        max_matvecs: int | None = None) -> EigenEstimate:
        """The leading eigenvalues of ∂f/∂z at ``(z, e)`` (``.radius`` ``(P,)``), warm-started from the
        last call's vectors when they fit; advances the warm start. ``tol``, ``max_matvecs``:
        ``None``, the monitor's ``eig_tol`` and ``eig_matvecs``."""
        jac = LoopJacobian.from_model(self.model, z, e)
        start = self.basis
        if start is not None and tuple(start.shape[:2]) != (jac.batch, jac.dim):
            start = None
        budget = self.eig_matvecs if max_matvecs is None else max_matvecs
        est = leading_eigenvalues(jac, k=2, ncv=min(budget, 20), tol=self.eig_tol if tol is None else tol,
                                  maxiter=budget, max_matvecs=budget, start=start, seed=seed)
        self.basis = est.vectors.detach()
        return est

    def measure(self, step: int, grad_norms: dict[str, float] | None = None) -> dict[str, Any]:
        """One measurement after training step ``step``: the ``{"step", "kind": "stability", ...}``
        record of the module docstring (``grad_norms`` are merged in). The probes run through the
        uncompiled block (double backward, and a probe batch of its own size)."""
        with self.model.eager():
            return self._measure(step, grad_norms)

    def _measure(self, step: int, grad_norms: dict[str, float] | None) -> dict[str, Any]:
        from deqloop.analysis.reachability import solve_from
        from deqloop.analysis.weights import weight_diagnostics

        model = self.model
        given = {"rtol": self.rtol, "max_iter": self.max_iter}
        s = model.config.solve.with_(**{k: v for k, v in given.items() if v is not None})
        gen = seeds.generator(self.seed, seeds.MONITOR, step)
        solve_kw = {"rtol": s.rtol, "atol": s.atol, "scale": s.init_scale, "max_iter": s.max_iter, "generator": gen}
        device = next(model.parameters()).device
        with torch.no_grad():
            e = model.embed(self.probe_x.to(device))
        runs: dict[tuple[str, str], Any] = {}

        def run(init: str, solver: str):
            if (init, solver) not in runs:
                options = s.with_(solver=solver).solver_options
                runs[init, solver] = solve_from(model, e, init, solver=solver, solver_options=options, **solve_kw)
            return runs[init, solver]

        fwd, sol = run(s.init, s.solver)
        plain, _ = run(s.init, "picard")
        (_, a), (_, b) = run("embed", s.solver), run("zeros", s.solver)
        za, zb = a.z.reshape(len(e), -1).double(), b.z.reshape(len(e), -1).double()
        scale = torch.maximum(za.norm(dim=1), zb.norm(dim=1)).clamp_min(torch.finfo(torch.float64).tiny)
        distance = ((za - zb).norm(dim=1) / scale).cpu()
        z_star = sol.z.detach()
        est = self.spectral_radius(z_star, e, int(torch.randint(0, 2**31 - 3, (1,), generator=gen)))
        radius, residual = est.radius, est.residual
        b_conv, b_iters, _ = backward_stats(model, e, z_star, solver=s.solver, solver_options=s.solver_options,
                                             options=None, seed=int(torch.randint(0, 2**31 - 3, (1,), generator=gen)))
        record: dict[str, Any] = {
            "step": int(step), "kind": "stability", "probe": len(e),
            "rho": _median(radius), "rho_max": float(radius.max()), "rho_residual": _median(residual),
            "rho_matvecs": float(est.matvecs.double().mean()),
            "forward_converged": fwd.converged_fraction, "forward_iterations": float(fwd.iterations.double().mean()),
            "plain_converged": plain.converged_fraction, "plain_iterations": float(plain.iterations.double().mean()),
            "backward_converged": float(b_conv.double().mean()),
            "backward_iterations": float(b_iters.double().mean()),
            "init_distance": _median(distance),
            **weight_diagnostics(model),
        }
        record.update(grad_norms or {})
        return record


def _median(t: Tensor) -> float:
    """The median (the mean of the two middle values for an even count)."""
    return float(t.double().quantile(0.5))
