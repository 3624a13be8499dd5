"""The fixed-point training recipes, each checked on values: the Jacobian penalty against a dense
Jacobian, mixed initial states' statistics, the fixed-point correction's weights and loss, the
warm start's switch, the Neumann adjoint's series."""

from __future__ import annotations

import pytest
import torch

from deqloop import fixed_point, seeds
from deqloop.adjoint import Neumann, as_backward
from deqloop.errors import ConfigError
from deqloop.model import LoopedDEQ
from deqloop.train import TrainConfig, Trainer, read_metrics
from deqloop.train.objectives import Equilibrium, cross_entropy


def tiny_model(**kw) -> LoopedDEQ:
    torch.manual_seed(0)
    return LoopedDEQ(vocab_size=3, num_classes=2, grid=(4,), width=8, heads=2, mlp_ratio=2.0, **kw).double()


def test_jacobian_penalty_is_the_hutchinson_formula_on_the_dense_jacobian():
    model, seed, step = tiny_model(), 5, 3
    x = torch.randint(0, 3, (2, 4))
    e = model.embed(x)
    z = model.iterate(e, e, 3).detach()
    objective = Equilibrium(model, seed=seed, jac_reg=1.0)
    got = objective.jacobian_penalty(x, z, step)
    eps = torch.randn(z.shape, generator=seeds.generator(seed, seeds.JACOBIAN, step)).double()
    expected = 0.0
    for b in range(2):  # per example: the dense (32 × 32) Jacobian of the loop map
        J = torch.autograd.functional.jacobian(lambda zb: model.step(zb[None], e[b : b + 1].detach())[0], z[b])
        J = J.reshape(z[b].numel(), z[b].numel())
        expected += float((eps[b].reshape(-1) @ J).pow(2).sum())
    assert float(got.detach()) == pytest.approx(expected / eps.numel(), rel=1e-9)


def test_jacobian_penalty_estimates_the_frobenius_norm_per_dimension():
    model = tiny_model()
    x = torch.randint(0, 3, (1, 4))
    e = model.embed(x)
    z = model.iterate(e, e, 2).detach()
    J = torch.autograd.functional.jacobian(lambda zb: model.step(zb[None], e.detach())[0], z[0]).reshape(32, 32)
    fro = float(J.pow(2).sum()) / 32
    objective = Equilibrium(model, seed=1, jac_reg=1.0)
    draws = torch.tensor([float(objective.jacobian_penalty(x, z, s).detach()) for s in range(400)])
    assert float(draws.mean()) == pytest.approx(fro, rel=0.1)  # Hutchinson: unbiased, ~7 % error at 400 draws


def test_the_penalty_adds_to_the_loss_with_its_weight_and_frequency():
    model = tiny_model(backward="none", max_iter=6).float()  # float32 on CPU: the fused attention kernel
    x, y = torch.randint(0, 3, (2, 4)), torch.randint(0, 2, (2, 4))
    plain, _, _ = Equilibrium(model)(x, y, 6, 0)
    with_reg, _, stats = Equilibrium(model, jac_reg=0.5, jac_reg_every=2)(x, y, 6, 4)
    torch.testing.assert_close(with_reg, plain + 0.5 * stats["jac_fro"].float())
    with_reg.backward()  # the penalty's gradient reaches the parameters (double backward through attention)
    assert float(model.block.attn.qkv.weight.grad.abs().sum()) > 0
    skipped, _, stats = Equilibrium(model, jac_reg=0.5, jac_reg_every=2)(x, y, 6, 3)
    assert "jac_fro" not in stats and float(skipped.detach()) == float(plain.detach())


def test_mixed_initial_states_keep_half_the_entries_standard_gaussian():
    model = LoopedDEQ(vocab_size=3, num_classes=2, grid=(64,), width=32, heads=2)
    e = torch.ones(50, 64, 32)
    torch.manual_seed(3)
    z0 = model.initial_state(e, "mixed")
    kept = z0[z0 != 0]
    assert (z0 == 0).float().mean().item() == pytest.approx(0.5, abs=0.005)
    assert kept.std().item() == pytest.approx(1.0, abs=0.01) and kept.mean().item() == pytest.approx(0.0, abs=0.01)


def test_fixed_point_correction_grades_each_segment_with_its_weight():
    model = tiny_model(backward="none", solver="picard", rtol=0.0)
    objective = Equilibrium(model, fp_states=3, fp_gamma=0.5)
    assert objective.segment_weights() == pytest.approx([0.25 / 1.75, 0.5 / 1.75, 1 / 1.75])
    x, y = torch.randint(0, 3, (2, 4)), torch.randint(0, 2, (2, 4))
    loss, logits, _ = objective(x, y, 9, 0)  # 3 segments of 3 solver iterations, each from the last's answer
    states, z = [], None
    for _ in range(3):
        z = model(x, z0=z, max_iter=3).solution.z
        states.append(z)
    assert not torch.equal(states[0], states[1])  # each segment continues the solve
    expected = sum(w * cross_entropy(model.readout(z), y) for w, z in zip(objective.segment_weights(), states))
    torch.testing.assert_close(loss, expected.float())
    torch.testing.assert_close(logits, model.readout(states[-1]))


def test_neumann_adjoint_sums_k_terms_of_the_series_and_clips_them():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(4, 4, generator=g, dtype=torch.float64)
    A = 0.6 * A / torch.linalg.matrix_norm(A, 2)
    b = torch.randn(1, 4, generator=g, dtype=torch.float64, requires_grad=True)
    f = lambda z: z @ A.T + b  # noqa: E731
    z, _ = fixed_point(f, torch.zeros(1, 4, dtype=torch.float64), backward=Neumann(k=3, clip=0.0), rtol=1e-12,
                       max_iter=200)
    z.sum().backward()
    one = torch.ones(4, dtype=torch.float64)
    series = one + A.T @ one + A.T @ A.T @ one + A.T @ A.T @ A.T @ one
    torch.testing.assert_close(b.grad[0], series)
    b.grad = None
    z, _ = fixed_point(f, torch.zeros(1, 4, dtype=torch.float64), backward=Neumann(k=1, clip=0.1), rtol=1e-12,
                       max_iter=200)
    z.sum().backward()
    term = A.T @ one
    torch.testing.assert_close(b.grad[0], one + term * (0.1 * one.norm() / term.norm()))
    assert as_backward("neumann", {"k": 2}) == Neumann(k=2)


def tiny_run(tmp_path, **kw) -> TrainConfig:
    values = dict(task="prefix_sums", task_options={"length": 5}, width=16, heads=2, attention="local", window=3,
                  loss="equilibrium", backward="phantom", max_iter=6, steps=4, batch_size=8, warmup_steps=0,
                  log_every=1, eval_size=0, threads=1, progress=False, out=str(tmp_path))
    values.update(kw)
    return TrainConfig.from_flat(**values)


def test_the_warm_start_switches_objectives_at_its_step(tmp_path):
    Trainer(tiny_run(tmp_path, pretrain_steps=2, depth_offset=1)).run()
    records = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "loss" in r]
    assert [r["phase"] for r in records] == ["warm", "warm", "equilibrium", "equilibrium"]
    assert [r["iterations"] for r in records[:2]] == [6, 6]  # 5 bits + depth_offset 1 plain iterations
    assert all("converged" in r for r in records[2:]) and not any("converged" in r for r in records[:2])


def test_the_equilibrium_loss_defaults_to_the_best_recipe(tmp_path):
    """Unset, the equilibrium loss gets the phantom gradient through 5 damped steps, τ = 0.8, and no
    warm start; anything given explicitly is kept."""
    c = tiny_run(tmp_path, backward=None, steps=10)
    assert (c.objective.pretrain_steps, c.solve.backward, c.solve.backward_options) == (0, "phantom", {"steps": 5, "tau": 0.8})
    assert c.solve.adjoint == as_backward("phantom", {"steps": 5, "tau": 0.8})
    c = tiny_run(tmp_path, backward=None, steps=10, pretrain_steps=6, backward_options={"steps": 2})
    assert (c.objective.pretrain_steps, c.solve.backward, c.solve.backward_options) == (6, "phantom", {"steps": 2, "tau": 0.8})
    c = tiny_run(tmp_path, backward="implicit", steps=3)
    assert (c.objective.pretrain_steps, c.solve.backward, c.solve.backward_options) == (0, "implicit", {})
    c = tiny_run(tmp_path, loss="progressive", backward=None)
    assert (c.objective.pretrain_steps, c.solve.backward) == (0, "implicit")  # the model's default, unused
    assert TrainConfig.from_dict(c.to_dict()) == c  # the resolved values round-trip


def test_recipes_are_validated(tmp_path):
    with pytest.raises(ConfigError, match="jac_reg, pretrain_steps are fixed-point training recipes"):
        tiny_run(tmp_path, loss="progressive", backward=None, jac_reg=0.1, pretrain_steps=1)
    with pytest.raises(ConfigError, match="the equilibrium loss's solver budget is max_iter"):
        tiny_run(tmp_path, depth_offset=2, pretrain_steps=0)
    with pytest.raises(ConfigError, match=r"pretrain_steps \(4\) must be below steps \(4\)"):
        tiny_run(tmp_path, pretrain_steps=4)
    with pytest.raises(ConfigError, match="unknown train_init 'ones'"):
        tiny_run(tmp_path, train_init="ones")
    with pytest.raises(ConfigError, match="fp_gamma must be a finite number in"):
        tiny_run(tmp_path, fp_states=2, fp_gamma=0.0)


def test_the_gate_scales_each_branch_by_its_clamped_value():
    """h + clamp(γ, ±cap)·g(n(h)) for the pre norm: the contractive parameterisation."""
    from deqloop.model.layers import Residual

    torch.manual_seed(0)
    res = Residual(6, "pre", gate=0.5, gate_cap=0.75).double()
    with torch.no_grad():
        res.gate.copy_(torch.tensor([0.1, -0.2, 0.5, 0.9, -2.0, 0.75], dtype=torch.float64))
        res.norm_in.weight.copy_(torch.linspace(0.5, 1.5, 6))
    h = torch.randn(2, 3, 6, dtype=torch.float64)
    W = torch.randn(6, 6, dtype=torch.float64)
    sublayer = lambda u: torch.tanh(u @ W)  # noqa: E731
    n = h / torch.sqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6) * res.norm_in.weight
    gamma = torch.tensor([0.1, -0.2, 0.5, 0.75, -0.75, 0.75], dtype=torch.float64)
    torch.testing.assert_close(res(h, None, sublayer), h + gamma * sublayer(n))
    model = LoopedDEQ(vocab_size=3, num_classes=2, grid=(4,), width=8, heads=2, gate=0.5)
    assert [n for n, _ in model.named_parameters() if n.endswith("gate")] == ["block.attn_res.gate",
                                                                               "block.mlp_res.gate"]
    assert float(model.block.attn_res.gate[0]) == 0.5
    with pytest.raises(ConfigError, match=r"gate must be a finite number in \(0, 0.75\], got 0.9"):
        LoopedDEQ(vocab_size=3, num_classes=2, grid=(4,), width=8, heads=2, gate=0.9)
