"""deqloop.norm: weight and spectral normalisation computed once per forward, outside the no-grad
solve, give the gradient of the un-cached parametrisation; plain ``parametrize.cached()`` does not."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from deqloop import Implicit, Phantom, fixed_point, norm
from deqloop.errors import ConfigError


class Cell(nn.Module):
    """z ↦ tanh(W z + U x), W weight- or spectrally normalised."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.W = nn.Linear(6, 6, bias=False).double()
        self.U = nn.Linear(3, 6).double()
        with torch.no_grad():
            self.W.weight.mul_(0.5)

    def forward(self, x, backward):
        e = self.U(x)
        z, sol = fixed_point(lambda z: torch.tanh(self.W(z) + e), torch.zeros(len(x), 6, dtype=torch.float64),
                             "anderson", backward, rtol=1e-12, max_iter=200)
        return z, sol


def grads(cell, x, backward, context):
    cell.zero_grad()
    with context(cell):
        z, _ = cell(x, backward)
    (z * torch.linspace(-1, 1, 6, dtype=torch.float64)).sum().backward()
    return {name: None if p.grad is None else p.grad.clone() for name, p in cell.named_parameters()}


def plain(cell):
    return torch.enable_grad()


def torch_cached(cell):
    return parametrize.cached()


BACKWARDS = [Implicit(rtol=1e-12, max_iter=200), Phantom(steps=4, tau=0.6)]


def test_weight_norm_is_g_times_v_over_its_row_norms_and_starts_unchanged():
    lin = nn.Linear(4, 3).double()
    before = lin.weight.detach().clone()
    norm.weight_norm(lin)
    torch.testing.assert_close(lin.weight, before)
    g = lin.parametrizations.weight.original0
    v = lin.parametrizations.weight.original1
    with torch.no_grad():
        g.mul_(torch.tensor([[2.0], [0.5], [1.0]], dtype=torch.float64))
    expected = g * v / v.pow(2).sum(dim=1, keepdim=True).sqrt()
    torch.testing.assert_close(lin.weight, expected, rtol=1e-14, atol=0)


@pytest.mark.parametrize("backward", BACKWARDS, ids=["implicit", "phantom"])
def test_once_gives_the_gradient_of_the_uncached_weight_norm(backward):
    cell = Cell()
    norm.weight_norm(cell)
    x = torch.randn(4, 3, dtype=torch.float64)
    want = grads(cell, x, backward, plain)
    got = grads(cell, x, backward, norm.once)
    assert set(want) == {"U.bias", "W.parametrizations.weight.original0", "W.parametrizations.weight.original1",
                         "U.parametrizations.weight.original0", "U.parametrizations.weight.original1"}
    for name in want:
        assert want[name] is not None and float(want[name].abs().max()) > 0
        torch.testing.assert_close(got[name], want[name], rtol=1e-10, atol=1e-13)


def test_torch_cached_inside_the_solve_loses_the_normalised_gradients():
    """The pitfall the module docstring explains: the first read happens in the no-grad solve."""
    cell = Cell()
    norm.weight_norm(cell.W)
    x = torch.randn(4, 3, dtype=torch.float64)
    got = grads(cell, x, BACKWARDS[0], torch_cached)
    assert got["W.parametrizations.weight.original0"] is None and got["W.parametrizations.weight.original1"] is None
    assert got["U.weight"] is not None  # the unnormalised parameters still learn: nothing fails loudly


def test_once_computes_each_weight_once_per_forward():
    cell = Cell()
    norm.weight_norm(cell)
    calls = []
    cell.W.parametrizations.weight[0].register_forward_hook(lambda *a: calls.append(1))
    x = torch.randn(4, 3, dtype=torch.float64)
    with norm.once(cell):
        z, sol = cell(x, BACKWARDS[0])
    z.sum().backward()
    assert len(calls) == 1
    calls.clear()
    z, sol = cell(x, BACKWARDS[0])
    assert len(calls) == sol.nfe + 1  # without it: every evaluation of f, and the re-evaluation at z*


def test_spectral_norm_divides_by_the_largest_singular_value_and_keeps_gradients():
    cell = Cell(seed=1)
    norm.spectral_norm(cell.W, n_power_iterations=3)
    x = torch.randn(4, 3, dtype=torch.float64)
    for _ in range(20):  # power iteration converges over forwards in training mode
        with norm.once(cell):
            cell(x, BACKWARDS[1])
    W = cell.W.weight.detach()
    torch.testing.assert_close(torch.linalg.matrix_norm(W, 2), torch.tensor(1.0, dtype=torch.float64), rtol=1e-6, atol=0)
    raw = cell.W.parametrizations.weight.original.detach()
    torch.testing.assert_close(W, raw / torch.linalg.matrix_norm(raw, 2), rtol=1e-6, atol=1e-9)
    cell.eval()  # frozen power iteration: the un-cached weight is the same at every read
    want = grads(cell, x, BACKWARDS[0], plain)
    got = grads(cell, x, BACKWARDS[0], norm.once)
    assert float(want["W.parametrizations.weight.original"].abs().max()) > 0
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-10, atol=1e-13)


def test_names_skip_and_remove():
    class Gate(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.tensor([[3.0, 4.0]]))

    gate = Gate()
    norm.weight_norm(gate, names="scale")
    assert parametrize.is_parametrized(gate, "scale")
    torch.testing.assert_close(gate.scale, torch.tensor([[3.0, 4.0]]))
    seq = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2)))
    norm.spectral_norm(seq, skip=["1"])
    assert parametrize.is_parametrized(seq[0]) and not parametrize.is_parametrized(seq[1][0])
    w = seq[0].weight.detach().clone()
    norm.remove(seq)
    assert not parametrize.is_parametrized(seq[0]) and torch.equal(seq[0].weight.detach(), w)
    with pytest.raises(ConfigError, match=r"Gate has no parameter 'bias' of its own to normalise \(its parameters: "):
        norm.weight_norm(Gate(), names=("bias",))
    with pytest.raises(ConfigError, match="holds no Linear"):
        norm.weight_norm(nn.ReLU())
    lin = norm.weight_norm(nn.Linear(2, 2))
    with pytest.raises(ConfigError, match=r"Linear.weight is already parametrised"):
        norm.spectral_norm(lin)
