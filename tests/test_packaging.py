"""Packaging: the version, ``python -m deqloop``, the license, ``py.typed``, the exports, and the
split between core dependencies and extras (a missing extra is an error naming it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

import deqloop
from deqloop.extras import MissingExtraError, require

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
OPTIONAL = ("scipy", "chess", "zstandard", "torchdeq", "sklearn")


def test_python_m_deqloop_prints_the_version():
    out = subprocess.run([sys.executable, "-m", "deqloop", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"deqloop {deqloop.__version__}"


def test_the_version_has_one_source():
    assert PYPROJECT["project"]["dynamic"] == ["version"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "deqloop.__version__"}


def test_license_file_matches_the_metadata_and_py_typed_ships():
    assert PYPROJECT["project"]["license"] == {"text": "MIT"}
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert (ROOT / "deqloop" / "py.typed").exists()
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["deqloop"]


def test_backward_modes_are_exported():
    from deqloop import adjoint

    for name in ("Neumann", "Implicit", "Phantom", "BackwardWarning"):
        assert getattr(deqloop, name) is getattr(adjoint, name)
        assert name in deqloop.__all__


def test_core_dependencies_are_torch_numpy_and_what_the_demo_draws_with():
    names = sorted(d.split(">")[0].split("=")[0].strip() for d in PYPROJECT["project"]["dependencies"])
    assert names == ["matplotlib", "numpy", "torch", "tqdm"]
    extras = PYPROJECT["project"]["optional-dependencies"]
    test = " ".join(extras["test"])
    for dist in ("scipy", "chess", "zstandard", "torchdeq", "scikit-learn"):  # the tests import them all
        assert dist in test


def test_the_core_runs_without_the_extras():
    """solve, fixed_point, the model, a training step and the demo's module import and run with
    every optional package hidden; the chess task then names the extra to install."""
    code = f"""
import sys
for name in {OPTIONAL!r}:
    sys.modules[name] = None  # any import of it fails
import torch, deqloop
from deqloop import solve, fixed_point, LoopedDEQ, Implicit
from deqloop.train import TrainConfig, Trainer
import deqloop.demo, deqloop.norm, deqloop.tools
W = 0.3 * torch.eye(4)
x = torch.randn(2, 4, requires_grad=True)
z, sol = fixed_point(lambda z: torch.tanh(z @ W + x), torch.zeros(2, 4), backward=Implicit())
z.sum().backward()
assert bool(sol.converged.all()) and x.grad is not None
m = LoopedDEQ(vocab_size=3, num_classes=2, grid=(5,), width=8, heads=2, max_iter=3)
m(torch.randint(0, 3, (2, 5))).logits.sum().backward()
from deqloop.analysis.jacobian import LoopJacobian
try:
    from deqloop.tasks import get_task
    get_task("chess")
except Exception as e:
    print(type(e).__name__, e)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("MissingExtraError the chess task needs the optional package 'chess'")
    assert "pip install 'deqloop[chess]'" in out.stdout


def test_every_optional_import_in_the_package_goes_through_require():
    """An optional package imported in deqloop/ without ``extras.require`` first would fail with a
    bare ModuleNotFoundError instead of naming the extra."""
    import re

    bad = []
    for path in sorted((ROOT / "deqloop").rglob("*.py")):
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            m = re.match(r"\s*(?:import|from) (scipy|chess|zstandard|torchdeq|sklearn)\b", line)
            if m and not any(f'require("{m.group(1)}' in before for before in lines[:i]):
                bad.append(f"{path.relative_to(ROOT)}:{i + 1}: {line.strip()}")
    assert bad == []


@pytest.mark.parametrize("module, extra", [("scipy.linalg", "analysis"), ("zstandard", "chess"),
                                           ("torchdeq.solver", "torchdeq")])
def test_a_missing_extra_names_what_to_install(monkeypatch, module, extra):
    if "." in module:
        monkeypatch.delitem(sys.modules, module, raising=False)
    monkeypatch.setitem(sys.modules, module.split(".")[0], None)
    with pytest.raises(MissingExtraError, match=rf"thing needs .* pip install 'deqloop\[{extra}\]'"):
        require(module, "thing")


def test_krylov_schur_without_scipy_names_the_analysis_extra(monkeypatch):
    import torch

    from deqloop.analysis.krylov import krylov_schur

    monkeypatch.setitem(sys.modules, "scipy", None)
    monkeypatch.delitem(sys.modules, "scipy.linalg", raising=False)
    A = torch.diag(torch.tensor([0.5, 0.25, 0.1, 0.05])).expand(2, 4, 4)
    with pytest.raises(MissingExtraError, match=r"deqloop\[analysis\]"):
        krylov_schur(lambda v: torch.bmm(A, v.unsqueeze(2)).squeeze(2), torch.ones(2, 4), nev=1, ncv=3)
