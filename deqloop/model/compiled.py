"""The block under ``torch.compile``: one graph per grad mode, whatever the batch size.

A fixed-point solve calls the block on a batch that shrinks as examples converge (rows are
dropped), with and without gradients (the no-grad solve, then the gradient's steps), on states
that are views of the solver's buffers, and a length curriculum changes the token count. Left to
itself dynamo compiled 7 graphs in a 6-step run (grad mode, the batch size, the token count, the
buffers' strides, an embedding that requires grad in training and not in evaluation) and, past
``torch._dynamo.config.recompile_limit`` (8), runs the block eagerly with one log line. Here the
batch and token dimensions are marked dynamic, no-grad calls get detached inputs, and every graph
is counted: a warning says when the limit is reached.

:class:`CompiledSegments` compiles runs of several iterations (``LoopedDEQ.unroll``): a count
``k`` that changes every step (the progressive loss's ``k ~ U{1..depth − n}``) runs as its binary
decomposition into segments of 1, 2, 4, … iterations (:func:`segment_lengths`), each segment
length a function of its own, so a run compiles at most one graph per length and grad mode.
"""

from __future__ import annotations

import types
import warnings
from typing import Any, Callable

import torch

__all__ = ["CompiledBlock", "CompiledSegments", "segment_lengths"]


class CompiledBlock:
    """``torch.compile(forward)`` with dynamic batch and token dimensions (``dynamic=False``: static,
    one graph per shape); ``graphs`` counts the graphs compiled. ``backend`` (class attribute,
    ``"inductor"``) is the compiler behind it."""

    backend = "inductor"

    def __init__(self, forward: Callable[..., Any], name: str = "the compiled block", *, dynamic: bool = True):
        self.graphs, self.name, self.dynamic = 0, name, dynamic
        self._compiled = torch.compile(forward, backend=self._compile, **({} if dynamic else {"dynamic": False}))

    def _compile(self, gm: torch.fx.GraphModule, example_inputs: list) -> Callable:
        self.graphs += 1
        limit = torch._dynamo.config.recompile_limit
        if self.graphs == limit:
            warnings.warn(f"{self.name} has been compiled {self.graphs} times, torch._dynamo's recompile "
                          f"limit: a further change of what it is called with runs it eagerly (slower); "
                          "TORCH_LOGS=recompiles says why it recompiled", stacklevel=2)
        return torch._dynamo.lookup_backend(self.backend)(gm, example_inputs)

    def __call__(self, z: torch.Tensor, e: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: Any) -> Any:
        if not torch.is_grad_enabled():  # requires_grad means nothing here: one no-grad graph
            z, e = z.detach(), e.detach()
        if self.dynamic:
            for t in (z, e):  # (B, N, D): batch and token counts vary
                torch._dynamo.maybe_mark_dynamic(t, 0)
                torch._dynamo.maybe_mark_dynamic(t, 1)
            for t in (cos, sin, mask):  # tables and mask per token
                if isinstance(t, torch.Tensor):
                    torch._dynamo.maybe_mark_dynamic(t, 0)
        else:  # the cached tables and mask carry a dynamic block's marks (attributes of the tensor objects)
            cos, sin = cos.detach(), sin.detach()
            mask = mask.detach() if isinstance(mask, torch.Tensor) else mask
        return self._compiled(z, e, cos, sin, mask)


def segment_lengths(steps: int, longest: int) -> list[int]:
    """The segment lengths that make up ``steps`` iterations: ``longest`` (a power of two) as often
    as it fits, then the binary digits of the rest, longest first; e.g. 13 → [8, 4, 1], 30 → [16,
    8, 4, 2] and 40 → [16, 16, 8] with ``longest = 16``."""
    if longest < 1 or longest & (longest - 1):
        raise ValueError(f"the longest segment must be a power of two ≥ 1, got {longest}")
    full, rest = divmod(steps, longest)
    return [longest] * full + [1 << b for b in reversed(range(longest.bit_length())) if rest >> b & 1]


def _segment(forward: Callable[..., torch.Tensor], length: int) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """``(z, e, cos, sin, mask) ↦ (z_{length−1}, z_length)``, ``length`` iterations of ``forward``,
    as a function with a code object of its own: dynamo keeps its graphs (and counts its recompile
    limit) per code object, so lengths sharing one would evict each other's graphs."""

    def segment(z: torch.Tensor, e: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: Any):
        prev = z
        for _ in range(length):
            prev, z = z, forward(z, e, cos, sin, mask).to(z.dtype)  # the state keeps its dtype under autocast
        return prev, z

    code = segment.__code__.replace(co_name=f"segment_{length}")
    return types.FunctionType(code, segment.__globals__, code.co_name, None, segment.__closure__)


class CompiledSegments:
    """``steps`` iterations of ``forward`` as compiled segments of 1, 2, 4, …, ``longest``
    iterations (:func:`segment_lengths`): at most ``log2(longest) + 1`` functions, each compiled
    as a :class:`CompiledBlock` (one graph per grad mode); ``graphs`` counts them all.

    In each segment's graph ``forward`` is a nested compile region
    (``torch.compiler.nested_compile_region``): traced and compiled once, and called ``length``
    times, so the segments cost about one block's compilation rather than 31 iterations'.
    Measured on one CPU thread (README, "Throughput"): 4–7 % off the compiled block's training step
    on the sudoku and 12-bit prefix-sums cells, 1 % at depth 30, for 23–28 s more compilation.
    ``inline`` (class attribute, ``False``) inlines every iteration into its segment's graph
    instead: 3–4 times the compilation, and slower than the nested form in every cell measured.
    """

    inline = False

    def __init__(self, forward: Callable[..., torch.Tensor], longest: int):
        segment_lengths(1, longest)  # checks longest
        self.longest = longest
        block = forward
        if not self.inline:
            # one region for every segment (a plain function: the decorator marks its argument)
            block = torch.compiler.nested_compile_region(lambda z, e, cos, sin, mask: forward(z, e, cos, sin, mask))
        self.segments = {1 << b: CompiledBlock(_segment(block, 1 << b), f"the compiled {1 << b}-iteration segment",
                                               dynamic=self.inline)  # a nested region fails on symbolic sizes (torch 2.13)
                         for b in range(longest.bit_length())}

    @property
    def graphs(self) -> int:
        return sum(s.graphs for s in self.segments.values())

    def __call__(self, z: torch.Tensor, e: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: Any,
                 steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z_{steps−1}, z_steps)`` of ``steps ≥ 1`` iterations from ``z``, all ``(B, N, D)``."""
        if z.untyped_storage().data_ptr() == e.untyped_storage().data_ptr():
            z = z.clone()  # z = e or a view of it: aliased inputs would compile another graph (and a nested
            # region refuses them); clone passes the gradient on
        if torch.is_grad_enabled() and e.requires_grad and not z.requires_grad:
            z = z.detach().requires_grad_()  # one graph whether or not the start carries a gradient
        prev = z
        for length in segment_lengths(steps, self.longest):
            prev, z = self.segments[length](z, e, cos, sin, mask)
        return prev, z
