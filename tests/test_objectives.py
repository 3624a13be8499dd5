"""The training objectives and evaluation formulas on values: the progressive loss's (n, k), the
equilibrium loss, adaptive accuracy's settling index and its solver options."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from deqloop.eval import adaptive_accuracy, iteration_sweep
from deqloop.model import LoopedDEQ
from deqloop.train import TrainConfig, Trainer
from deqloop.train.objectives import Equilibrium, Progressive, cross_entropy, progressive_draw


def tiny_model(**kw) -> LoopedDEQ:
    torch.manual_seed(0)
    return LoopedDEQ(vocab_size=3, num_classes=2, grid=(5,), width=8, heads=2, mlp_ratio=2.0, **kw).double()


def grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_progressive_draw_covers_every_valid_pair_and_only_those():
    depth = 3
    pairs = {progressive_draw(7, step, depth) for step in range(400)}
    assert pairs == {(n, k) for n in range(depth) for k in range(1, depth - n + 1)}
    assert progressive_draw(7, 5, depth) == progressive_draw(7, 5, depth)


def test_progressive_draw_frequencies_match_the_formula():
    """P(n, k) = 1/T · 1/(T − n) for n ∈ {0..T−1}, k ∈ {1..T−n} (the paper's randrange draw),
    each frequency within 4 standard errors over 20,000 steps."""
    depth, draws = 4, 20_000
    counts: dict[tuple[int, int], int] = {}
    for step in range(draws):
        pair = progressive_draw(11, step, depth)
        counts[pair] = counts.get(pair, 0) + 1
    expected = {(n, k): 1 / (depth * (depth - n)) for n in range(depth) for k in range(1, depth - n + 1)}
    assert set(counts) == set(expected)
    for pair, p in expected.items():
        assert abs(counts[pair] / draws - p) <= 4 * (p * (1 - p) / draws) ** 0.5, (pair, counts[pair] / draws, p)


def _step_with_n(seed: int, depth: int, n: int) -> int:
    return next(s for s in range(1000) if progressive_draw(seed, s, depth)[0] == n)


@pytest.mark.parametrize("detach_z0", [False, True])
def test_at_n_0_the_embedding_learns_through_z0_unless_detached(detach_z0):
    """recall none: e enters only as z0 = e, so with the paper's form (alpha 1, n = 0) the embedding's
    whole gradient is the one through z0, written out by iterating the step by hand; detached, none."""
    model, depth, seed = tiny_model(recall="none"), 5, 2
    step = _step_with_n(seed, depth, 0)
    k = progressive_draw(seed, step, depth)[1]
    x, y = torch.randint(0, 3, (4, 5)), torch.randint(0, 2, (4, 5))
    kw = {"detach_z0": True} if detach_z0 else {}  # the paper's form is the default
    loss, _, stats = Progressive(model, alpha=1.0, seed=seed, **kw)(x, y, depth, step)
    assert (stats["n"], stats["k"]) == (0, k)
    loss.backward()
    got = model.embedding.weight.grad
    if detach_z0:
        assert got is None or not got.any()
        return
    model.zero_grad()
    e = model.embed(x)
    z = e
    for _ in range(k):
        z = model.step(z, e)
    expected = cross_entropy(model.readout(z), y)
    (hand,) = torch.autograd.grad(expected, model.embedding.weight)
    assert hand.abs().sum() > 0
    torch.testing.assert_close(got, hand, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("detach_z0", [False, True])
@pytest.mark.parametrize("step", [0, 1, 2, 3])
def test_truncated_progressive_loss_grades_n_free_then_k_graded_iterations(step, detach_z0):
    """alpha = 1: the loss after n + k iterations, gradients only through the last k (and, at
    n = 0 unless detach_z0, through z0 = e)."""
    model, depth, seed = tiny_model(), 6, 3
    n, k = progressive_draw(seed, step, depth)
    x, y = torch.randint(0, 3, (4, 5)), torch.randint(0, 2, (4, 5))
    loss, logits, stats = Progressive(model, alpha=1.0, seed=seed, detach_z0=detach_z0)(x, y, depth, step)
    assert (stats["n"], stats["k"]) == (n, k)
    loss.backward()
    got = grads(model)
    model.zero_grad()
    e = model.embed(x)
    z = e if n == 0 and not detach_z0 else e.detach()
    for _ in range(n):
        z = model.step(z, e).detach()
    for _ in range(k):
        z = model.step(z, e)
    expected = cross_entropy(model.readout(z), y)
    torch.testing.assert_close(loss, expected.float(), rtol=1e-6, atol=1e-7)
    expected.backward()
    for name, g in grads(model).items():
        torch.testing.assert_close(got[name], g, rtol=1e-6, atol=1e-9, msg=name)


@pytest.mark.parametrize("n", [0, 1, 3])
def test_mixed_progressive_loss_weighs_the_full_and_the_truncated_terms(n):
    """0 < alpha < 1: (1 − alpha) · the loss after all depth iterations + alpha · the loss after n + k,
    at draws n = 0 (both terms start at z0), 1 and 3 (the full term passes z_n on the way)."""
    model, depth, seed = tiny_model(), 5, 1
    step = _step_with_n(seed, depth, n)
    k = progressive_draw(seed, step, depth)[1]
    x, y = torch.randint(0, 3, (3, 5)), torch.randint(0, 2, (3, 5))
    loss, _, _ = Progressive(model, alpha=0.25, seed=seed)(x, y, depth, step)
    with torch.no_grad():
        e = model.embed(x)
        full = cross_entropy(model.readout(model.iterate(e, e, depth)), y)
        part = cross_entropy(model.readout(model.iterate(e, e, n + k)), y)
    torch.testing.assert_close(loss, (0.75 * full + 0.25 * part).float(), rtol=1e-6, atol=1e-7)


def test_plain_progressive_loss_backpropagates_through_every_iteration():
    model = tiny_model()
    x, y = torch.randint(0, 3, (3, 5)), torch.randint(0, 2, (3, 5))
    loss, _, stats = Progressive(model, alpha=0.0, seed=0)(x, y, 4, 0)
    e = model.embed(x)
    z3 = model.iterate(e, e, 3)
    z4 = model.step(z3, e)
    torch.testing.assert_close(loss, cross_entropy(model.readout(z4), y).float(), rtol=1e-6, atol=1e-7)
    change = ((z4 - z3).flatten(1).norm(dim=1) / z4.flatten(1).norm(dim=1)).float()
    torch.testing.assert_close(stats["residual"], change.detach(), rtol=1e-5, atol=1e-9)


def test_equilibrium_loss_is_the_cross_entropy_at_the_solved_state():
    model = tiny_model(solver="anderson", max_iter=40, rtol=1e-8)
    x, y = torch.randint(0, 3, (3, 5)), torch.randint(0, 2, (3, 5))
    loss, logits, stats = Equilibrium(model)(x, y, 40, 0)
    with torch.no_grad():
        ref = model(x, max_iter=40, backward="none")
    torch.testing.assert_close(logits.detach(), ref.logits)
    torch.testing.assert_close(loss.detach(), cross_entropy(ref.logits, y))
    assert stats["solution"].iterations.tolist() == ref.solution.iterations.tolist()


# -- adaptive accuracy -------------------------------------------------------------------------


class Scripted(nn.Module):
    """A fake loop whose example i changes its answer coordinate for k_i iterations, then drifts
    by 1e-3 per iteration on a coordinate of size 1000 (a relative change of 1e-6: settled). The
    readout is right while the drift is below 1.5e-3, so an example is right when it settles and
    wrong a few iterations later."""

    training = False

    def __init__(self, k: list[int]):
        super().__init__()
        self.k = torch.tensor(k, dtype=torch.float64)
        self.w = nn.Parameter(torch.zeros(1))

    def embed(self, x):
        return torch.zeros(len(x), 2, dtype=torch.float64)

    def initial_state(self, e):
        return torch.stack([torch.zeros(len(e)), torch.full((len(e),), 1000.0)], dim=1).double()

    iterates = LoopedDEQ.iterates

    def step(self, z, e):
        t = z[:, 0].clone()
        moving = t < self.k
        t = torch.where(moving, t + 1, t)
        drift = torch.where(moving, z[:, 1], z[:, 1] + 1e-3)
        return torch.stack([t, drift], dim=1)

    def readout(self, z):
        return (1.5e-3 - (z[:, 1] - 1000.0))[:, None]  # > 0: right


def scripted_correct(logits, y, x):
    return logits[:, 0] > 0


def test_adaptive_accuracy_is_scored_where_each_example_settles():
    model = Scripted([0, 1, 2, 10])
    x = y = torch.zeros(4, 1, dtype=torch.long)
    sweep = iteration_sweep(model, x, y, scripted_correct, [1, 6], rtol=1e-4, device="cpu")
    assert sweep.settled_at.tolist() == [1, 2, 3, 6]
    assert sweep.settled.tolist() == [True, True, True, False]
    assert sweep.settled_correct.tolist() == [True, True, True, True]
    assert sweep.accuracy == [1.0, 0.25]  # at 6 iterations the settled examples have drifted wrong
    summary = sweep.settle_summary()
    assert summary["accuracy"] == 1.0 and summary["converged"] == 0.75
    assert summary["iterations_mean"] == pytest.approx(3.0) and summary["iterations_max"] == 6


def test_adaptive_accuracy_solves_with_the_models_own_solver_options(monkeypatch):
    model = tiny_model(solver="anderson", solver_options={"m": 2}, max_iter=10)
    seen = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda x, **kw: (seen.append(kw), forward(x, **kw))[1])
    x, y = torch.randint(0, 3, (3, 5)), torch.randint(0, 2, (3, 5))
    res = adaptive_accuracy(model, x, y, lambda o, t, s: (o.argmax(-1) == t).all(-1), max_iter=7, rtol=1e-5,
                            device="cpu")
    used = model.solve_settings(**seen[-1])  # what the call resolved to
    assert used.solver == "anderson" and used.solver_options == {"m": 2}
    assert seen[-1]["max_iter"] == 7 and seen[-1]["rtol"] == 1e-5 and seen[-1]["backward"] == "none"
    with torch.no_grad():
        ref = forward(x, max_iter=7, rtol=1e-5, backward="none")
    assert res.iterations.tolist() == ref.solution.iterations.tolist()
    adaptive_accuracy(model, x, y, lambda o, t, s: (o.argmax(-1) == t).all(-1), solver="picard", device="cpu")
    used = model.solve_settings(**seen[-1])
    assert used.solver == "picard" and used.solver_options == {}  # another solver: its defaults


# -- training fixes ----------------------------------------------------------------------------


def tiny_run(tmp_path, **kw) -> TrainConfig:
    values = dict(task="prefix_sums", task_options={"length": 5}, width=16, heads=2, attention="local", window=3,
                  steps=6, batch_size=8, warmup_steps=0, log_every=1, eval_size=0, threads=1, progress=False,
                  out=str(tmp_path))
    values.update(kw)
    return TrainConfig.from_flat(**values)


def test_keep_every_does_not_depend_on_checkpoint_every(tmp_path):
    Trainer(tiny_run(tmp_path, loss="progressive", max_iter=2, keep_every=3, checkpoint_every=4)).run()
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["last.pt", "step_3.pt", "step_6.pt"]


@pytest.mark.filterwarnings("ignore::deqloop.adjoint.BackwardWarning")
def test_the_implicit_backward_warns_when_forward_solves_do_not_converge(tmp_path, caplog):
    config = tiny_run(tmp_path, loss="equilibrium", backward="implicit", pretrain_steps=0, max_iter=1, rtol=1e-12,
                      steps=2)
    assert config.implicit
    with caplog.at_level(logging.WARNING, logger="deqloop.train"):
        Trainer(config).run()
    warnings = [r for r in caplog.records if "forward solves converged" in r.getMessage()]
    assert len(warnings) == 1 and "step 1:" in warnings[0].getMessage()


def test_the_phantom_backward_does_not_warn(tmp_path, caplog):
    config = tiny_run(tmp_path, loss="equilibrium", backward="phantom", max_iter=1, rtol=1e-12, steps=2)
    assert not config.implicit
    with caplog.at_level(logging.WARNING, logger="deqloop.train"):
        Trainer(config).run()
    assert not [r for r in caplog.records if "forward solves converged" in r.getMessage()]


# -- objectives on values: the draw's stream, the solve's depth, the logged metrics ---------------


def test_progressive_draw_uses_the_progressive_stream_of_seed_and_step():
    from deqloop import seeds

    for seed, step, depth in [(0, 0, 5), (7, 3, 8), (123, 99, 4)]:
        g = seeds.generator(seed, seeds.PROGRESSIVE, step)
        n = int(torch.randint(0, depth, (1,), generator=g))
        k = int(torch.randint(1, depth - n + 1, (1,), generator=g))
        assert progressive_draw(seed, step, depth) == (n, k)
    assert [progressive_draw(1, s, 50) for s in range(8)] != [progressive_draw(2, s, 50) for s in range(8)]


def test_truncated_progressive_loss_reports_the_logits_and_change_after_n_plus_k():
    """alpha = 1: the returned logits and residual are those of z_{n+k}, not of z_depth."""
    model, depth, seed = tiny_model(), 6, 3
    step = next(s for s in range(50) if sum(progressive_draw(seed, s, depth)) < depth)
    n, k = progressive_draw(seed, step, depth)
    x, y = torch.randint(0, 3, (4, 5)), torch.randint(0, 2, (4, 5))
    _, logits, stats = Progressive(model, alpha=1.0, seed=seed)(x, y, depth, step)
    with torch.no_grad():
        e = model.embed(x)
        before = model.iterate(e, e, n + k - 1)
        after = model.step(before, e)
        torch.testing.assert_close(logits.detach(), model.readout(after))
    change = ((after - before).flatten(1).norm(dim=1) / after.flatten(1).norm(dim=1)).float()
    torch.testing.assert_close(stats["residual"], change, rtol=1e-5, atol=1e-9)


def test_progressive_metrics_report_n_and_k_only_for_the_truncated_term():
    stats = {"residual": torch.tensor([0.5, 0.25]), "depth": 6, "n": 2, "k": 3}
    model = tiny_model()
    assert Progressive(model, alpha=0.0, seed=0).metrics(stats, float) == {"iterations": 6, "residual": 0.375}
    assert Progressive(model, alpha=0.5, seed=0).metrics(stats, float) == {"iterations": 6, "n": 2, "k": 3,
                                                                          "residual": 0.375}


def test_equilibrium_objective_solves_with_depth_as_max_iter():
    model = tiny_model(solver="picard", max_iter=40, rtol=1e-12)
    x, y = torch.randint(0, 3, (3, 5)), torch.randint(0, 2, (3, 5))
    loss, logits, stats = Equilibrium(model)(x, y, 3, 0)
    assert stats["solution"].iterations.tolist() == [3, 3, 3]
    ref = model(x, max_iter=3)  # same backward mode (the implicit one re-applies f once at z*)
    assert ref.solution.iterations.tolist() == [3, 3, 3]
    torch.testing.assert_close(logits.detach(), ref.logits.detach())
    torch.testing.assert_close(loss.detach(), cross_entropy(ref.logits, y).detach())


def fake_solution(converged: list[bool]):
    from deqloop.solvers.solution import BackwardStats, Solution

    B = len(converged)
    it = torch.arange(1, B + 1)
    res = torch.linspace(0.1, 0.8, B)
    return Solution(z=torch.zeros(B, 1), converged=torch.tensor(converged), residual=res, abs_residual=res,
                    iterations=it, nfe=B, status=torch.zeros(B, dtype=torch.long),
                    backward=BackwardStats(converged=torch.tensor(converged[::-1]), residual=2 * res,
                                           iterations=it + 10))


def test_equilibrium_metrics_values():
    model = tiny_model()
    m = Equilibrium(model).metrics({"solution": fake_solution([True, False, True, False]), "step": 0}, float)
    assert m == pytest.approx({
        "iterations": 2.5, "iterations_max": 4, "residual": 0.45, "residual_max": 0.8, "converged": 0.5,
        "backward_residual": 0.9, "backward_iterations": 12.5, "backward_converged": 0.5,
    })
    assert isinstance(m["iterations_max"], int)
    sol = fake_solution([True, False])
    sol.backward.residual = None  # no backward solve ran: no backward metrics
    assert set(Equilibrium(model).metrics({"solution": sol, "step": 0}, float)) == {
        "iterations", "iterations_max", "residual", "residual_max", "converged"}


def test_equilibrium_warns_once_below_half_converged_and_only_when_asked(caplog):
    model = tiny_model(max_iter=9, rtol=1e-5)
    half = {"solution": fake_solution([True, False] * 4), "step": 6}
    few = {"solution": fake_solution([True] + [False] * 7), "step": 6}
    with caplog.at_level(logging.WARNING, logger="deqloop.train"):
        assert Equilibrium(model).warn_unconverged is False
        Equilibrium(model).metrics(few, float)  # not asked
        objective = Equilibrium(model, warn_unconverged=True)
        objective.metrics(half, float)  # exactly half converged: no warning
        assert not caplog.records
        objective.metrics(few, float)
        objective.metrics(few, float)  # once a run
    assert len(caplog.records) == 1
    # 1 of 8 converged: 12.5%, which %.0f rounds half to even
    assert caplog.records[0].getMessage().startswith(
        "step 7: only 12% of the forward solves converged within max_iter=9 (rtol 1e-05)")


def test_masked_cross_entropy_is_the_mean_over_the_masked_cells():
    """−log softmax(logits)[y] averaged over the cells the mask keeps, written out by hand; 0 when
    the mask keeps none; no mask: the mean over every cell."""
    torch.manual_seed(4)
    logits, y = torch.randn(2, 3, 4, dtype=torch.float64), torch.tensor([[0, 3, 1], [2, 2, 0]])
    mask = torch.tensor([[True, False, True], [False, False, True]])
    nll = -torch.log_softmax(logits, dim=-1).gather(-1, y[..., None])[..., 0]
    hand = (nll[0, 0] + nll[0, 2] + nll[1, 2]) / 3
    torch.testing.assert_close(cross_entropy(logits, y, mask), hand.float(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(cross_entropy(logits, y), nll.mean().float(), rtol=1e-6, atol=1e-7)
    assert cross_entropy(logits, y, torch.zeros_like(mask)).item() == 0.0
    one = torch.zeros_like(mask)
    one[1, 0] = True
    torch.testing.assert_close(cross_entropy(logits, y, one), nll[1, 0].float(), rtol=1e-6, atol=1e-7)


def test_equilibrium_jacobian_penalty_is_added_with_its_weight_on_its_steps():
    """loss = CE(z*) + jac_reg · ‖εᵀ ∂f/∂z‖² / numel(ε) at z*, ε drawn from (seed, JACOBIAN, step),
    written out with one vector-Jacobian product; every step by default, every jac_reg_every-th
    step otherwise."""
    from deqloop import seeds

    model = tiny_model(solver="picard", max_iter=6, rtol=1e-12)
    x, y = torch.randint(0, 3, (3, 5)), torch.randint(0, 2, (3, 5))
    step, seed, weight = 3, 5, 0.7
    loss, logits, stats = Equilibrium(model, seed=seed, jac_reg=weight)(x, y, 6, step)
    z = stats["solution"].z.detach().requires_grad_()
    e = model.embed(x).detach()
    fz = model.step(z, e)
    eps = torch.randn(fz.shape, generator=seeds.generator(seed, seeds.JACOBIAN, step)).to(fz)
    (vjp,) = torch.autograd.grad(fz, z, eps)
    hand = vjp.pow(2).sum() / eps.numel()
    torch.testing.assert_close(stats["jac_fro"].double(), hand, rtol=1e-6, atol=1e-12)
    ce = cross_entropy(logits.detach(), y)
    torch.testing.assert_close(loss.detach(), (ce + weight * hand).float(), rtol=1e-6, atol=1e-7)
    assert hand > 0
    every = Equilibrium(model, seed=seed, jac_reg=weight, jac_reg_every=2)
    assert "jac_fro" not in every(x, y, 6, 3)[2] and "jac_fro" in every(x, y, 6, 4)[2]
    assert "jac_fro" in Equilibrium(model, seed=seed, jac_reg=weight)(x, y, 6, 1)[2]
    assert "jac_fro" not in Equilibrium(model, seed=seed)(x, y, 6, 0)[2]


def test_warm_start_switches_to_the_equilibrium_loss_at_its_step():
    from deqloop.train.objectives import WarmStart

    model = tiny_model(solver="picard", max_iter=4, rtol=1e-12)
    warm = WarmStart(Progressive(model, seed=0), Equilibrium(model), steps=2, plain_depth=lambda x: 3)
    assert [warm.phase(s) is warm.warm for s in range(4)] == [True, True, False, False]
    x, y = torch.randint(0, 3, (2, 5)), torch.randint(0, 2, (2, 5))
    _, _, stats = warm(x, y, 4, 2)
    assert warm.metrics(stats, float)["phase"] == "equilibrium" and "solution" in stats
    _, _, stats = warm(x, y, 4, 1)
    assert warm.metrics(stats, float)["phase"] == "warm" and stats["depth"] == 3
