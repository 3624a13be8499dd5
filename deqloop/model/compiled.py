"""The block under ``torch.compile``: one graph per grad mode, whatever the batch size.

A fixed-point solve calls the block on a batch that shrinks as examples converge (rows are
dropped), with and without gradients (the no-grad solve, then the gradient's steps), on states
that are views of the solver's buffers, and a length curriculum changes the token count. Left to
itself dynamo compiled 7 graphs in a 6-step run (grad mode, the batch size, the token count, the
buffers' strides, an embedding that requires grad in training and not in evaluation) and, past
``torch._dynamo.config.recompile_limit`` (8), runs the block eagerly with one log line. Here the
batch and token dimensions are marked dynamic, no-grad calls get detached inputs, and every graph
is counted: a warning says when the limit is reached.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import torch

__all__ = ["CompiledBlock"]


class CompiledBlock:
    """``torch.compile(forward)`` with dynamic batch and token dimensions; ``graphs`` counts the
    graphs compiled. ``backend`` (class attribute, ``"inductor"``) is the compiler behind it."""

    backend = "inductor"

    def __init__(self, forward: Callable[..., torch.Tensor]):
        self.graphs = 0
        self._compiled = torch.compile(forward, backend=self._compile)

    def _compile(self, gm: torch.fx.GraphModule, example_inputs: list) -> Callable:
        self.graphs += 1
        limit = torch._dynamo.config.recompile_limit
        if self.graphs == limit:
            warnings.warn(f"the compiled block has been compiled {self.graphs} times, torch._dynamo's recompile "
                          f"limit: a further change of what it is called with runs it eagerly (slower); "
                          "TORCH_LOGS=recompiles says why it recompiled", stacklevel=2)
        return torch._dynamo.lookup_backend(self.backend)(gm, example_inputs)

    def __call__(self, z: torch.Tensor, e: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: Any) -> torch.Tensor:
        if not torch.is_grad_enabled():  # requires_grad means nothing here: one no-grad graph
            z, e = z.detach(), e.detach()
        for t in (z, e):  # (B, N, D): batch and token counts vary
            torch._dynamo.maybe_mark_dynamic(t, 0)
            torch._dynamo.maybe_mark_dynamic(t, 1)
        for t in (cos, sin, mask):  # tables and mask per token
            if isinstance(t, torch.Tensor):
                torch._dynamo.maybe_mark_dynamic(t, 0)
        return self._compiled(z, e, cos, sin, mask)
