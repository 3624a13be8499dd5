"""The paper's weight diagnostics: spectral quantities of the looped block's weight matrices.

    weight_diagnostics(model)
    # {"injection_spectral_radius": ρ(W_x), "injection_norm": ‖W_x‖₂,
    #  "injection_norm_ratio": ‖W_x‖₂ / ‖W_h‖₂, "injection_condition": σ₁(W_x) / σ_last(W_x),
    #  "injection_condition_11": σ₁(W_x) / σ₁₁(W_x),
    #  "qk_norm_product": ‖W_Q‖₂ ‖W_K‖₂, "attn_out_norm": ‖W_O‖₂, "mlp_norm_product": ‖W₁‖₂ ‖W₂‖₂}

These are what the paper logs once per epoch (authors' code ``train_model.py:243-279``, repository
ashlab11/generalization): ρ is the largest |eigenvalue|, ‖·‖₂ the largest singular value. ``W_x``
is the recall map's weight on the state, ``W_h`` its weight on the input embedding; ``W_Q``, ``W_K``
are the query and key rows of the block's ``qkv`` projection (all heads together), ``W_O`` the
attention's output projection, ``W₁``, ``W₂`` the MLP's two layers. They are weights only: no
input, no fixed point (deqloop's own ρ(∂f/∂z) is :mod:`deqloop.analysis.jacobian`).

``injection_condition`` is σ₁ / σ_last, the condition number proper (``inf`` for a singular
``W_x``). The paper's code divides σ₁ by the 11th largest singular value instead (its
``inject_condition``, ``train_model.py:266-267``); that number is ``injection_condition_11``, for
widths of 11 and more.

The injection keys are present only for a model with recall. A model with one injection pair
(external recall, the paper's shared internal recall) reports them as is; with one pair per
sublayer each pair is reported under ``<key>/<sublayer>`` (e.g. ``injection_norm/attn``) and the
bare key holds the largest value over the pairs. A model with several blocks per iteration is
read at its first block, as the paper's code does (``recur_blocks[0]``).

Computed in float64 on the CPU from detached weights (a host copy of a few matrices; no graph).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["INJECTION_KEYS", "WEIGHT_KEYS", "weight_diagnostics"]

INJECTION_KEYS = ("injection_spectral_radius", "injection_norm", "injection_norm_ratio", "injection_condition",
                  "injection_condition_11")
WEIGHT_KEYS = (*INJECTION_KEYS, "qk_norm_product", "attn_out_norm", "mlp_norm_product")


def _host(w: Tensor) -> Tensor:
    return w.detach().to(device="cpu", dtype=torch.float64)


def _norm2(w: Tensor) -> float:
    """‖w‖₂, the largest singular value (NaN for a weight with a non-finite entry)."""
    w = _host(w)
    return float(torch.linalg.matrix_norm(w, 2)) if torch.isfinite(w).all() else math.nan


def _ratio(a: float, b: float) -> float:
    """a / b, ``inf`` for b = 0 (NaN stays NaN)."""
    return a / b if b != 0 else (math.nan if math.isnan(a) else math.inf)


def _injection(w_x: Tensor, w_h: Tensor) -> dict[str, float]:
    """The injection diagnostics of one pair ``(W_x, W_h)``; NaN where ``W_x`` is not finite."""
    wx = _host(w_x)
    keys = INJECTION_KEYS if wx.shape[0] >= 11 else INJECTION_KEYS[:-1]
    if not torch.isfinite(wx).all():
        return dict.fromkeys(keys, math.nan)
    sv = [float(v) for v in torch.linalg.svdvals(wx)]  # descending
    out = {
        "injection_spectral_radius": float(torch.linalg.eigvals(wx).abs().max()),
        "injection_norm": sv[0],
        "injection_norm_ratio": _ratio(sv[0], _norm2(w_h)),
        "injection_condition": _ratio(sv[0], sv[-1]),
    }
    if "injection_condition_11" in keys:
        out["injection_condition_11"] = _ratio(sv[0], sv[10])
    return out


def _first_block(model: nn.Module) -> nn.Module:
    """The model's block, or the first of its untied blocks (an ``nn.ModuleList``)."""
    block = getattr(model, "block", None)
    if isinstance(block, nn.ModuleList):
        block = block[0] if len(block) else None
    if block is None or not hasattr(block, "injection_weights"):
        raise TypeError(f"{type(model).__name__} has no looped block to read weights from")
    return block


def weight_diagnostics(model: nn.Module) -> dict[str, float]:
    """The paper's weight diagnostics of a :class:`~deqloop.model.LoopedDEQ` (module docstring):
    keys of :data:`WEIGHT_KEYS` that apply to the model, in that order, with per-sublayer keys
    after them when the model has one injection pair per sublayer."""
    block = _first_block(model)
    pairs = {where: _injection(w_x, w_h) for where, (w_x, w_h) in block.injection_weights().items()}
    out: dict[str, float] = {}
    if pairs:
        out.update({k: max(p[k] for p in pairs.values()) for k in INJECTION_KEYS if k in next(iter(pairs.values()))})
    q, k, _ = block.attn.qkv.weight.chunk(3, dim=0)  # (D, D) each: all heads' query / key rows
    out["qk_norm_product"] = _norm2(q) * _norm2(k)
    out["attn_out_norm"] = _norm2(block.attn.proj.weight)
    out["mlp_norm_product"] = _norm2(block.mlp.fc.weight) * _norm2(block.mlp.proj.weight)
    if len(pairs) > 1:
        out.update({f"{k}/{where}": v for where, p in pairs.items() for k, v in p.items()})
    return out
