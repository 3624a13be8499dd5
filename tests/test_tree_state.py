"""States that are a tuple, list or dict of tensors: solved as the hand-packed single tensor, with
per-sample norms over all leaves, every backward mode, and BatchedMap selecting each leaf's rows."""

from __future__ import annotations

import pytest
import torch

from deqloop import Implicit, Neumann, NoGrad, Phantom, Truncated, Unrolled, fixed_point, solve
from deqloop.errors import InputError, InputTypeError
from deqloop.solvers import BatchedMap
from deqloop.solvers.packing import Packing

B = 5


def problem(seed: int = 0, scale: torch.Tensor | None = None):
    """A two-branch map on a = (B, 2, 3) and b = (B, 4), coupled both ways, and the same map written
    by hand on the packed (B, 10) state [a.flatten(1), b]."""
    g = torch.Generator().manual_seed(seed)
    p = {name: (0.35 * torch.randn(*shape, generator=g, dtype=torch.float64) / shape[0] ** 0.5).requires_grad_()
         for name, shape in [("Waa", (6, 6)), ("Wba", (4, 6)), ("Wab", (6, 4)), ("Wbb", (4, 4))]}
    xa = torch.randn(B, 2, 3, generator=g, dtype=torch.float64).requires_grad_()
    xb = torch.randn(B, 4, generator=g, dtype=torch.float64).requires_grad_()
    s = torch.ones(B, 1, dtype=torch.float64) if scale is None else scale.reshape(B, 1).double()

    def fn(z, xs, s):
        a, b = z
        ya, yb = xs
        af = a.reshape(a.shape[0], 6)
        na = torch.tanh(s * (af @ p["Waa"] + b @ p["Wba"]) + ya.reshape(-1, 6)).reshape(-1, 2, 3)
        nb = torch.tanh(s * (af @ p["Wab"] + b @ p["Wbb"]) + yb)
        return na, nb

    def f(z):
        return fn(z, (xa, xb), s)

    def packed(z):  # the same map on (B, 10), packed by hand
        na, nb = f((z[:, :6].reshape(-1, 2, 3), z[:, 6:]))
        return torch.cat([na.reshape(-1, 6), nb], dim=1)

    return f, packed, fn, p, (xa, xb), s


def zeros():
    return torch.zeros(B, 2, 3, dtype=torch.float64), torch.zeros(B, 4, dtype=torch.float64)


@pytest.mark.parametrize("method", ["picard", "anderson", "broyden"])
def test_a_tuple_state_solves_as_its_packed_tensor(method):
    f, packed, *_ = problem()
    sol = solve(f, zeros(), method, rtol=1e-8, max_iter=80)
    ref = solve(packed, torch.zeros(B, 10, dtype=torch.float64), method, rtol=1e-8, max_iter=80)
    a, b = sol.z
    assert isinstance(sol.z, tuple) and a.shape == (B, 2, 3) and b.shape == (B, 4)
    torch.testing.assert_close(torch.cat([a.reshape(B, 6), b], 1), ref.z, rtol=0, atol=0)
    assert torch.equal(sol.iterations, ref.iterations) and torch.equal(sol.residual, ref.residual)
    assert bool(sol.converged.all())
    # the relative residual is over both leaves together: ‖F(z) − z‖ / ‖F(z)‖ of the packed state
    z = ref.z
    with torch.no_grad():
        fz = packed(z)
    expected = ((fz - z).norm(dim=1) / fz.norm(dim=1)).float()
    torch.testing.assert_close(sol.residual, expected, rtol=1e-3, atol=1e-12)


def test_per_sample_convergence_is_over_the_whole_state():
    """A sample converges when all its leaves have: iterations differ by sample, and the branch
    that settles first keeps its sample active while the other one has not."""
    scale = torch.tensor([0.05, 1.0, 2.0, 0.5, 1.5])
    f, packed, *_ = problem(scale=scale)
    sol = solve(f, zeros(), "picard", rtol=1e-10, max_iter=200)
    ref = solve(packed, torch.zeros(B, 10, dtype=torch.float64), "picard", rtol=1e-10, max_iter=200)
    assert torch.equal(sol.iterations, ref.iterations)
    assert int(sol.iterations[0]) < int(sol.iterations[2])  # weaker coupling, fewer iterations
    # one leaf alone would have stopped earlier than the whole state for some sample
    a, b = sol.z
    for k in (1, 2):
        zk = solve(f, zeros(), "picard", rtol=1e-10, max_iter=int(sol.iterations[2]) - k).z
        with torch.no_grad():
            fa, fb = f(zk)
        whole = torch.cat([(fa - zk[0]).flatten(1), fb - zk[1]], 1).norm(dim=1)
        norm = torch.cat([fa.flatten(1), fb], 1).norm(dim=1)
        assert float(whole[2]) > 1e-10 * float(norm[2])  # not converged one or two iterations before


def test_dict_and_nested_states_keep_their_structure():
    f, _, *_ = problem()
    a0, b0 = zeros()
    ref = solve(f, (a0, b0), "anderson", rtol=1e-9)

    def g(z):
        na, nb = f((z["a"], z["rest"][0]))
        return {"a": na, "rest": [nb]}

    sol = solve(g, {"a": a0, "rest": [b0]}, "anderson", rtol=1e-9)
    assert set(sol.z) == {"a", "rest"} and isinstance(sol.z["rest"], list)
    torch.testing.assert_close(sol.z["a"], ref.z[0], rtol=0, atol=0)
    torch.testing.assert_close(sol.z["rest"][0], ref.z[1], rtol=0, atol=0)


BACKWARDS = [
    ("anderson", Implicit(rtol=1e-11, max_iter=200)),
    ("broyden", Implicit(method="picard", rtol=1e-11, max_iter=300)),
    ("anderson", Phantom(steps=3, tau=0.7)),
    (None, Unrolled()),
    ("anderson", Truncated(grad_steps=2)),
    ("anderson", Neumann(k=4, clip=0.5)),
    ("anderson", NoGrad()),
]


@pytest.mark.parametrize("method, backward", BACKWARDS, ids=lambda v: type(v).__name__ if not isinstance(v, str) else v)
def test_every_backward_mode_gives_the_packed_tensors_gradients(method, backward):
    f, packed, _, p, (xa, xb), _ = problem()
    leaves = list(p.values()) + [xa, xb]
    wa = torch.linspace(-1, 1, 6, dtype=torch.float64).reshape(2, 3)
    wb = torch.linspace(0.5, 2, 4, dtype=torch.float64)

    (a, b), sol = fixed_point(f, zeros(), method, backward, rtol=1e-11, max_iter=200)
    loss = (a * wa).sum() + (b * wb).pow(2).sum()
    if isinstance(backward, NoGrad):
        assert not loss.requires_grad
        return
    grads = torch.autograd.grad(loss, leaves)

    z, ref = fixed_point(packed, torch.zeros(B, 10, dtype=torch.float64), method, backward, rtol=1e-11,
                         max_iter=200)
    loss_ref = (z[:, :6].reshape(B, 2, 3) * wa).sum() + (z[:, 6:] * wb).pow(2).sum()
    grads_ref = torch.autograd.grad(loss_ref, leaves)
    torch.testing.assert_close(loss, loss_ref, rtol=0, atol=0)
    for got, want in zip(grads, grads_ref):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert torch.equal(sol.iterations, ref.iterations)


def test_implicit_gradient_of_a_tuple_state_matches_finite_differences():
    f, _, fn, p, (xa, xb), s = problem(seed=3)

    def solved(xa, xb, Wab):
        p["Wab"] = Wab
        z0 = tuple(t[:2] for t in zeros())
        (a, b), _ = fixed_point(lambda z: fn(z, (xa, xb), s[:2]), z0, "anderson", Implicit(rtol=1e-13, max_iter=300),
                                rtol=1e-13, max_iter=300)
        return a, b

    assert torch.autograd.gradcheck(solved, (xa[:2].detach().clone().requires_grad_(),
                                             xb[:2].detach().clone().requires_grad_(),
                                             p["Wab"].detach().clone().requires_grad_()), atol=1e-7, rtol=1e-5)


def test_batched_map_selects_every_leaf_of_its_arguments():
    scale = torch.tensor([0.05, 1.0, 2.0, 0.5, 1.5])
    f, _, fn, _, xs, s = problem(scale=scale)
    fb = BatchedMap(fn, xs, s)
    index = torch.tensor([3, 0])
    part = fb.select(index)
    assert torch.equal(part.batched[0][0], xs[0][index]) and torch.equal(part.batched[0][1], xs[1][index])
    assert torch.equal(part.batched[1], s[index])
    nested = BatchedMap(fn, {"u": [xs[0]]}).select(index)
    assert torch.equal(nested.batched[0]["u"][0], xs[0][index])

    sol = solve(fb, zeros(), "anderson", rtol=1e-10, max_iter=100)
    ref = solve(f, zeros(), "anderson", rtol=1e-10, max_iter=100)
    for got, want in zip(sol.z, ref.z):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert torch.equal(sol.iterations, ref.iterations)
    assert sol.sample_evals < ref.sample_evals == ref.nfe * B  # converged samples stopped being evaluated
    assert sol.sample_evals == int(sol.iterations.sum())


def test_bad_trees_are_errors_naming_the_leaf():
    f, *_ = problem()
    a0, b0 = zeros()
    with pytest.raises(InputError, match=r"must have the structure of the state .*z0\[0\]: \(B, 2, 3\)"):
        solve(lambda z: z[0], (a0, b0))
    with pytest.raises(InputError, match=r"f\(z\)\[1\] must have shape \(5, 4\)"):
        solve(lambda z: (z[0], z[1][:, :3]), (a0, b0))
    with pytest.raises(InputError, match=r"share the batch size: z0\[0\] has 5 samples, z0\[1\] 3"):
        solve(f, (a0, b0[:3]))
    with pytest.raises(InputTypeError, match=r"share one dtype: z0\[0\] is torch.float64, z0\[1\] torch.float32"):
        solve(f, (a0, b0.float()))
    with pytest.raises(InputTypeError, match=r"z0\['b'\] must be a tensor or a tuple, list or dict of tensors, got int"):
        fixed_point(f, {"a": a0, "b": 3})
    with pytest.raises(InputError, match="z0 has 4 non-finite entries .* of 50"):
        solve(f, (a0, b0.index_fill(0, torch.tensor([1]), float("nan"))))
    assert Packing.of("z0", (a0, b0)).sizes == (6, 4)
