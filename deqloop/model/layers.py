"""The pieces of the looped block: MLP, input injection (recall), a residual sublayer with its
norms, the block itself and the readout head.

Shapes: ``B`` batch, ``N`` tokens (the grid flattened), ``D`` width, ``C`` classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from deqloop.model.attention import Attention
from deqloop.model.config import Architecture
from deqloop.model.norm import RMSNorm

__all__ = ["Block", "Injection", "MLP", "Readout", "Residual"]


class MLP(nn.Module):
    """Linear → GELU → Linear, per token."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc = nn.Linear(width, hidden)
        self.proj = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))  # (B, N, D)


class Injection(nn.Module):
    """Input injection (recall): ``W_z h + W_e e``."""

    def __init__(self, width: int):
        super().__init__()
        self.w_z = nn.Linear(width, width, bias=False)
        self.w_e = nn.Linear(width, width, bias=False)

    def forward(self, h: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return self.w_z(h) + self.w_e(e)  # (B, N, D)


class Residual(nn.Module):
    """The norms and (internal) recall around one sublayer g; the sublayer itself lives outside.

    pre: h + g(n(h))   peri: h + n(g(n(h)))   post: n(h + g(h))   sandwich: n(h + g(n(h)))
    With internal recall, g's input u becomes W_z u + W_e e (after the pre-norm, if any). With a
    gate (a contractive parameterisation), the branch is scaled per channel by a learnable γ
    clamped to [−cap, cap] before it is added: h + clamp(γ)·g(·).
    """

    def __init__(self, width: int, norm: str, recall: str, gate: float | None = None, gate_cap: float = 0.75):
        super().__init__()
        self.norm_in = RMSNorm(width) if norm in ("pre", "peri", "sandwich") else None
        self.norm_branch = RMSNorm(width) if norm == "peri" else None
        self.norm_out = RMSNorm(width) if norm in ("post", "sandwich") else None
        self.inject = Injection(width) if recall == "internal" else None
        self.gate = nn.Parameter(torch.full((width,), float(gate))) if gate is not None else None
        self.gate_cap = gate_cap

    def forward(self, h: torch.Tensor, e: torch.Tensor, sublayer, *args) -> torch.Tensor:
        u = h if self.norm_in is None else self.norm_in(h)  # (B, N, D)
        if self.inject is not None:
            u = self.inject(u, e)
        y = sublayer(u, *args)  # (B, N, D)
        if self.norm_branch is not None:
            y = self.norm_branch(y)
        if self.gate is not None:
            y = self.gate.clamp(-self.gate_cap, self.gate_cap).to(y.dtype) * y
        h = h + y
        return h if self.norm_out is None else self.norm_out(h)


class Block(nn.Module):
    """One transformer block with recall: ``(z, e) ↦ f(z; e)``, both ``(B, N, D)``."""

    def __init__(self, config: Architecture):
        super().__init__()
        D = config.width
        self.inject = Injection(D) if config.recall == "external" else None
        self.attn = Attention(D, config.heads, config.qk_norm, config.attention_backend)
        self.attn_res = Residual(D, config.norm, config.recall, config.gate, config.gate_cap)
        self.mlp = MLP(D, round(config.mlp_ratio * D))
        self.mlp_res = Residual(D, config.norm, config.recall, config.gate, config.gate_cap)

    def forward(
        self,
        z: torch.Tensor,
        e: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        h = z if self.inject is None else self.inject(z, e)  # (B, N, D)
        h = self.attn_res(h, e, self.attn, cos, sin, mask)
        return self.mlp_res(h, e, self.mlp)  # (B, N, D)

    def injection_weights(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The recall maps' weights ``(W_x, W_h)`` (on the state, on the input) by where they act:
        ``{"block": ...}`` for the block's own pair, ``{"attn": ..., "mlp": ...}`` for one pair per
        sublayer; empty without recall. Read by :mod:`deqloop.analysis.weights`."""
        maps = {"block": self.inject, "attn": self.attn_res.inject, "mlp": self.mlp_res.inject}
        return {name: (m.w_z.weight, m.w_e.weight) for name, m in maps.items() if m is not None}


class Readout(nn.Module):
    """Per-token head: RMSNorm → Linear → GELU → Linear(num_classes)."""

    def __init__(self, width: int, num_classes: int):
        super().__init__()
        self.norm = RMSNorm(width)
        self.fc = nn.Linear(width, width)
        self.out = nn.Linear(width, num_classes)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(F.gelu(self.fc(self.norm(z))))  # (..., C)
