"""Settings are resolved once: a training step's equilibrium forward builds at most one backward
object and makes at most five validation calls, and every per-call override goes through the one
rule of :meth:`SolveSettings.with_`."""

from __future__ import annotations

import sys
from collections import Counter

import pytest
import torch

from deqloop import validate
from deqloop.adjoint import _MODES, Implicit, Phantom, Unrolled
from deqloop.errors import ConfigError, ConfigKeyError
from deqloop.model import LoopedDEQ, SolveSettings
from deqloop.solvers import LoopOptions
from deqloop.train.objectives import Equilibrium

CHECKS = ("choice", "integer", "number", "known_keys")


@pytest.fixture
def counts(monkeypatch):
    """Counts calls of the validation functions (wherever a deqloop module imported them) and
    constructions of backward objects."""
    seen: Counter[str] = Counter()
    for name in CHECKS:
        original = getattr(validate, name)

        def counted(*args, _name=name, _original=original, **kwargs):
            seen[_name] += 1
            return _original(*args, **kwargs)

        for module in [m for key, m in sys.modules.items() if key.startswith("deqloop") and m is not None]:
            if getattr(module, name, None) is original:
                monkeypatch.setattr(module, name, counted)

    for mode in _MODES.values():  # each mode's own (dataclass-generated) __init__
        def init(self, *args, _init=mode.__init__, **kwargs):
            seen["backward objects"] += 1
            _init(self, *args, **kwargs)

        monkeypatch.setattr(mode, "__init__", init)
    return seen


def tiny(**solve) -> LoopedDEQ:
    torch.manual_seed(0)
    return LoopedDEQ(vocab_size=5, num_classes=3, grid=(6,), width=8, heads=2, **solve)


def validations(seen: Counter[str]) -> int:
    return sum(seen[name] for name in CHECKS)


@pytest.mark.parametrize("backward, options", [("phantom", {"steps": 5, "tau": 0.8}), ("implicit", {}),
                                               ("unrolled", {}), ("neumann", {"k": 3})])
def test_an_equilibrium_training_step_resolves_no_setting_again(counts, backward, options):
    model = tiny(backward=backward, backward_options=options, max_iter=30)
    objective = Equilibrium(model)
    x, y = torch.randint(0, 5, (4, 6)), torch.randint(0, 3, (4, 6))
    counts.clear()
    loss, _, _ = objective(x, y, 7, 0)  # the trainer's call: the step's budget overrides max_iter
    loss.backward()
    assert counts["backward objects"] == 0  # the model's resolved mode is used as it is
    assert validations(counts) <= 5, dict(counts)
    counts.clear()
    model(x)  # no override: nothing of the settings is checked again
    adapted = 1 if backward == "unrolled" else 0  # the mode's own change of the loop (keep="last") is checked
    assert validations(counts) == adapted and counts["backward objects"] == 0


def test_the_loop_keeps_the_same_solver_object_across_calls():
    model = tiny(solver_options={"m": 3})
    s = model.config.solve
    assert s.with_(max_iter=5).loop.solver is s.loop.solver  # only max_iter changed: nothing rebuilt
    assert s.with_(max_iter=s.max_iter) is s  # an override that changes nothing returns the settings
    assert s.with_(rtol=1e-6).adjoint is s.adjoint
    assert s.with_(solver_options={"m": 4}).loop.solver is not s.loop.solver


def test_with_switching_the_solver_drops_its_options_unless_new_ones_are_given():
    s = SolveSettings(solver="anderson", solver_options={"m": 2}, backward="phantom", backward_options={"steps": 3})
    assert s.with_(solver="picard").solver_options == {}
    assert s.with_(solver="picard", solver_options={"damping": 0.5}).loop.options == {"damping": 0.5}
    assert s.with_(solver="anderson").solver_options == {"m": 2}  # the same solver keeps them
    assert s.with_(backward="implicit").adjoint == Implicit()
    assert s.with_(backward="phantom").adjoint == Phantom(steps=3)
    unrolled = s.with_(backward="unrolled", solver_options={})  # it iterates plainly, whatever the solver
    assert unrolled.method == "picard" and unrolled.loop.method == "picard" and isinstance(unrolled.adjoint, Unrolled)
    assert s.with_(max_iter=9).loop.max_iter == 9 and s.max_iter == 30  # a copy; the original stays


def test_with_checks_what_it_changes():
    s = SolveSettings()
    with pytest.raises(ConfigError, match=r"max_iter must be an integer ≥ 1, got 0"):
        s.with_(max_iter=0)
    with pytest.raises(ConfigKeyError, match=r"unknown key\(s\) \['depth'\]"):
        s.with_(depth=3)
    with pytest.raises(ConfigKeyError, match=r"'bogus'"):
        s.with_(solver_options={"bogus": 1})
    with pytest.raises(ConfigError, match=r"unknown init 'ones'"):
        s.with_(init="ones")
    with pytest.raises(ConfigError, match=r"phantom tau must be"):
        s.with_(backward="phantom", backward_options={"tau": 2.0})


def test_settings_are_frozen_so_their_resolved_loop_cannot_go_stale():
    s = SolveSettings()
    with pytest.raises(AttributeError):
        s.max_iter = 5  # type: ignore[misc]


def test_loop_options_with_checks_only_changes_and_keeps_the_rest():
    loop = LoopOptions(method="anderson", options={"m": 4}, rtol=1e-5, max_iter=20)
    longer = loop.with_(max_iter=50)
    assert (longer.max_iter, longer.rtol, longer.options, longer.solver) == (50, 1e-5, {"m": 4}, loop.solver)
    assert loop.max_iter == 20
    with pytest.raises(ConfigError, match=r"keep"):
        loop.with_(keep="first")
    with pytest.raises(ConfigError, match=r"no field\(s\) \['depth'\]"):
        loop.with_(depth=3)
    with pytest.raises(ConfigKeyError, match=r"'beta2'"):
        LoopOptions(method="anderson", options={"beta2": 1.0})


def test_the_unrolled_mode_receives_the_loop_and_makes_it_differentiable():
    """Unrolled is the caller's loop with the flag on: the same iterates as plain Picard, and a
    gradient through them equal to autograd through the iterations written out."""
    A = torch.tensor([[0.3, -0.2], [0.1, 0.4]], dtype=torch.float64)
    b = torch.tensor([[1.0, -1.0]], dtype=torch.float64, requires_grad=True)

    def f(z):
        return torch.tanh(z @ A.T + b)

    loop = LoopOptions(method="picard", rtol=1e-300, max_iter=6)  # exactly 6 evaluations
    z, sol = Unrolled().solve(f, torch.zeros(1, 2, dtype=torch.float64), loop)
    ref = torch.zeros(1, 2, dtype=torch.float64)
    for _ in range(6):
        ref = f(ref)  # the result is the last image z_6 = f(z_5)
    assert torch.allclose(z, ref, atol=0, rtol=1e-15)
    (g,) = torch.autograd.grad(z.sum(), b)
    (g_ref,) = torch.autograd.grad(ref.sum(), b)
    assert torch.allclose(g, g_ref, rtol=1e-14, atol=0)
    assert not sol.z.requires_grad
    with pytest.raises(ConfigError, match=r"backward='unrolled' backpropagates through naive iteration"):
        Unrolled().solve(f, torch.zeros(1, 2, dtype=torch.float64), loop.with_(method="anderson"))


def test_one_list_of_backward_modes_and_the_training_subset_read_from_it():
    from deqloop.adjoint import BACKWARD_MODES, EQUILIBRIUM_BACKWARDS
    from deqloop.train.config import EQUILIBRIUM_BACKWARDS as trained

    assert BACKWARD_MODES == ("implicit", "phantom", "unrolled", "truncated", "none", "neumann")
    # the equilibrium loss takes every mode that gives the fixed point a gradient of its own
    assert EQUILIBRIUM_BACKWARDS == ("implicit", "phantom", "unrolled", "neumann") and trained is EQUILIBRIUM_BACKWARDS


def test_changed_copy_keeps_the_original_and_names_only_real_changes():
    from deqloop.validate import changed_copy

    loop = LoopOptions(max_iter=20, rtol=1e-5)
    same, none = changed_copy(loop, {"max_iter": 20, "rtol": 1e-5})
    assert same is loop and none == []
    new, changed = changed_copy(loop, {"max_iter": 40, "rtol": 1e-5})
    assert changed == ["max_iter"] and (new.max_iter, new.rtol, loop.max_iter) == (40, 1e-5, 20)
    assert new.solver is loop.solver  # a shallow copy: what was resolved is shared
