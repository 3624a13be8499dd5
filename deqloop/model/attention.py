"""Bidirectional multi-head self-attention over a grid of tokens.

Queries and keys are rotated by RoPE over the grid axes and RMS-normalized per head (optional).
The paper's form, the default: qkv and output projections with biases and the QK-norm applied
after RoPE (``ashlab11/generalization``, ``deepthinking/models/attention.py:76-77`` and
``:130-133``); ``bias=False`` and ``qk_norm_order="before_rope"`` give deqloop's earlier form.
``local`` attention restricts each token to the cells within ``window // 2`` of it along every
axis (``window`` is the full, odd kernel size), so one model runs on any sequence length; its
pattern is a dense mask or, on large grids, a banded :class:`~deqloop.model.local_attention.LocalWindow`.

Two interchangeable backends compute the same thing:

- ``"sdpa"``: ``F.scaled_dot_product_attention`` (fused kernels; the default).
- ``"math"``: plain softmax(q kᵀ / √d) v. Slower, but every op supports forward-mode AD, which the
  fused CPU kernels do not (``torch.func.jvp`` through SDPA fails on CPU in torch 2.13).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from deqloop.errors import ConfigError
from deqloop.model.local_attention import LocalWindow, banded_attention, local_mask  # noqa: F401 (re-exported)
from deqloop.model.norm import RMSNorm
from deqloop.names import QK_NORM_ORDERS
from deqloop.validate import choice
from deqloop.model.rope import apply_rope, grid_coordinates

ATTENTION_BACKENDS = ("sdpa", "math")


def check_backend(backend: str) -> None:
    choice("attention backend", backend, ATTENTION_BACKENDS)


def math_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """softmax(q kᵀ / √d + mask) v for ``(B, H, N, d)`` inputs and an optional bool ``(N, N)`` mask."""
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))  # (B, H, N, N)
    if mask is not None:
        att = att.masked_fill(~mask, float("-inf"))
    att = torch.softmax(att, dim=-1).to(v.dtype)
    return att @ v  # (B, H, N, d)


class Attention(nn.Module):
    """Multi-head self-attention with RoPE and QK-norm; ``(B, N, D) → (B, N, D)``.

    bias: biases on the qkv and output projections (the paper's; ``False``: none).
    qk_norm_order: ``"after_rope"`` n(rope(q)) (the paper's) or ``"before_rope"`` rope(n(q)).
    """

    def __init__(self, width: int, heads: int, qk_norm: bool = True, backend: str = "sdpa", *,
                 bias: bool = True, qk_norm_order: str = "after_rope"):
        super().__init__()
        if width % heads != 0:
            raise ConfigError(f"width ({width}) must be divisible by heads ({heads})")
        check_backend(backend)
        choice("qk_norm_order", qk_norm_order, QK_NORM_ORDERS)
        self.heads = heads
        self.head_dim = width // heads
        self.backend = backend
        self.norm_after_rope = qk_norm_order == "after_rope"
        self.qkv = nn.Linear(width, 3 * width, bias=bias)
        self.proj = nn.Linear(width, width, bias=bias)
        self.q_norm = RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(self.head_dim) if qk_norm else nn.Identity()

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | LocalWindow | None = None,
    ) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = self.qkv(x).split(D, dim=-1)  # (B, N, D) each
        q = q.view(B, N, self.heads, self.head_dim).transpose(1, 2)  # (B, H, N, hd)
        k = k.view(B, N, self.heads, self.head_dim).transpose(1, 2)  # (B, H, N, hd)
        v = v.view(B, N, self.heads, self.head_dim).transpose(1, 2)  # (B, H, N, hd)
        if self.norm_after_rope:
            q, k = self.q_norm(apply_rope(q, cos, sin)), self.k_norm(apply_rope(k, cos, sin))
        else:
            q, k = apply_rope(self.q_norm(q), cos, sin), apply_rope(self.k_norm(k), cos, sin)
        if isinstance(mask, LocalWindow):  # banded local attention (plain ops, either backend)
            y = banded_attention(q, k, v, mask)  # (B, H, N, hd)
        elif self.backend == "sdpa":
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, N, hd)
        else:
            y = math_attention(q, k, v, mask)  # (B, H, N, hd)
        y = y.transpose(1, 2).reshape(B, N, D)  # (B, N, D)
        return self.proj(y)
