"""The names the model's configuration accepts, without importing torch (readers of results use
them too)."""

from __future__ import annotations

__all__ = ["ATTENTIONS", "INITS", "NORMS", "RECALLS"]

RECALLS = ("none", "external", "internal")
NORMS = ("pre", "peri", "post", "sandwich")
ATTENTIONS = ("full", "local")
INITS = ("embed", "zeros", "noise", "mixed")
