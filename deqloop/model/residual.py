"""What surrounds each sublayer of the block: input injection (recall), the RMSNorms and the
residual merge.

One formula for a sublayer g (attention or MLP) with residual stream h and embedding e:

    h ↦ Post(merge(h, γ ⊙ Peri(g(I(Pre(h), e)))))

- Pre / Peri / Post: RMSNorms placed by ``norm`` (the identity where a placement has none):
  ``"pre"`` Pre; ``"peri"`` Pre and Peri; ``"post"`` Post; ``"sandwich"`` Pre and Post.
- I: internal recall ``I(u, e) = W_z u + b_z + W_e e + b_e``; the identity without it. The
  injected input feeds only the sublayer: the residual stream h stays un-injected.
- merge: ``"add"`` h + y; ``"gru"`` a GRU cell with the branch y as its input and the stream h
  as its hidden state, ``GRUCell(y, h)``, token by token.
- γ: an optional per-channel gate clamped to [−cap, cap] (deqloop's contractive
  parameterisation; additive merge only).

This is the paper's block (``ashlab11/generalization``, ``deepthinking/models/attention.py``:
the norms ``:283-299``, the injection pair ``:307-310``, the GRU merge ``:360-366``, the
sublayer ``:410-425``, applied to attention and MLP ``:430-431``). There the norms, the
injection pair and the GRU cell are the block's: one instance used by both sublayers. A
:class:`Residual` holds only what belongs to its own sublayer (per-sublayer norms and injection,
deqloop's earlier form, and the gate); the block passes it the shared parts.
"""

from __future__ import annotations

import torch
from torch import nn

from deqloop.model.norm import RMSNorm

__all__ = ["Injection", "Residual", "gru_merge", "norm_layers"]


class Injection(nn.Module):
    """Input injection (recall): ``W_z h + b_z + W_e e + b_e`` (no biases with ``bias=False``).

    ``w_z`` acts on the state, ``w_e`` on the embedding: the paper's ``Wx`` and ``Wh``
    (``deepthinking/models/attention.py:307-310``, where x is the state and h the input).
    """

    def __init__(self, width: int, bias: bool = True):
        super().__init__()
        self.w_z = nn.Linear(width, width, bias=bias)
        self.w_e = nn.Linear(width, width, bias=bias)

    def forward(self, h: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return self.w_z(h) + self.w_e(e)  # (B, N, D)


def norm_layers(width: int, norm: str) -> tuple[RMSNorm | None, RMSNorm | None, RMSNorm | None]:
    """``(Pre, Peri, Post)`` for a norm placement: an :class:`RMSNorm` where it has one, else None."""
    return (RMSNorm(width) if norm in ("pre", "peri", "sandwich") else None,
            RMSNorm(width) if norm == "peri" else None,
            RMSNorm(width) if norm in ("post", "sandwich") else None)


def gru_merge(gru: nn.GRUCell, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``GRUCell(input=y, hidden=h)`` on every token; ``h`` and ``y`` ``(B, N, D)``."""
    return gru(y.reshape(-1, y.shape[-1]), h.reshape(-1, h.shape[-1])).reshape(h.shape)


class Residual(nn.Module):
    """The wiring around one sublayer (see the module docstring for the formula).

    Owns its per-sublayer parts: its norms ``norm_in`` (Pre), ``norm_branch`` (Peri),
    ``norm_out`` (Post) when ``own_norms``, its injection ``inject`` when ``inject``, and its gate.
    Whatever it does not own, :meth:`forward` takes from the caller (the block's shared parts).
    """

    def __init__(self, width: int, norm: str, *, own_norms: bool = True, inject: bool = False, bias: bool = True,
                 gate: float | None = None, gate_cap: float = 0.75):
        super().__init__()
        self.norm_in, self.norm_branch, self.norm_out = norm_layers(width, norm) if own_norms else (None, None, None)
        self.own_norms = own_norms
        self.inject = Injection(width, bias) if inject else None
        self.gate = nn.Parameter(torch.full((width,), float(gate))) if gate is not None else None
        self.gate_cap = gate_cap

    def forward(self, h: torch.Tensor, e: torch.Tensor, sublayer, *args, norms: nn.Module | None = None,
                inject: Injection | None = None, gru: nn.GRUCell | None = None) -> torch.Tensor:
        """``Post(merge(h, γ ⊙ Peri(g(I(Pre(h), e)))))`` for ``h``, ``e`` ``(B, N, D)``.

        norms: a module with ``norm_in``, ``norm_branch``, ``norm_out`` (the block, when it shares
        its norms); by default this residual's own. inject: the shared injection pair (internal
        recall); by default this residual's own, if any. gru: the merge's GRU cell; None adds.
        """
        if norms is None:
            if not self.own_norms:
                raise ValueError("this residual shares its block's norms: pass them as norms=")
            norms = self
        inject = self.inject if inject is None else inject
        u = h if norms.norm_in is None else norms.norm_in(h)  # (B, N, D)
        if inject is not None:
            u = inject(u, e)
        y = sublayer(u, *args)  # (B, N, D)
        if norms.norm_branch is not None:
            y = norms.norm_branch(y)
        if self.gate is not None:
            y = self.gate.clamp(-self.gate_cap, self.gate_cap).to(y.dtype) * y
        h = h + y if gru is None else gru_merge(gru, h, y)
        return h if norms.norm_out is None else norms.norm_out(h)
