"""The loop that drives a :class:`~deqloop.solvers.base.Solver` to a fixed point, per sample.

Every sample is judged on its own: it is *frozen* (its answer, the best iterate so far, is kept)
as soon as ``‖f(z) − z‖ ≤ atol + rtol·‖f(z)‖``, or when its map returns a non-finite value, or
when its residual grows ``divergence`` times past its smallest one. Freezing happens on the device
with masks, every iteration, so it needs no host synchronisation. Every ``check_every``
iterations the host looks at the masks once (one sync): it stops when no sample is left. When
``f`` can be restricted to a subset of its batch (it has a ``select(index)`` method, e.g.
:class:`~deqloop.solvers.base.BatchedMap`), frozen samples are then dropped from the solver's
memory and no longer evaluated, which is where adaptive compute saves time; a plain closure is
always evaluated on the whole batch. Until a frozen row is dropped it steps on with the others
(holding it in place would cost a masked copy of the whole state every iteration), but nothing
it computes reaches its answer: rows never mix.

Dropping rows is amortised: it happens at a check only once the frozen rows are at least
``compact_at`` of the rows held (by default a sixteenth; 0: at every check, 1: never); until then
frozen rows ride along. The solver's large memory (Anderson's window, Broyden's ring) is then
rearranged in place: only the staying rows beyond the new batch size move, into the places of
dropped ones (:class:`~deqloop.solvers.base.KeptRows`), not every remaining row.
Neither cadence changes a sample's answer: everything the loop and the solvers compute is per row
(for a map that treats its samples independently; up to how f rounds on another batch size).

The loop's own cost is kept to a few passes over the state per iteration: the residual is
computed once, into the solver's memory where it keeps one (``Solver.residual_out``); the best
iterate is the current one itself while every row improves (a copy only when some row does not);
large buffers come from :mod:`deqloop.solvers.workspace`, which on the CPU reuses them from one
solve to the next instead of faulting in fresh pages.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Callable

import torch

from deqloop import inputs
from deqloop.errors import InputError, InputTypeError, allocating
from deqloop.solvers import base, workspace
from deqloop.solvers.base import KeptRows, Solver
from deqloop.solvers.solution import EPS, Solution, SolverStatus, residual

if TYPE_CHECKING:
    from deqloop.solvers.loop_options import LoopOptions

Map = Callable[[torch.Tensor], torch.Tensor]

COMPACT_AT = 0.0625  # drop frozen rows once they are this fraction of the rows held


class PrecisionWarning(UserWarning):
    """A tolerance finer than the precision ``f`` computes in can resolve: the solve will use its
    whole budget (raised once per dtype and tolerance in a process)."""


_WARNED: set[tuple[torch.dtype, float]] = set()


def warn_unreachable(rtol: float, atol: float, dtype: torch.dtype, device: torch.device,
                     computes_in: torch.dtype | None = None) -> None:
    """Warn (once per ``(dtype, rtol)``) when ``rtol`` is below what the dtype ``f`` computes in
    resolves (the state's, or autocast's on ``device`` when lower, unless ``f`` says it computes in
    ``computes_in``: its ``compute_dtype`` attribute, e.g. a model's solve map, which switches
    autocast off): a quarter of its machine epsilon, 2.0e-3 for bf16 (a transformer block's
    residual in bf16 stops near 1.4e-3, so a solve to rtol 1e-3 uses its whole budget) and 2.4e-4
    for float16."""
    low = dtype if dtype in (torch.bfloat16, torch.float16) else None
    if low is None and computes_in is not None:
        low = computes_in
    elif low is None and torch.is_autocast_enabled(device.type):
        low = torch.get_autocast_dtype(device.type)
    if low not in (torch.bfloat16, torch.float16) or atol > 0:
        return
    floor = torch.finfo(low).eps / 4
    if rtol < floor and (low, rtol) not in _WARNED:
        _WARNED.add((low, rtol))
        warnings.warn(f"rtol={rtol:g} is below what {str(low).removeprefix('torch.')}, which f computes in, resolves "
                      f"(about {floor:.1e}): its rounding keeps the relative residual above rtol, and solves then use "
                      "their whole max_iter; use a larger rtol, or compute f in float32", PrecisionWarning, stacklevel=4)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Norms and least squares run in float32, or float64 when the state is float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def default_check_every(device: torch.device) -> int:
    return 1 if device.type == "cpu" else 8


def check_image(z: torch.Tensor, out: object, dtype: torch.dtype) -> torch.Tensor:
    """``out = f(z)`` if it is a tensor of ``z``'s shape and of dtype ``dtype`` (metadata only,
    no host synchronisation: cheap enough for every evaluation)."""
    if not isinstance(out, torch.Tensor):
        raise InputTypeError(f"f must return a tensor of the shape of its input {tuple(z.shape)}, got {type(out).__name__}")
    if out.shape != z.shape:
        raise InputError(f"f must return a tensor of the shape of its input {tuple(z.shape)}, got {tuple(out.shape)}")
    if out.dtype != dtype:
        raise InputTypeError(f"f must return the dtype of z0 ({dtype}), got {out.dtype}; cast inside f if a "
                             "different precision is meant")
    return out


def _version(z: torch.Tensor) -> int | None:
    """Autograd's count of in-place writes to ``z`` (``None`` for inference tensors, which keep none)."""
    try:
        return z._version
    except RuntimeError:
        return None


class _Evaluator:
    """Calls ``f`` on the active rows, counting calls and checking its output's shape and dtype."""

    def __init__(self, f: Map, z0: torch.Tensor):
        self.f = f
        self.shape = tuple(z0.shape)
        self.dtype = z0.dtype
        self.subsettable = callable(getattr(f, "select", None))
        self.f_active: Map = f
        self.nfe = 0
        self.sample_evals = 0

    def restrict(self, index: torch.Tensor) -> None:
        """Evaluate only the samples ``index`` of the original batch from now on."""
        self.f_active = self.f.select(index)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        z = x.view(x.shape[0], *self.shape[1:])
        version = _version(z)
        out = check_image(z, self.f_active(z), self.dtype)
        if version is not None and _version(z) != version:  # the solver keeps z: f must leave it as it was
            raise InputError("f modified its input in place (e.g. z.mul_(...)), so the solver's iterate changed "
                             "under it; return a new tensor instead (z * 0.5 + 1, or z.clone() first)")
        self.nfe += 1
        self.sample_evals += x.shape[0]
        return out.reshape(x.shape[0], -1)


def run_solver(f: Map, z0: torch.Tensor, solver: Solver, loop: LoopOptions) -> Solution:
    """Run ``solver`` on ``f`` from ``z0`` with per-sample convergence (see the module docstring),
    as ``loop`` (a validated :class:`~deqloop.solvers.loop_options.LoopOptions`) says.

    With ``loop.differentiable`` the loop records autograd history (backpropagation through every
    iteration, for the unrolled backward mode) when grad mode is on; ``Solution.z`` then carries
    gradients. Otherwise it runs under ``torch.no_grad()``.

    ``keep="best"`` returns each sample's iterate of smallest residual; ``keep="last"`` its last
    finite one (what backpropagation through the iterations wants). ``return_image=True`` returns
    f(z) of that iterate instead of z (after n evaluations of naive iteration: z_n rather than
    z_{n-1}); the reported residuals stay those of z. ``compact_at`` is the fraction of frozen
    rows at which a subsettable ``f`` stops evaluating them (see the module docstring).
    """
    inputs.state("z0", z0)
    rtol, atol, max_iter, keep, return_image = loop.rtol, loop.atol, loop.max_iter, loop.keep, loop.return_image
    differentiable, divergence, trace, compact_at = loop.differentiable, loop.divergence, loop.trace, loop.compact_at
    method = loop.method
    warn_unreachable(rtol, atol, z0.dtype, z0.device, getattr(f, "compute_dtype", None))
    check_every = loop.check_every or default_check_every(z0.device)

    B = z0.shape[0]
    dtype, device = z0.dtype, z0.device
    acc = accumulation_dtype(dtype)
    host_is_free = base.host_reads_are_free(device)
    recording = differentiable and torch.is_grad_enabled()
    with torch.set_grad_enabled(recording), workspace.scope(enabled=not recording):
        z_init = z0 if differentiable else z0.detach()
        evaluate = _Evaluator(f, z_init)
        x = z_init.reshape(B, -1)
        # Full-batch results, written when rows leave the active set and at the end.
        out_x = x.detach().clone() if not differentiable else x.clone()
        out_rel = torch.full((B,), float("inf"), dtype=torch.float32, device=device)
        out_abs = out_rel.clone()
        out_iters = torch.zeros(B, dtype=torch.long, device=device)
        out_status = torch.full((B,), int(SolverStatus.MAX_ITER), dtype=torch.long, device=device)
        # Per-row bookkeeping of the active rows (local index). Unless autograd records, best_x is
        # the iterate itself while every row improves (no copy), else a buffer of the loop's own.
        rows = torch.arange(B, device=device)
        best_x = x.clone() if recording else x
        best_buffer = None if recording else workspace.empty(*x.shape, dtype=dtype, device=device)
        best_rel = out_rel.clone()
        best_abs = out_abs.clone()
        min_abs = out_abs.clone()
        iters = out_iters.clone()
        status = out_status.clone()
        active = torch.ones(B, dtype=torch.bool, device=device)
        state = None
        g_buffer = None  # the loop's own residual buffer, for solvers that do not name one
        traces: list[torch.Tensor] = []
        # status codes as Python numbers: a device tensor made from one is a blocking copy
        code_conv, code_nonfinite, code_div = (int(c) for c in (SolverStatus.CONVERGED, SolverStatus.NONFINITE,
                                                                  SolverStatus.DIVERGED))

        def write_back(local: torch.Tensor) -> None:
            g = rows.index_select(0, local)
            out_x.index_copy_(0, g, best_x.index_select(0, local))
            out_rel.index_copy_(0, g, best_rel.index_select(0, local))
            out_abs.index_copy_(0, g, best_abs.index_select(0, local))
            out_iters.index_copy_(0, g, iters.index_select(0, local))
            out_status.index_copy_(0, g, status.index_select(0, local))

        for k in range(1, max_iter + 1):
            fx = evaluate(x)
            if state is None:
                m = getattr(solver, "m", None)
                with allocating(f"the {method} solver's memory ({B} samples × {x.shape[1]} values"
                                + (f", m={m})" if m is not None else ")")):
                    state = solver.init(x, fx, acc)
            g_out = None
            if not recording:
                g_out = solver.residual_out(state, k)
                if g_out is None:
                    if g_buffer is None:
                        g_buffer = workspace.empty(*x.shape, dtype=acc, device=device)
                    g_out = g_buffer[: x.shape[0]]
            with base.without_autocast(device):  # norms and linear algebra in acc, never autocast's dtype
                g, abs_r, f_norm = residual(fx, x, acc, out=g_out)
            rel = abs_r / (f_norm + EPS)
            finite = torch.isfinite(abs_r) & torch.isfinite(f_norm)
            live = active & finite
            conv = live & (abs_r <= atol + rtol * f_norm)
            improved = live if keep == "last" else live & ((abs_r < best_abs) | conv)
            best_rel = torch.where(improved, rel, best_rel)
            best_abs = torch.where(improved, abs_r, best_abs)
            current = fx if return_image else x
            if recording:
                best_x = torch.where(improved[:, None], current, best_x)
            else:
                n_improved = int(improved.sum()) if host_is_free else -1
                if n_improved == improved.numel():
                    best_x = current  # every row improved: hold the iterate itself (never rewritten)
                elif n_improved or best_x.data_ptr() != best_buffer.data_ptr():
                    # into the loop's own buffer, before the solver's next step may reuse the iterate's
                    best_x = torch.where(improved[:, None], current, best_x, out=best_buffer[: x.shape[0]])
            min_abs = torch.where(live, torch.minimum(min_abs, abs_r), min_abs)
            # growth is judged from a baseline no smaller than the tolerance or the rounding floor,
            # so residuals jittering at machine precision never count as divergence
            floor = atol + max(rtol, torch.finfo(dtype).eps) * f_norm
            diverged = live & ~conv & (abs_r > divergence * torch.maximum(min_abs, floor))
            iters = iters + active.long()
            status = torch.where(conv, code_conv, status)
            status = torch.where(active & ~finite, code_nonfinite, status)
            status = torch.where(diverged, code_div, status)
            active = live & ~conv & ~diverged
            if trace:
                row = out_rel.clone()
                row.index_copy_(0, rows, torch.where(active | conv, rel, best_rel))
                traces.append(row)
            if k == max_iter:
                break
            # frozen rows step on too: their answers are kept above, and rows never mix
            with base.without_autocast(device):
                x_next, state = solver.step(state, x, fx, g, k)
            x = x_next.to(dtype)

            if k % check_every == 0:
                n_active = int(active.sum())  # the one host synchronisation
                if n_active == 0:
                    break
                # Dropping frozen rows pays only when f can skip them; for a plain closure the
                # masks already freeze them and gathering rows for every call would cost more.
                n_rows = rows.numel()
                if evaluate.subsettable and n_active < n_rows and n_rows - n_active >= compact_at * n_rows:
                    kept = KeptRows.of(active, n_active)  # no host read on an accelerator
                    write_back(kept.dropped)
                    rows = kept.take(rows)
                    evaluate.restrict(rows)
                    x = kept.take(x)
                    best_x = kept.take(best_x)
                    best_rel, best_abs = kept.take(best_rel), kept.take(best_abs)
                    min_abs, iters = kept.take(min_abs), kept.take(iters)
                    status, active = kept.take(status), kept.take(active)
                    state = solver.compact(state, kept)

        write_back(torch.arange(rows.numel(), device=device))

    return Solution(
        z=out_x.view(z0.shape),
        converged=out_status == int(SolverStatus.CONVERGED),
        residual=out_rel,
        abs_residual=out_abs,
        iterations=out_iters,
        nfe=evaluate.nfe,
        status=out_status,
        sample_evals=evaluate.sample_evals,
        trace=torch.stack(traces) if trace else None,
        method=method,
    )
