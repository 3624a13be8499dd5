"""What a solver is: a small object with ``init`` and ``step``; the loop in ``loop.py`` drives it.

A solver sees flattened states ``x`` of shape ``(N, D)`` — only the samples still being solved —
and their images ``fx = f(x)``. It keeps its per-sample memory in a dict of tensors whose first
dimension is ``N``, so the loop can drop converged samples from it (``Solver.compact``: by default
it indexes every entry). Linear algebra happens in ``acc_dtype`` (float32, or float64 for float64
states).
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch

from deqloop.solvers.packing import map_leaves
from deqloop.validate import known_keys

State = dict[str, torch.Tensor]


def host_reads_are_free(device: torch.device) -> bool:
    """Whether reading a value computed on ``device`` on the host costs no synchronisation (the
    CPU): then the loop and the solvers may branch on a mask to skip work; elsewhere they take
    the branch-free path."""
    return device.type == "cpu"


def without_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast switched off on ``device``'s kind while a solver's own arithmetic runs: under bf16
    autocast a ``bmm`` would return bf16 (rounding Anderson's Gram matrix, and handing Broyden's
    ``baddbmm(..., out=float32)`` mixed dtypes); the map ``f`` itself keeps the caller's autocast."""
    if torch.is_autocast_enabled(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


@dataclass(frozen=True)
class KeptRows:
    """The rows that stay when frozen ones are dropped: new row i is old row ``index[i]``.

    Rows keep their place, except the ``donors`` (staying rows beyond the new size), which move
    into the ``holes`` (dropped rows within it). :meth:`take` copies the kept rows into a new
    tensor; :meth:`move` rearranges a buffer in place, copying only the moved rows, and returns
    its first ``len(index)`` rows (a view) — for large buffers the solver allocated itself.
    """

    index: torch.Tensor  # (n_keep,) long
    holes: torch.Tensor  # (n_moved,) long, ascending, < n_keep
    donors: torch.Tensor  # (n_moved,) long, ascending, ≥ n_keep
    dropped: torch.Tensor  # (N − n_keep,) long: the rows that leave
    gather: bool = False  # move() gathers every kept row (no holes and donors: see of())

    @classmethod
    def of(cls, active: torch.Tensor, n_keep: int | None = None) -> KeptRows:
        """The plan that keeps the rows where ``active`` (an (N,) bool mask) is true.

        Given ``n_keep`` (the number of true entries, already read by the caller) on an
        accelerator, the plan takes no host read: a stable sort puts the kept rows first, and
        :meth:`move` gathers them all (finding holes and donors would read their number)."""
        if n_keep is not None and not host_reads_are_free(active.device):
            order = torch.argsort((~active).to(torch.uint8), stable=True)  # kept rows first, in order
            return cls(order[:n_keep], order[:0], order[:0], order[n_keep:], gather=True)
        stay = active.nonzero().squeeze(1)
        n_keep = stay.numel()
        leave = (~active[:n_keep]).nonzero().squeeze(1)
        donors = stay[stay >= n_keep]
        index = torch.arange(n_keep, device=active.device)
        index[leave] = donors
        return cls(index, leave, donors, (~active).nonzero().squeeze(1))

    def take(self, v: torch.Tensor) -> torch.Tensor:
        return v.index_select(0, self.index)

    def move(self, v: torch.Tensor) -> torch.Tensor:
        if self.gather:
            n = self.index.numel()
            return v[:n].copy_(v.index_select(0, self.index))
        if self.holes.numel():
            # a few rows on the CPU: one copy each, no gathered temporary; else two calls in all
            if host_reads_are_free(v.device) and self.holes.numel() <= 64:
                for hole, donor in zip(self.holes.tolist(), self.donors.tolist()):
                    v[hole].copy_(v[donor])
            else:
                v.index_copy_(0, self.holes, v.index_select(0, self.donors))
        return v[: self.index.numel()]


class Solver:
    """Base class of iterative fixed-point solvers.

    Subclasses validate their options in ``__init__`` and implement:

    * ``init(x, fx, acc_dtype) -> state``: memory, after the first evaluation (large buffers from
      :func:`deqloop.solvers.workspace.empty`, which reuses them across solves on the CPU);
    * ``step(state, x, fx, g, k) -> (x_next, state)``: the next point to evaluate, given the
      current point ``x``, ``fx = f(x)`` and the residual ``g = fx − x`` in ``acc_dtype``
      (``k`` counts evaluations so far, starting at 1);

    and may override ``residual_out(state, k)`` (where the loop writes ``g``; by default a buffer
    of the loop's own, overwritten at the next step, so a solver that keeps ``g`` must copy it or
    name a buffer of its own here) and ``compact(state, rows)`` (see :class:`KeptRows`).

    The loop passes every row, also those of samples already frozen: a frozen sample's answer is
    kept by the loop, and what the solver does with its row no longer matters (rows never mix).
    The loop holds on to ``x`` and ``fx`` without copying them, so a step must not write into
    them, and ``x_next`` may be a buffer of the solver's own only if the step that follows (which
    receives it as ``x``) writes elsewhere: two buffers taken by turns (see :class:`Anderson`).

    ``records_history``: whether the steps can run under autograd, for backpropagation through the
    iterations (``LoopOptions(differentiable=True)``); False for a solver whose steps write into
    its own memory (``out=``, in-place updates), which autograd cannot record.
    """

    name = "solver"
    records_history = True  # whether steps can run under autograd (LoopOptions.differentiable)

    def init(self, x: torch.Tensor, fx: torch.Tensor, acc_dtype: torch.dtype) -> State:
        return {}

    def step(self, state: State, x: torch.Tensor, fx: torch.Tensor, g: torch.Tensor, k: int) -> tuple[torch.Tensor, State]:
        raise NotImplementedError

    def residual_out(self, state: State, k: int) -> torch.Tensor | None:
        """An ``(N, D)`` buffer in ``acc_dtype`` for the loop to write step ``k``'s residual into, or
        ``None`` (a buffer of the loop's own)."""
        return None

    def compact(self, state: State, rows: KeptRows) -> State:
        """Drop the rows of frozen samples from ``state``. By default every entry is indexed
        (``rows.take``); a solver whose memory is its own buffers may rearrange them in place."""
        return {name: rows.take(v) for name, v in state.items()}

    @classmethod
    def from_options(cls, method: str, options: dict[str, Any]) -> "Solver":
        """Build from keyword options; an unknown option is an error that lists the allowed ones."""
        allowed = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        known_keys(options, allowed, f"solver options of method {method!r}")
        return cls(**options)


class SubsettableMap(Protocol):
    """A map that can be restricted to some samples of its batch (for adaptive compute).

    ``f.select(index)`` returns the same map for the samples ``index`` (a LongTensor), so the
    loop can stop evaluating samples that have converged.
    """

    def __call__(self, z: torch.Tensor) -> torch.Tensor: ...

    def select(self, index: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]: ...


class BatchedMap:
    """``z ↦ fn(z, *batched)`` whose extra arguments share the batch dimension of ``z``.

    Each batched argument is a tensor or a tuple, list or dict of tensors (every leaf indexed
    on its first dimension), as is the state ``z`` (see :mod:`deqloop.solvers.packing`).

    Lets :func:`deqloop.solve` evaluate only the samples still being solved: ``select(index)``
    indexes every batched argument. Use it when ``f`` closes over per-sample inputs, e.g.
    ``BatchedMap(model.step, e)`` instead of ``lambda z: model.step(z, e)``.
    """

    def __init__(self, fn: Callable[..., Any], *batched: Any):
        self.fn = fn
        self.batched = batched

    def __call__(self, z: Any) -> Any:
        return self.fn(z, *self.batched)

    def select(self, index: torch.Tensor) -> "BatchedMap":
        return BatchedMap(self.fn, *(map_leaves(lambda t: t.index_select(0, index), b) for b in self.batched))
