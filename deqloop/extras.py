"""Optional dependencies: imported where they are used, with an error that names the extra.

The core (``solve``, ``fixed_point``, the backward modes, :mod:`deqloop.norm`, ``LoopedDEQ``,
training, the demo) needs only torch, numpy, matplotlib and tqdm. The rest are extras of the
package::

    pip install 'deqloop[analysis]'   # scipy: `deqloop analyze`, Krylov-Schur, ARPACK
    pip install 'deqloop[chess]'      # python-chess and zstandard: the chess task, .zst data
    pip install 'deqloop[torchdeq]'   # torchdeq's solvers as methods "torchdeq:<name>"
    pip install 'deqloop[all]'        # everything above (and tensorboard)
"""

from __future__ import annotations

import importlib
from types import ModuleType

from deqloop.errors import DeqloopError

__all__ = ["EXTRAS", "MissingExtraError", "require"]

# import name -> (distribution name, extra that installs it)
EXTRAS: dict[str, tuple[str, str]] = {
    "scipy": ("scipy", "analysis"),
    "chess": ("chess", "chess"),
    "zstandard": ("zstandard", "chess"),
    "torchdeq": ("torchdeq", "torchdeq"),
    "sklearn": ("scikit-learn", "examples"),
    "submitit": ("submitit", "cluster"),
}


class MissingExtraError(DeqloopError, ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` (e.g. ``"scipy.linalg"``) or raise :class:`MissingExtraError` saying that
    ``purpose`` needs it and which ``pip install 'deqloop[extra]'`` provides it."""
    top = module.split(".")[0]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is None or e.name.split(".")[0] != top:  # the package is there but broken inside
            raise
        dist, extra = EXTRAS.get(top, (top, "all"))
        raise MissingExtraError(f"{purpose} needs the optional package {dist!r}, which is not installed; "
                                f"install it with: pip install 'deqloop[{extra}]'") from e
