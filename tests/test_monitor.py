"""The training-time stability monitor: its ρ estimate against dense Jacobians, the warm start,
its record against direct solves, resumption, independence of training, and ``deqloop plot``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_train import tiny_config, without_timing

from deqloop import solve
from deqloop.cli import main
from deqloop.model import EARLIER_FORMS, LoopedDEQ
from deqloop.solvers import BatchedMap
from deqloop.train import Trainer, read_metrics, train
from deqloop.train.monitor import (
    GROUPS,
    StabilityMonitor,
    grad_norms,
    param_group,
    probe_batch,
)

RECALLS = ("none", "external", "internal")
TIGHT = {"rtol": 1e-12, "max_iter": 200}


def tiny_model(recall: str, seed: int = 0, **kwargs) -> LoopedDEQ:
    """Width 8, 2 heads, 3 tokens, float64; a large MLP output bias makes the loop contract. The
    block is deqloop's earlier form (EARLIER_FORMS): the instances whose convergence the tests
    below rely on (some plain iterations converge, not all) were drawn with it."""
    torch.manual_seed(seed)
    kwargs = {**EARLIER_FORMS, **kwargs}
    model = LoopedDEQ(vocab_size=5, num_classes=2, grid=(3,), width=8, heads=2, recall=recall, **kwargs).double()
    with torch.no_grad():
        model.block.mlp.proj.bias.normal_(0, 1.0)
    return model


def inputs(batch: int = 4) -> torch.Tensor:
    return torch.randint(0, 5, (batch, 3), generator=torch.Generator().manual_seed(1))


def fixed_point(model, x):
    with torch.no_grad():
        e = model.embed(x)
        sol = solve(BatchedMap(model.step, e), e, "anderson", **TIGHT)
    assert sol.converged.all()
    return sol.z, e


def dense_radius(model, z, e) -> np.ndarray:
    """max |eigenvalue| of each example's dense ∂f/∂z."""
    shape = (1, *z.shape[1:])
    out = []
    for b in range(len(z)):
        J = torch.autograd.functional.jacobian(lambda v, b=b: model.step(v.reshape(shape), e[b:b + 1]).reshape(-1),
                                               z[b].reshape(-1))
        out.append(float(torch.linalg.eigvals(J).abs().max()))
    return np.array(out)


# -- the estimator -----------------------------------------------------------------------------


@pytest.mark.parametrize("recall", RECALLS)
def test_the_estimate_matches_the_dense_spectral_radius(recall):
    model = tiny_model(recall)
    x = inputs()
    z, e = fixed_point(model, x)
    exact = dense_radius(model, z, e)
    monitor = StabilityMonitor(model, x, seed=0)
    est = monitor.spectral_radius(z, e, seed=0, tol=1e-10, max_matvecs=300)
    # to a tight tolerance: within 1e-8 relative of the dense ρ, and the Ritz pair says so too
    np.testing.assert_allclose(est.radius.numpy(), exact, rtol=1e-8)
    assert est.converged.all() and float(est.residual.max()) < 1e-10
    assert monitor.basis.shape == (4, z[0].numel(), 2)  # the warm start for the next measurement


def _perturb(model, seed: int, scale: float = 1e-3) -> None:
    """A small, reproducible change of every block parameter (like one optimizer step)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.block.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("recall", RECALLS)
def test_the_warm_start_reaches_the_tolerance_in_fewer_products(recall):
    model = tiny_model(recall)
    x = inputs()
    warm = StabilityMonitor(model, x, seed=0)
    warm.measure(1)  # the previous probe, from a random start
    _perturb(model, seed=7)
    z, e = fixed_point(model, x)
    exact = dense_radius(model, z, e)
    cold = StabilityMonitor(model, x, seed=0)
    est_w, est_c = warm.spectral_radius(z, e, seed=9), cold.spectral_radius(z, e, seed=9)
    assert est_w.converged.all() and est_c.converged.all()  # both to the monitor's eig_tol (1e-3)
    np.testing.assert_allclose(est_w.radius.numpy(), exact, rtol=1e-2)
    np.testing.assert_allclose(est_c.radius.numpy(), exact, rtol=1e-2)
    # the same answer for less work (measured, recall none / external / internal: 45 / 48 / 54
    # products cold, 32 / 23 / 27 warm)
    assert int(est_w.matvecs.sum()) <= 0.8 * int(est_c.matvecs.sum())


def test_a_resumed_monitor_continues_from_its_saved_basis():
    model = tiny_model("external")
    x = inputs()
    first = StabilityMonitor(model, x, seed=3)
    first.measure(1)
    state = first.state_dict()
    second = StabilityMonitor(model, x, seed=3)
    second.load_state_dict(state)
    assert first.measure(2) == second.measure(2)
    fresh = StabilityMonitor(model, x, seed=3)
    assert fresh.measure(2)["rho_residual"] != first.measure(2)["rho_residual"]


# -- the record --------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:implicit backward solve")
def test_the_record_matches_direct_solves_and_hand_computed_norms():
    model = tiny_model("internal", backward_options={"max_iter": 1, "rtol": 1e-12}, max_iter=12)
    x = inputs(6)
    with torch.no_grad():
        e = model.embed(x)
    out = model(x)
    torch.nn.functional.cross_entropy(out.logits.reshape(-1, 2), torch.zeros(18, dtype=torch.long)).backward()
    norms = grad_norms(model)
    rng = torch.get_rng_state()
    record = StabilityMonitor(model, x, seed=0).measure(5, norms)
    assert torch.equal(rng, torch.get_rng_state())  # the global RNG is not touched

    s = model.config.solve
    fwd = solve(BatchedMap(model.step, e), e, s.solver, rtol=s.rtol, max_iter=12)
    plain = solve(BatchedMap(model.step, e), e, "picard", rtol=s.rtol, max_iter=12)
    zero = solve(BatchedMap(model.step, e), torch.zeros_like(e), s.solver, rtol=s.rtol, max_iter=12)
    assert record["step"] == 5 and record["kind"] == "stability" and record["probe"] == 6
    assert record["forward_converged"] == float(fwd.converged.double().mean())
    assert record["forward_iterations"] == float(fwd.iterations.double().mean())
    assert record["plain_converged"] == float(plain.converged.double().mean())
    assert record["plain_iterations"] == float(plain.iterations.double().mean())
    assert 0 < record["plain_converged"] < 1  # 12 plain iterations reach some fixed points, not all
    a, b = fwd.z.reshape(6, -1), zero.z.reshape(6, -1)
    dist = ((a - b).norm(dim=1) / torch.maximum(a.norm(dim=1), b.norm(dim=1))).numpy()
    assert record["init_distance"] == pytest.approx(float(np.median(dist)), rel=1e-12)
    # one backward iteration to rtol 1e-12: none converge
    assert record["backward_converged"] == 0.0 and record["backward_iterations"] == 1.0
    for group, names in (("embedding", ["embedding.weight"]), ("inject", [n for n, _ in model.named_parameters()
                                                                           if "inject" in n])):
        expected = math.sqrt(sum(float(dict(model.named_parameters())[n].grad.pow(2).sum()) for n in names))
        assert record[f"grad_norm/{group}"] == pytest.approx(expected, rel=1e-12)
    total = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]).item()
    assert math.sqrt(sum(v**2 for v in norms.values())) == pytest.approx(total, rel=1e-12)
    assert sorted(norms) == sorted(f"grad_norm/{g}" for g in GROUPS if g != "other")


def test_parameter_groups():
    expected = {"embedding.weight": "embedding", "block.attn.qkv.weight": "attn", "block.attn_res.gate": "attn",
                "block.attn.q_norm.weight": "norms", "block.attn_res.norm_out.weight": "norms",
                "block.mlp.fc.bias": "mlp", "block.mlp_res.norm_in.weight": "norms",
                "block.mlp_res.inject.w_e.weight": "inject", "block.inject.w_z.weight": "inject",
                "head.norm.weight": "head", "head.out.bias": "head", "block.norm_in.weight": "norms",
                "block.3.attn.proj.bias": "attn", "block.3.mlp_res.gate": "mlp", "block.14.inject.w_z.bias": "inject"}
    assert {n: param_group(n) for n in expected} == expected


# -- in training -------------------------------------------------------------------------------

# Mixed initial states draw from the global RNG every step: a monitor that touched it would change training.
MONITORED = {"steps": 8, "checkpoint_every": 4, "stability_every": 2, "stability_size": 4, "eval_size": 0,
             "loss": "equilibrium", "depth_offset": None, "backward": "phantom", "backward_options": {"steps": 2},
             "max_iter": 6, "train_init": "mixed"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny runs, the same but for the monitor (every 2 steps on 4 probe examples)."""
    root = tmp_path_factory.mktemp("runs")
    on = train(tiny_config(root / "on", **MONITORED))
    off = train(tiny_config(root / "off", **{**MONITORED, "stability_every": 0}))
    return root, on, off


def test_the_monitor_leaves_training_unchanged(runs):
    root, on, off = runs
    a, b = torch.load(on.checkpoint, weights_only=True), torch.load(off.checkpoint, weights_only=True)
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    lines = without_timing(list(read_metrics(root / "on" / "metrics.jsonl")))
    stability = [r for r in lines if r.get("kind") == "stability"]
    assert [r["step"] for r in stability] == [2, 4, 6, 8]
    assert [r for r in lines if r.get("kind") != "stability"] == without_timing(
        list(read_metrics(root / "off" / "metrics.jsonl")))
    assert a["monitor"]["basis"].shape[0] == 4 and b["monitor"] is None


class Interrupted(Exception):
    pass


class Stops(Trainer):
    def step(self, step):
        if step == 6:  # after the checkpoint of step 4 and the records of steps 5 and 6
            raise Interrupted
        return super().step(step)


def test_a_resumed_run_writes_the_same_stability_records(runs, tmp_path):
    root, _, _ = runs
    whole = [r for r in read_metrics(root / "on" / "metrics.jsonl") if r.get("kind") == "stability"]
    config = tiny_config(tmp_path / "cut", **MONITORED)
    with pytest.raises(Interrupted):
        Stops(config).run()
    Trainer(config.replace(resume=True)).run()
    cut = [r for r in read_metrics(tmp_path / "cut" / "metrics.jsonl") if r.get("kind") == "stability"]
    assert cut == whole
    # the saved warm start matters: without it the records after the resume differ
    config2 = tiny_config(tmp_path / "cold", **MONITORED)
    with pytest.raises(Interrupted):
        Stops(config2).run()
    trainer = Trainer(config2.replace(resume=True))
    trainer.monitor.load_state_dict(None)
    trainer.run()
    cold = [r for r in read_metrics(tmp_path / "cold" / "metrics.jsonl") if r.get("kind") == "stability"]
    assert cold[:2] == whole[:2] and cold[2]["rho"] != whole[2]["rho"]


def test_probe_is_drawn_from_the_val_split_with_its_own_stream():
    config = tiny_config("unused")
    task = config.build_task()
    x = probe_batch(task, 5, seed=0)
    assert x.shape == (5, task.split_length("val"))
    assert torch.equal(x, probe_batch(task, 5, seed=0)) and not torch.equal(x, probe_batch(task, 5, seed=1))


# -- deqloop plot ------------------------------------------------------------------------------


def test_plot_writes_a_png_for_two_runs_and_rejects_a_folder_without_metrics(runs, tmp_path, capsys):
    root, _, _ = runs
    out = tmp_path / "fig" / "stability.png"
    assert main(["plot", str(root / "on"), str(root / "off"), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    captured = capsys.readouterr()
    assert "off has no stability records" in captured.err and "on has no" not in captured.err
    assert main(["plot", str(root / "on"), str(tmp_path), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no metrics.jsonl" in err and not (tmp_path / "x.png").exists()
