"""The result of :func:`deqloop.analysis.analyze`: one dataclass, JSON round trip, a printable table."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import Tensor

from deqloop.analysis.reachability import Reachability, _floats, _tensor

__all__ = ["REGIMES", "StabilityReport", "regimes"]

REGIMES = ("contractive", "critical", "expansive")


def regimes(radius: Tensor, delta: float) -> list[str]:
    """``"contractive"`` (ρ < 1 − δ), ``"critical"`` or ``"expansive"`` (ρ > 1 + δ) per example;
    ``"unknown"`` where ρ is NaN."""
    out = []
    for r in radius.tolist():
        if math.isnan(r):
            out.append("unknown")
        elif r < 1 - delta:
            out.append("contractive")
        elif r > 1 + delta:
            out.append("expansive")
        else:
            out.append("critical")
    return out


# How each per-example field travels through JSON.
_KINDS = {
    "spectral_radius": "float",
    "eigenvalues": "complex",
    "eig_converged": "bool",
    "sigma_max": "float",
    "sigma_converged": "bool",
    "resolvent_norm": "float",
    "resolvent_converged": "bool",
    "input_sensitivity": "float",
    "sensitivity_converged": "bool",
    "local_smoothness": "float",
    "input_fd": "float",
    "backward_converged": "bool",
    "backward_iterations": "int",
    "backward_residual": "float",
}


@dataclass
class StabilityReport:
    """Reachability, input-dependence and geometry of a batch of fixed points.

    Per-example quantities are ``(B,)`` CPU tensors (``None`` when their measure was not
    computed). Geometry is evaluated at the fixed points reached from ``reference_init``; for an
    example that did not converge, at its best iterate (see ``reachability``).

    Attributes:
        batch: number of examples B. grid: the inputs' grid (it may differ from the model's
            training grid). state_dim: per-example dimension n = N·D.
        model: the model's configuration (plain values). options: the analysis options.
        reference_init: the initial state whose fixed points the other measures use.
        reachability: per initial state, a :class:`Reachability` (convergence, iterations,
            residuals, empirical contraction factors, residual traces).
        agreement: ``"a/b"`` → fraction of examples converged from both ``a`` and ``b`` whose
            fixed points agree within ``options["cluster_rtol"]`` (NaN when none converged).
        converged_fraction: converged fraction from ``reference_init``.
        distinct_fixed_points: clusters (relative tolerance ``cluster_rtol``) among the converged
            fixed points of the batch.
        fixed_point_spread: RMS distance of the converged z* from their mean over their RMS norm.
        spectral_radius: ρ(J), J = ∂f/∂z at z*. eigenvalues: ``(B, k)`` complex leading
            eigenvalues of J. eig_converged: the leading eigenpair met its tolerance.
        regime: per example ``"contractive"``, ``"critical"`` or ``"expansive"`` (ρ vs 1 ± δ).
        sigma_max: largest singular value of J.
        resolvent_norm: ‖(I − J)⁻¹‖₂.
        input_sensitivity: ‖∂z*/∂e · v‖ by the implicit function theorem, root-mean-square
            over random unit directions v.
        local_smoothness: ‖Δz*‖ / ‖Δe‖ for a small random input perturbation, both solved from z*.
        input_fd: the same with each solve started at its own input (z₀ = e, z₀ = e + Δe).
        backward_converged, backward_iterations, backward_residual: the implicit backward
            solve for a random unit cotangent, with the model's backward options.
        weights: the paper's weight diagnostics (:func:`deqloop.analysis.weights.weight_diagnostics`:
            ρ(W_x), ‖W_x‖₂, ..., keys that apply to the model); they need no input.
        timings: seconds per stage.
    """

    batch: int
    grid: list[int]
    state_dim: int
    model: dict[str, Any]
    options: dict[str, Any]
    reference_init: str
    reachability: dict[str, Reachability]
    agreement: dict[str, float]
    converged_fraction: float
    distinct_fixed_points: int
    fixed_point_spread: float
    spectral_radius: Tensor | None = None
    eigenvalues: Tensor | None = None
    eig_converged: Tensor | None = None
    regime: list[str] | None = None
    sigma_max: Tensor | None = None
    sigma_converged: Tensor | None = None
    resolvent_norm: Tensor | None = None
    resolvent_converged: Tensor | None = None
    input_sensitivity: Tensor | None = None
    sensitivity_converged: Tensor | None = None
    local_smoothness: Tensor | None = None
    input_fd: Tensor | None = None
    backward_converged: Tensor | None = None
    backward_iterations: Tensor | None = None
    backward_residual: Tensor | None = None
    weights: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    # -- serialization ---------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values only (lists, floats, ints, bools, str, None; NaN → None)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            kind = _KINDS.get(f.name)
            if value is None:
                out[f.name] = None
            elif kind == "float":
                out[f.name] = _floats(value)
            elif kind == "complex":
                out[f.name] = [[[_f(z.real), _f(z.imag)] for z in row] for row in value.tolist()]
            elif kind in ("bool", "int"):
                out[f.name] = value.tolist()
            elif f.name == "reachability":
                out[f.name] = {k: r.to_dict() for k, r in value.items()}
            elif f.name in ("agreement", "timings", "weights"):
                out[f.name] = {k: _f(v) for k, v in value.items()}
            elif isinstance(value, float):
                out[f.name] = _f(value)
            else:
                out[f.name] = _plain(value)
        return out

    def to_json(self, **kwargs: Any) -> str:
        """``json.dumps(self.to_dict())``; keyword arguments go to :func:`json.dumps`."""
        return json.dumps(self.to_dict(), allow_nan=False, **kwargs)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StabilityReport:
        """Inverse of :meth:`to_dict`."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown StabilityReport field(s) {unknown}; known: {', '.join(sorted(known))}")
        values: dict[str, Any] = {}
        for name, v in d.items():
            kind = _KINDS.get(name)
            if v is None:
                values[name] = None
            elif kind == "float":
                values[name] = _tensor(v)
            elif kind == "complex":
                values[name] = torch.tensor(
                    [[complex(_nan(re), _nan(im)) for re, im in row] for row in v], dtype=torch.complex128
                ).reshape(len(v), -1)
            elif kind == "bool":
                values[name] = torch.tensor(v, dtype=torch.bool)
            elif kind == "int":
                values[name] = torch.tensor(v, dtype=torch.long)
            elif name == "reachability":
                values[name] = {k: Reachability.from_dict(r) for k, r in v.items()}
            elif name in ("agreement", "timings", "weights"):
                values[name] = {k: _nan(x) for k, x in v.items()}
            elif name == "fixed_point_spread" or name == "converged_fraction":
                values[name] = _nan(v)
            else:
                values[name] = v
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> StabilityReport:
        return cls.from_dict(json.loads(text))

    # -- reading ---------------------------------------------------------------------------

    def regime_counts(self) -> dict[str, int]:
        """How many examples fall in each regime (empty when the spectrum was not computed)."""
        if self.regime is None:
            return {}
        counts = {r: self.regime.count(r) for r in REGIMES}
        if "unknown" in self.regime:
            counts["unknown"] = self.regime.count("unknown")
        return counts

    def summary(self) -> str:
        """A printable table of the headline numbers."""
        m = self.model
        lines = [
            f"Stability of a LoopedDEQ (recall={m.get('recall')}, norm={m.get('norm')}, width={m.get('width')}) "
            f"on {self.batch} examples of grid {tuple(self.grid)}, state dim {self.state_dim}",
            "",
        ]
        inits = list(self.reachability)
        rows: list[list[str]] = [["reachability", *inits]]
        rows.append(["  converged", *(f"{r.converged_fraction:.1%}" for r in self.reachability.values())])
        rows.append([
            "  iterations mean / max",
            *(f"{r.iterations.double().mean():.1f} / {int(r.iterations.max())}" for r in self.reachability.values()),
        ])
        rows.append(["  contraction median", *(_fmt(_median(r.contraction)) for r in self.reachability.values())])
        rows.append(["  residual max", *(_fmt(float(r.residual.max())) for r in self.reachability.values())])
        lines += _table(rows)
        if self.agreement:
            tol = self.options.get("cluster_rtol")
            parts = ", ".join(f"{k} {_pct(v)}" for k, v in self.agreement.items())
            lines.append(f"agreement within {tol:g}: {parts}")
        lines.append(
            f"fixed points from {self.reference_init!r}: {self.distinct_fixed_points} distinct among "
            f"{int(self.reachability[self.reference_init].converged.sum())} converged, relative spread "
            f"{_fmt(self.fixed_point_spread)}"
        )
        lines.append("")
        stats: list[list[str]] = [["per example", "min", "median", "max", "converged"]]
        for label, values, ok in (
            ("spectral radius ρ(J)", self.spectral_radius, self.eig_converged),
            ("σ_max(J)", self.sigma_max, self.sigma_converged),
            ("‖(I − J)⁻¹‖", self.resolvent_norm, self.resolvent_converged),
            ("input sensitivity", self.input_sensitivity, self.sensitivity_converged),
            ("local smoothness", self.local_smoothness, None),
            ("finite difference from z₀ = e", self.input_fd, None),
            ("backward iterations", self.backward_iterations, self.backward_converged),
            ("backward residual", self.backward_residual, None),
        ):
            if values is None:
                continue
            v = values.double()
            done = "" if ok is None else f"{float(ok.double().mean()):.0%}"
            stats.append([label, _fmt(_nanmin(v)), _fmt(_median(v)), _fmt(_nanmax(v)), done])
        if len(stats) > 1:
            lines += _table(stats)
        if self.regime is not None:
            delta = self.options.get("delta")
            counts = ", ".join(f"{k} {n}" for k, n in self.regime_counts().items())
            lines.append(f"regime (δ = {delta:g}): {counts}")
        if self.weights:
            lines.append("weights: " + ", ".join(f"{_WEIGHT_LABELS.get(k, k)} {_fmt(v)}" for k, v in self.weights.items()
                                                 if "/" not in k))
        if self.timings:
            lines.append("time: " + ", ".join(f"{k} {v:.2f}s" for k, v in self.timings.items()))
        return "\n".join(lines)


_WEIGHT_LABELS = {"injection_spectral_radius": "ρ(W_x)", "injection_norm": "‖W_x‖", "injection_norm_ratio": "‖W_x‖/‖W_h‖",
                  "injection_condition": "σ₁/σ_last(W_x)", "injection_condition_11": "σ₁/σ₁₁(W_x)", "qk_norm_product": "‖W_Q‖‖W_K‖", "attn_out_norm": "‖W_O‖",
                  "mlp_norm_product": "‖W₁‖‖W₂‖"}


def _f(v: float) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def _nan(v: Any) -> float:
    return float("nan") if v is None else float(v)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float):
        return _f(value)
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    return str(value)


def _finite(v: Tensor) -> Tensor:
    v = v.double().reshape(-1)
    return v[torch.isfinite(v)]


def _median(v: Tensor) -> float:
    f = _finite(v)
    return float(f.median()) if f.numel() else float("nan")


def _nanmin(v: Tensor) -> float:
    f = _finite(v)
    return float(f.min()) if f.numel() else float("nan")


def _nanmax(v: Tensor) -> float:
    f = _finite(v)
    return float(f.max()) if f.numel() else float("nan")


def _fmt(v: float) -> str:
    if math.isnan(v):
        return "—"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if v == int(v) and abs(v) < 1e6:
        return str(int(v))
    return f"{v:.4g}"


def _pct(v: float) -> str:
    return "—" if math.isnan(v) else f"{v:.1%}"


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows if i < len(r)) for i in range(max(map(len, rows)))]
    out = []
    for r in rows:
        cells = [r[0].ljust(widths[0])] + [c.rjust(widths[i + 1]) for i, c in enumerate(r[1:])]
        out.append("  ".join(cells).rstrip())
    return out
