"""The names the model's configuration accepts, without importing torch (readers of results use
them too)."""

from __future__ import annotations

__all__ = ["ATTENTIONS", "INITS", "NORMS", "NORM_WEIGHTS", "QK_NORM_ORDERS", "RECALLS", "RECALL_MAPS", "RESIDUALS"]

RECALLS = ("none", "external", "internal")
NORMS = ("pre", "peri", "post", "sandwich")
RECALL_MAPS = ("shared", "per_sublayer")
NORM_WEIGHTS = ("shared", "per_sublayer")
RESIDUALS = ("add", "gru")
QK_NORM_ORDERS = ("after_rope", "before_rope")
ATTENTIONS = ("full", "local")
INITS = ("embed", "zeros", "noise", "mixed")
