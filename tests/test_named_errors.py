"""Silent wrong answers and raw torch errors turned into named ones: a map that writes into its
input, a misspelt backward option, a tolerance bf16 cannot resolve, a meta-device state, sizes
that cannot be allocated, a seed torch cannot take, a model with a NaN weight."""

from __future__ import annotations

import warnings

import pytest
import torch

from deqloop import solve
from deqloop.analysis import analyze
from deqloop.errors import ConfigError, ConfigKeyError, InputError, ResourceError, allocating
from deqloop.model import LoopedDEQ
from deqloop.solvers.loop import PrecisionWarning
from deqloop.train import TrainConfig

TINY = dict(vocab_size=3, num_classes=2, grid=(6,), width=8, heads=2)


@pytest.mark.parametrize("method", ["picard", "anderson", "broyden"])
def test_a_map_that_writes_into_its_input_is_refused(method):
    with pytest.raises(InputError, match="f modified its input in place"):
        solve(lambda z: z.mul_(0.5).add_(1), torch.zeros(2, 3), method=method)
    sol = solve(lambda z: z * 0.5 + 1, torch.zeros(2, 3), method=method, rtol=1e-6, max_iter=100)
    assert torch.allclose(sol.z, torch.full((2, 3), 2.0), atol=1e-5)  # the fixed point of z/2 + 1


def test_a_misspelt_backward_option_fails_at_construction_naming_the_allowed_keys():
    with pytest.raises(ConfigKeyError, match=r"unknown key\(s\) \['rtoll'\]; allowed: m, ridge, beta; the "
                       r"backward's own options are method, rtol, atol, max_iter"):
        TrainConfig.from_flat(loss="equilibrium", backward="implicit", backward_options={"rtoll": 1e-6})
    config = TrainConfig.from_flat(loss="equilibrium", backward="implicit", backward_options={"rtol": 1e-5, "m": 3})
    assert config.solve.adjoint.rtol == 1e-5 and config.solve.adjoint.solver_options == {"m": 3}


def test_a_tolerance_below_bf16_precision_warns_once(monkeypatch):
    from deqloop.solvers import loop

    monkeypatch.setattr(loop, "_WARNED", set())
    weight = torch.randn(8, 8) * 0.3

    def f(z):
        return torch.tanh(z @ weight.T.to(z.dtype) + 1).to(z.dtype)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            for _ in range(3):
                solve(f, torch.zeros(4, 8), method="anderson", rtol=1e-4, max_iter=5)
            solve(f, torch.zeros(4, 8), method="anderson", rtol=2e-3, max_iter=5)  # reachable: no warning
        solve(f, torch.zeros(4, 8), method="anderson", rtol=1e-4, max_iter=5)  # float32: none
        solve(f, torch.zeros(4, 8, dtype=torch.float16), method="picard", rtol=1e-4, max_iter=5)
    messages = [str(w.message) for w in caught if issubclass(w.category, PrecisionWarning)]
    assert len(messages) == 2
    assert messages[0].startswith("rtol=0.0001 is below what bfloat16, which f computes in, resolves (about 2.0e-03)")
    assert "float16, which f computes in, resolves (about 2.4e-04)" in messages[1]


def test_a_meta_device_state_is_named():
    with pytest.raises(InputError, match="z0 is on the meta device"):
        solve(lambda z: z * 0.5, torch.zeros(2, 3, device="meta"), method="anderson")


def test_sizes_that_cannot_be_allocated_are_named():
    with pytest.raises(ResourceError, match=r"not enough memory for the anderson solver's memory \(2 samples × 3 "
                       r"values, m=1000000000\) \(tried to allocate \d+ bytes"):
        solve(lambda z: z * 0.5, torch.zeros(2, 3), method="anderson", m=10**9)
    with pytest.raises(ResourceError, match=r"the model's weights \(width 10000000"):
        LoopedDEQ(**{**TINY, "width": 10**7, "heads": 2})


def test_allocating_passes_other_errors_through():
    with pytest.raises(RuntimeError, match="shape mismatch"), allocating("x"):
        raise RuntimeError("shape mismatch")
    with pytest.raises(ResourceError, match=r"not enough memory for a batch \(MemoryError\)"), allocating("a batch"):
        raise MemoryError()


def test_a_seed_torch_cannot_take_is_a_config_error():
    with pytest.raises(ConfigError, match=r"seed must be an integer in \[0, 2\*\*64\)"):
        TrainConfig.from_flat(seed=2**64)
    assert TrainConfig.from_flat(seed=2**64 - 1).run.seed == 2**64 - 1


def test_analyze_names_a_nan_weight():
    model = LoopedDEQ(**TINY)
    with torch.no_grad():
        model.block.parameters().__next__().view(-1)[0] = float("nan")
    name = next(n for n, _ in model.named_parameters() if n.startswith("block."))
    with pytest.raises(InputError, match=rf"model has non-finite weights \(NaN or inf\) in {name}"):
        analyze(model, torch.zeros(2, 6, dtype=torch.long))
