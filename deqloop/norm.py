"""Weight and spectral normalisation for the map of any DEQ, computed once per forward.

A DEQ applies the same weights at every iteration, so a reparametrised weight (weight norm
w = g·v/‖v‖, spectral norm w = W/σ₁(W)) need only be computed once per forward pass rather than
at every evaluation of f::

    from deqloop import norm

    norm.weight_norm(block)                  # every Linear / Conv / ConvTranspose in block
    norm.spectral_norm(block.proj)           # or a module of your choice (names=("weight",))

    def forward(self, x):
        with norm.once(self):                # each normalised weight computed here, once
            z, sol = fixed_point(lambda z: self.block(z, x), z0, ...)
        return self.head(z)

Both register torch's own parametrizations
(:func:`torch.nn.utils.parametrizations.weight_norm`, ``spectral_norm``), so ``state_dict``,
optimisers and :func:`remove` behave as torch documents; without :func:`once` they are simply
recomputed at every evaluation of f (correct, slower).

**The pitfall of** ``torch.nn.utils.parametrize.cached()``. ``cached()`` computes a weight the
first time it is *read* inside the context, under whatever autograd mode holds at that moment.
In a DEQ the first read is usually inside the forward solve, which runs under
``torch.no_grad()``: the cached weight then carries no autograd history, the backward mode's
re-evaluation of f at z* reuses it, and every normalised parameter silently gets no gradient
(training still runs; only the unnormalised parameters learn). :func:`once` is ``cached()``
plus a first read of every parametrised tensor *where* ``once`` *is entered*, outside the solve,
so the cache holds weights that carry gradients to ``g`` and ``v`` (or to ``W``). Enter it
under the forward's own autograd mode, around the whole forward (not inside a ``no_grad``
block). This module's :func:`once` is what torchdeq's ``reset_norm`` does by hand.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrizations, parametrize

from deqloop.errors import ConfigError
from deqloop.validate import integer

__all__ = ["TARGETS", "once", "remove", "spectral_norm", "weight_norm"]

# module types normalised by default, and the dimension of their weight that indexes outputs
TARGETS: dict[type[nn.Module], int] = {
    nn.Linear: 0, nn.Bilinear: 0, nn.Conv1d: 0, nn.Conv2d: 0, nn.Conv3d: 0,
    nn.ConvTranspose1d: 1, nn.ConvTranspose2d: 1, nn.ConvTranspose3d: 1,
}


def _kind(m: nn.Module) -> type[nn.Module] | None:
    """The type of :data:`TARGETS` that ``m`` is (a parametrised module's class derives from it)."""
    return next((t for t in type(m).__mro__ if t in TARGETS), None)


def _has(m: nn.Module, name: str) -> bool:
    """``m`` has the parameter ``name`` of its own, plain or already parametrised."""
    return isinstance(m._parameters.get(name), nn.Parameter) or parametrize.is_parametrized(m, name)


def _targets(module: nn.Module, names: Sequence[str] | None, skip: Sequence[str]) -> list[tuple[nn.Module, str, int]]:
    """``(submodule, parameter name, output dim)`` to normalise: the given ``names`` of ``module``
    itself, or else the ``weight`` of every submodule of a type in :data:`TARGETS`."""
    if not isinstance(module, nn.Module):
        raise ConfigError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    if names is not None:
        if isinstance(names, str):
            names = (names,)
        out = []
        for name in names:
            if not _has(module, name):
                own = ", ".join(module._parameters) or "none"
                raise ConfigError(f"{type(module).__name__} has no parameter {name!r} of its own to normalise "
                                  f"(its parameters: {own})")
            kind = _kind(module)
            out.append((module, name, 0 if kind is None else TARGETS[kind]))
        return out
    out = [(m, "weight", TARGETS[kind]) for qual, m in module.named_modules()
           if (kind := _kind(m)) is not None and _has(m, "weight")
           and not any(qual == s or qual.startswith(s + ".") for s in skip)]
    if not out:
        raise ConfigError(f"{type(module).__name__} holds no {', '.join(t.__name__ for t in TARGETS)} to normalise; "
                          "pass names=(...) to normalise parameters of a module of another type")
    for m, name, _ in out:
        if parametrize.is_parametrized(m, name):
            raise ConfigError(f"{type(m).__name__}.{name} is already parametrised (normalised twice?); "
                              "deqloop.norm.remove(module) first to change its normalisation")
    return out


def weight_norm(module: nn.Module, *, names: Sequence[str] | None = None, dim: int | None = None,
                skip: Sequence[str] = ()) -> nn.Module:
    """Weight normalisation, w = g · v / ‖v‖, the norm over every dimension but the output one
    (``g`` is initialised to ‖v‖, so the weight is unchanged at first). By default every Linear,
    Conv and ConvTranspose in ``module`` (submodules named in ``skip``, by prefix, excepted);
    ``names``: these parameters of ``module`` itself, of any type. ``dim`` overrides the output
    dimension (``None``: 0, 1 for transposed convolutions). Returns ``module``."""
    for m, name, out_dim in _targets(module, names, skip):
        parametrizations.weight_norm(m, name, dim=out_dim if dim is None else dim)
    return module


def spectral_norm(module: nn.Module, *, names: Sequence[str] | None = None, n_power_iterations: int = 1,
                  skip: Sequence[str] = ()) -> nn.Module:
    """Spectral normalisation, w = W / σ₁(W), σ₁ estimated by ``n_power_iterations`` of power
    iteration per computation in training mode (torch's parametrization; frozen in eval mode).
    Targets as for :func:`weight_norm`. With :func:`once`, one computation per forward."""
    integer("n_power_iterations", n_power_iterations)
    for m, name, out_dim in _targets(module, names, skip):
        parametrizations.spectral_norm(m, name, n_power_iterations=n_power_iterations, dim=out_dim)
    return module


def remove(module: nn.Module) -> nn.Module:
    """Remove every parametrization in ``module``, keeping the normalised weights as plain parameters."""
    for m in module.modules():
        if parametrize.is_parametrized(m):
            for name in list(m.parametrizations):
                parametrize.remove_parametrizations(m, name, leave_parametrized=True)
    return module


@contextlib.contextmanager
def once(module: nn.Module) -> Iterator[nn.Module]:
    """Within the block every parametrised weight of ``module`` is computed once, here, under the
    autograd mode in force where the block starts, and reused by every evaluation of f (the
    forward solve, the backward mode's re-evaluation). Gradients reach the underlying
    parameters exactly as without caching. See the module docstring for why plain
    ``torch.nn.utils.parametrize.cached()`` is not enough in a DEQ."""
    with parametrize.cached():
        for m in module.modules():
            if parametrize.is_parametrized(m):
                for name in m.parametrizations:
                    getattr(m, name)  # fills the cache, outside any no-grad solve
        yield module
