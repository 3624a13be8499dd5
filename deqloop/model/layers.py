"""The pieces of the looped block: MLP, the block itself (its recall, norms and residual merge
live in :mod:`deqloop.model.residual`), a stack of untied blocks and the readout head.

Shapes: ``B`` batch, ``N`` tokens (the grid flattened), ``D`` width, ``C`` classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from deqloop.model.attention import Attention
from deqloop.model.config import Architecture
from deqloop.model.norm import RMSNorm
from deqloop.model.residual import Injection, Residual, norm_layers

__all__ = ["Block", "Blocks", "Injection", "MLP", "Readout", "Residual"]


class MLP(nn.Module):
    """Linear → GELU → Linear, per token."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc = nn.Linear(width, hidden)
        self.proj = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))  # (B, N, D)


class Block(nn.Module):
    """One transformer block with recall: ``(z, e) ↦ f(z; e)``, both ``(B, N, D)``.

    ``h = z`` (no or internal recall) or ``h = W_z z + b_z + W_e e + b_e`` (external recall,
    before the block: the paper's ``deepthinking/models/attention.py:407-408``), then
    ``h ← Residual(h; attention)``, ``h ← Residual(h; MLP)`` (:mod:`deqloop.model.residual`).

    By default, as in the paper, the block owns one set of norms (``norm_in``, ``norm_branch``,
    ``norm_out``), one injection pair ``inject`` (internal or external recall) and one GRU cell
    ``gru`` (``residual="gru"``), used by both sublayers; ``norm_weights="per_sublayer"`` and
    ``recall_maps="per_sublayer"`` give each sublayer its own norms and injection pair instead.
    """

    def __init__(self, config: Architecture):
        super().__init__()
        D, c = config.width, config
        shared_norms = c.norm_weights == "shared"
        own_maps = c.recall == "internal" and c.recall_maps == "per_sublayer"
        self.recall = c.recall
        self.inject = Injection(D, c.bias) if c.recall != "none" and not own_maps else None
        self.norm_in, self.norm_branch, self.norm_out = norm_layers(D, c.norm) if shared_norms else (None, None, None)
        # Built in this order so that the earlier form draws the same initial weights from a seed as before.
        res = dict(own_norms=not shared_norms, inject=own_maps, bias=c.bias, gate=c.gate, gate_cap=c.gate_cap)
        self.attn = Attention(D, c.heads, c.qk_norm, c.attention_backend, bias=c.bias, qk_norm_order=c.qk_norm_order)
        self.attn_res = Residual(D, c.norm, **res)
        self.mlp = MLP(D, round(c.mlp_ratio * D))
        self.mlp_res = Residual(D, c.norm, **res)
        self.gru = nn.GRUCell(D, D) if c.residual == "gru" else None

    def forward(
        self,
        z: torch.Tensor,
        e: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        h = self.inject(z, e) if self.recall == "external" else z  # (B, N, D)
        shared = dict(norms=None if self.attn_res.own_norms else self, gru=self.gru,
                      inject=self.inject if self.recall == "internal" else None)
        h = self.attn_res(h, e, self.attn, cos, sin, mask, **shared)
        return self.mlp_res(h, e, self.mlp, **shared)  # (B, N, D)

    def injection_weights(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The recall maps' weights ``(W_x, W_h)`` (on the state, on the input) by where they act:
        ``{"block": ...}`` for the block's own pair, ``{"attn": ..., "mlp": ...}`` for one pair per
        sublayer; empty without recall. Read by :mod:`deqloop.analysis.weights`."""
        maps = {"block": self.inject, "attn": self.attn_res.inject, "mlp": self.mlp_res.inject}
        return {name: (m.w_z.weight, m.w_e.weight) for name, m in maps.items() if m is not None}


class Blocks(nn.ModuleList):
    """``blocks`` different (untied) blocks applied in order: one iteration of a model with
    ``Architecture.blocks > 1`` (the paper's "fixed" baseline stacks 15 with no recall and runs
    one iteration: ``experiments/run_all.bash:71-77``, ``deepthinking/models/transformer.py:126-127``)."""

    def __init__(self, config: Architecture):
        super().__init__(Block(config) for _ in range(config.blocks))

    def forward(self, z: torch.Tensor, e: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor | None) -> torch.Tensor:
        for block in self:
            z = block(z, e, cos, sin, mask)
        return z  # (B, N, D)


class Readout(nn.Module):
    """Per-token head: RMSNorm → Linear → GELU → Linear(num_classes)."""

    def __init__(self, width: int, num_classes: int):
        super().__init__()
        self.norm = RMSNorm(width)
        self.fc = nn.Linear(width, width)
        self.out = nn.Linear(width, num_classes)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(F.gelu(self.fc(self.norm(z))))  # (..., C)
