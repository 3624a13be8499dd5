"""Backward modes as objects: the shorthands build them, each attaches the gradient it promises,
and a user's own mode is a subclass."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

from deqloop import LoopedDEQ, fixed_point
from deqloop.adjoint import Backward, Implicit, Neumann, NoGrad, Phantom, Truncated, Unrolled, as_backward
from deqloop.errors import ConfigError, ConfigKeyError
from deqloop.solvers import BackwardStats

from helpers import linear_map


def affine(contraction: float = 0.5, dim: int = 4, seed: int = 0):
    """f(z) = A z + b with b a leaf needing gradients: z* = (I − A)⁻¹ b, dz*/db = (I − A)⁻¹."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(dim, dim, generator=g, dtype=torch.float64)
    A = contraction * A / torch.linalg.matrix_norm(A, 2)
    b = torch.randn(1, dim, generator=g, dtype=torch.float64, requires_grad=True)
    return A, b, (lambda z: z @ A.T + b)


@pytest.mark.parametrize("name, options, expected", [
    ("implicit", {"rtol": 1e-8, "m": 3}, Implicit(rtol=1e-8, solver_options={"m": 3})),
    ("phantom", {"steps": 5, "tau": 0.8}, Phantom(steps=5, tau=0.8)),
    ("unrolled", {}, Unrolled()),
    ("truncated", {"grad_steps": 2}, Truncated(grad_steps=2)),
    ("none", {}, NoGrad()),
    ("neumann", {"k": 3, "clip": 0.5}, Neumann(k=3, clip=0.5)),
])
def test_shorthands_build_the_objects_and_round_trip(name, options, expected):
    mode = as_backward(name, options)
    assert mode == expected
    assert mode.to_spec() == (name, options)
    assert as_backward(*mode.to_spec()) == mode
    assert as_backward(expected) is expected


def test_bad_shorthands_and_options_name_what_is_allowed():
    with pytest.raises(ConfigError, match="unknown backward 'adjoint'; allowed: 'implicit', 'phantom', 'unrolled', "
                                          "'truncated', 'none'"):
        as_backward("adjoint")
    with pytest.raises(ConfigKeyError, match=r"backward='phantom' got unknown key\(s\) \['k'\]; allowed: steps, tau"):
        as_backward("phantom", {"k": 2})
    with pytest.raises(ConfigError, match=r"phantom tau must be a finite number in \(0, 1\], got 1\.5"):
        Phantom(tau=1.5)
    with pytest.raises(ConfigError, match="set them on the object instead"):
        as_backward(Phantom(), {"steps": 2})
    with pytest.raises(ConfigError, match="pass an instance"):
        as_backward(Phantom)
    Neumann(k=0, clip=0.5)  # k = 0: the Jacobian-free gradient; clip 0: none; both allowed
    with pytest.raises(ConfigError, match="neumann k"):
        Neumann(k=-1)
    with pytest.raises(ConfigError, match="neumann clip"):
        Neumann(clip=-0.1)


def test_which_modes_train_the_equilibrium_loss():
    """The equilibrium loss takes a fixed point's gradient: truncated BPTT and no gradient are the
    progressive loss's and evaluation's; a user's own mode trains it unless it says otherwise."""
    from deqloop.adjoint import EQUILIBRIUM_BACKWARDS

    assert EQUILIBRIUM_BACKWARDS == ("implicit", "phantom", "unrolled", "neumann")

    @dataclass(frozen=True)
    class Mine(Backward):
        def attach(self, f, z_star, sol):
            return z_star

    assert Mine.trains_equilibrium


def test_implicit_gradient_is_the_inverse_formula():
    """d(sum z*)/db = 1ᵀ(I − A)⁻¹, and the backward statistics arrive through the callback."""
    A, b, f = affine()
    seen: list[BackwardStats] = []
    z, sol = fixed_point(f, torch.zeros(1, 4, dtype=torch.float64), backward=Implicit(rtol=1e-12, max_iter=200,
                         callback=seen.append), rtol=1e-12, max_iter=200)
    z.sum().backward()
    expected = torch.linalg.solve((torch.eye(4, dtype=torch.float64) - A).T, torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(b.grad[0], expected, rtol=1e-9, atol=1e-9)
    assert len(seen) == 1 and seen[0] is sol.backward and seen[0].calls == 1 and bool(seen[0].converged.all())


@pytest.mark.parametrize("fallback", ["none", "jfb"])
def test_implicit_fallback_gives_unconverged_samples_the_jacobian_free_gradient(fallback):
    """Two samples of f(z) = A z + b_i; the second's forward solve is marked unconverged. With
    fallback "jfb" its gradient is v = 1 (one application of f, df/db = I), the first's stays
    1ᵀ(I − A)⁻¹; with "none" both take the implicit formula."""
    A, _, _ = affine()
    b = torch.randn(2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=True)

    def f(z):
        return z @ A.T + b

    mode = Implicit(rtol=1e-12, max_iter=200, fallback=fallback)
    with torch.no_grad():
        _, sol = fixed_point(f, torch.zeros(2, 4, dtype=torch.float64), rtol=1e-12, max_iter=200)
    sol.converged = torch.tensor([True, False])
    mode.attach(f, sol.z, sol).sum().backward()
    implicit = torch.linalg.solve((torch.eye(4, dtype=torch.float64) - A).T, torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(b.grad[0], implicit, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(b.grad[1], torch.ones(4, dtype=torch.float64) if fallback == "jfb" else implicit,
                               rtol=1e-9, atol=1e-9)
    assert (sol.backward.fallback.tolist() == [False, True]) if fallback == "jfb" else sol.backward.fallback is None
    with pytest.raises(ConfigError, match="implicit fallback"):
        Implicit(fallback="phantom")


def test_phantom_gradient_is_that_of_its_damped_steps():
    """From z*, one step z ← (1 − τ) z + τ f(z): dz/db = τ I (z* itself is detached)."""
    _, b, f = affine()
    z, _ = fixed_point(f, torch.zeros(1, 4, dtype=torch.float64), backward=Phantom(steps=1, tau=0.25), rtol=1e-12,
                       max_iter=200)
    z.sum().backward()
    torch.testing.assert_close(b.grad[0], torch.full((4,), 0.25, dtype=torch.float64))


def test_phantom_with_several_steps_sums_the_geometric_series():
    """k undamped steps from z*: dz/db = I + A + ... + A^(k−1)."""
    A, b, f = affine()
    z, _ = fixed_point(f, torch.zeros(1, 4, dtype=torch.float64), backward=Phantom(steps=3), rtol=1e-12, max_iter=200)
    z.sum().backward()
    eye = torch.eye(4, dtype=torch.float64)
    series = eye + A + A @ A
    torch.testing.assert_close(b.grad[0], series.T @ torch.ones(4, dtype=torch.float64))


def test_neumann_sums_k_terms_of_the_series():
    """No clipping: dz/db = I + A + ... + A^k (the Neumann series of (I − A)⁻¹ cut after k terms)."""
    A, b, f = affine()
    z, _ = fixed_point(f, torch.zeros(1, 4, dtype=torch.float64), backward=Neumann(k=4, clip=0.0), rtol=1e-12,
                       max_iter=200)
    z.sum().backward()
    eye = torch.eye(4, dtype=torch.float64)
    series = eye + A + A @ A + A @ A @ A + A @ A @ A @ A
    torch.testing.assert_close(b.grad[0], series.T @ torch.ones(4, dtype=torch.float64))


@pytest.mark.parametrize("clip, expected", [(0.0, [15.0, 7.5]), (1.0, [4.0, 2.0]), (3.0, [9.0, 4.5])])
def test_neumann_clips_each_term_to_clip_times_the_upstream_norm_per_sample(clip, expected):
    """f(z) = 2z + b, upstream v = (1, 0) and (0, 0.5), k = 3: the terms 2ⁱv, each cut back to clip·‖v‖
    of its own sample before the next product. Sample 0: clip 0 → 1 + 2 + 4 + 8 = 15; clip 1 → 1 + 1 +
    1 + 1 = 4; clip 3 → 1 + 2 + 3 + 3 = 9; sample 1 the same at half the scale; b's gradient sums them."""
    b = torch.zeros(1, 2, dtype=torch.float64, requires_grad=True)
    z, sol = fixed_point(lambda z: 2 * z + b, torch.ones(2, 2, dtype=torch.float64), "anderson",
                         Neumann(k=3, clip=clip), rtol=1e-10, max_iter=50)
    assert sol.converged.all()
    z.backward(torch.tensor([[1.0, 0.0], [0.0, 0.5]], dtype=torch.float64))
    torch.testing.assert_close(b.grad[0], torch.tensor(expected, dtype=torch.float64))


def test_truncated_continues_from_the_last_state_with_grad_steps():
    A, b, f = affine()
    z, sol = fixed_point(f, torch.zeros(1, 4, dtype=torch.float64), "picard", Truncated(grad_steps=2), rtol=0.0,
                         max_iter=3)
    # 3 plain iterations kept as z_3 = f(z_2), then 2 more with gradient: z_5 = A²z_3 + (A + I) b
    z_plain = torch.zeros(1, 4, dtype=torch.float64)
    with torch.no_grad():
        for _ in range(5):
            z_plain = f(z_plain)
    torch.testing.assert_close(z.detach(), z_plain)
    z.sum().backward()
    torch.testing.assert_close(b.grad[0], (torch.eye(4, dtype=torch.float64) + A).T @ torch.ones(4, dtype=torch.float64))


def test_unrolled_always_iterates_plainly_and_refuses_another_method():
    f, exact = linear_map(2, 4, 0.5)
    z, sol = fixed_point(f, torch.zeros(2, 4, dtype=torch.float64), backward="unrolled", rtol=1e-10, max_iter=200)
    assert sol.method == "picard"
    torch.testing.assert_close(z, exact, rtol=1e-8, atol=1e-8)
    with pytest.raises(ConfigError, match="cannot run method='anderson'"):
        fixed_point(f, torch.zeros(2, 4, dtype=torch.float64), "anderson", "unrolled")
    model = LoopedDEQ(vocab_size=3, num_classes=2, grid=(4,), width=8, heads=2, backward="unrolled", max_iter=3)
    assert model.config.solve.solver == "anderson" and model.config.solve.method == "picard"
    assert model(torch.zeros(1, 4, dtype=torch.long)).solution.method == "picard"


def test_no_grad_detaches():
    A, b, f = affine()
    z, _ = fixed_point(f, torch.zeros(1, 4, dtype=torch.float64), backward=NoGrad(), rtol=1e-12, max_iter=200)
    assert not z.requires_grad
    exact = torch.linalg.solve(torch.eye(4, dtype=torch.float64) - A, b.detach()[0])
    torch.testing.assert_close(z[0], exact, rtol=1e-10, atol=1e-10)  # still the fixed point, only detached


@dataclass(frozen=True)
class Scaled(Backward):
    """A user's mode: the phantom gradient of one step, scaled by ``factor``."""

    factor: float = 2.0
    name: ClassVar[str] = "scaled"

    def attach(self, f, z_star, sol):
        z = f(z_star)
        return z.detach() + self.factor * (z - z.detach())  # value z, gradient factor · dz


def test_a_users_own_backward_mode_is_a_subclass():
    _, b, f = affine()
    z, _ = fixed_point(f, torch.zeros(1, 4, dtype=torch.float64), backward=Scaled(factor=3.0), rtol=1e-12,
                       max_iter=200)
    z.sum().backward()
    torch.testing.assert_close(b.grad[0], torch.full((4,), 3.0, dtype=torch.float64))
    model = LoopedDEQ(vocab_size=3, num_classes=2, grid=(4,), width=8, heads=2, backward=Scaled(), max_iter=3)
    x = torch.tensor([[0, 1, 2, 1], [2, 2, 0, 1]])
    out = model(x)
    out.logits.sum().backward()
    scaled = {n: p.grad.clone() for n, p in model.named_parameters() if n.startswith("block.")}
    # Scaled(2) is twice the gradient of one undamped phantom step through the block
    model.zero_grad()
    model(x, backward=Phantom(steps=1)).logits.sum().backward()
    for name, g in scaled.items():
        torch.testing.assert_close(g, 2.0 * model.get_parameter(name).grad, msg=name)
    assert scaled["block.mlp.fc.weight"].abs().sum() > 0
    with pytest.raises(ConfigError, match="not a registered backward mode"):
        model.config.to_dict()
