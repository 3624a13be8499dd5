"""The code paths a GPU run takes, on a fake ``cuda:0`` (tests/fake_cuda.py): a tensor made on the
CPU and mixed with a device tensor, a CPU generator given to a CUDA draw, or ``.numpy()`` of a
device tensor fails here as it would on a GPU."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from deqloop import LoopedDEQ
from deqloop.analysis import analyze
from deqloop.errors import ConfigError
from deqloop.analysis.krylov import krylov_schur
from deqloop.eval.curves import adaptive_accuracy, iteration_sweep
from deqloop.tasks import get_task
from deqloop.tasks.sudoku_solver import is_valid_solution
from deqloop.train import TrainConfig, Trainer
from fake_cuda import CUDA, OnDevice, fake_cuda


def test_the_fake_device_enforces_cudas_rules_and_counts_host_reads():
    with fake_cuda() as gpu:
        d = torch.ones(3, device=CUDA)
        assert d.device == CUDA and isinstance(d, OnDevice)
        with pytest.raises(RuntimeError, match="same device"):
            torch.zeros(3) + d
        with pytest.raises(RuntimeError, match="generator"):
            torch.randn(3, device=CUDA, generator=torch.Generator().manual_seed(0))
        with pytest.raises(TypeError, match="numpy"):
            d.numpy()
        assert (torch.tensor(2.0) * d).device == CUDA  # a 0-dim host tensor is a legal operand
        assert gpu.reads == 0 and gpu.copies == 0
        assert torch.zeros(3).to(CUDA).device == CUDA and d.cpu().device.type == "cpu"
        assert gpu.reads == 1 and gpu.copies == 1
        assert float(d.sum()) == 3.0 and bool(d.all()) and d.tolist() == [1.0, 1.0, 1.0]
        assert gpu.reads == 4
        model = torch.nn.Linear(3, 2).to(CUDA)
        assert model.weight.device == CUDA and isinstance(model.weight, torch.nn.Parameter)
        model(d).sum().backward()
        assert model.weight.grad.device == CUDA
    assert not torch.cuda.is_available()  # restored


def test_sudoku_validity_runs_on_the_device():
    solved = torch.tensor([[(3 * (r % 3) + r // 3 + c) % 9 + 1 for c in range(9)] for r in range(9)])
    broken = solved.clone()
    broken[0, :2] = broken[0, :2].flip(0)
    with fake_cuda():
        ok = is_valid_solution(torch.stack([solved, broken]).to(CUDA))
        assert ok.device == CUDA
        assert ok.cpu().tolist() == [True, False]


def test_krylov_schur_draws_a_fresh_direction_on_the_device_after_a_breakdown():
    g = torch.Generator().manual_seed(2)
    A = torch.randn(2, 5, 5, generator=g, dtype=torch.float64)
    A[1] = 0.0  # the Krylov space breaks down at once: a random direction replaces it
    v0 = torch.randn(2, 5, generator=g, dtype=torch.float64)
    on_cpu = krylov_schur(lambda v: torch.bmm(A, v.unsqueeze(2)).squeeze(2), v0, nev=1, ncv=5, tol=1e-12,
                          maxiter=5, generator=torch.Generator().manual_seed(0))
    with fake_cuda():
        Ad = A.to(CUDA)
        est = krylov_schur(lambda v: torch.bmm(Ad, v.unsqueeze(2)).squeeze(2), v0.to(CUDA), nev=1, ncv=5,
                           tol=1e-12, maxiter=5, generator=torch.Generator().manual_seed(0))
    assert est.radius.tolist() == pytest.approx(on_cpu.radius.tolist(), rel=1e-12)
    assert est.radius[1].item() == 0.0


# -- a GPU run's paths, end to end --------------------------------------------------------------

TASKS = {
    "prefix_sums": dict(task_options=dict(length=6, min_length=3, hard_length=12), attention="local", window=3),
    "sudoku": dict(task_options=dict(blanks=(4, 8), hard_blanks=(9, 12))),
    "chess": dict(task_options=dict(train_pieces=(4, 5), hard_pieces=(5, 6))),
}
OBJECTIVES = {
    "progressive": dict(loss="progressive", max_iter=4),
    "implicit": dict(loss="equilibrium", backward="implicit", solver="anderson", max_iter=5, jac_reg=0.1,
                     fp_states=2, train_init="mixed"),
    "phantom": dict(loss="equilibrium", backward="phantom", solver="broyden", max_iter=5),
}


def run_config(out, task: str, objective: str, **overrides) -> TrainConfig:
    values = dict(task=task, width=16, heads=2, mlp_ratio=2.0, steps=3, warmup_steps=1, batch_size=4, log_every=1,
                  checkpoint_every=2, eval_size=4, eval_iters=(2, 4), threads=1, progress=False, out=str(out))
    return TrainConfig.from_flat(**{**values, **TASKS[task], **OBJECTIVES[objective], **overrides})


@pytest.mark.parametrize(("task", "objective"), [("prefix_sums", "progressive"), ("prefix_sums", "implicit"),
                                                 ("sudoku", "phantom"), ("chess", "progressive")])
def test_training_evaluation_and_resume_on_the_device(tmp_path, task, objective):
    with fake_cuda() as gpu:
        trainer = Trainer(run_config(tmp_path, task, objective, device="cuda:0", stability_every=3,
                                     stability_size=4))
        assert trainer.device == CUDA and trainer.model.embedding.weight.device == CUDA
        result = trainer.run()
        assert math.isfinite(result.last_metrics["loss"]) and result.step == 3
        assert set(result.eval_metrics) >= {"val_accuracy", "hard_accuracy"}
        assert gpu.reads > 0  # the fake device saw the run
        resumed = Trainer(run_config(tmp_path, task, objective, device="cuda:0", resume=True, stability_every=3,
                                     stability_size=4))
        assert resumed.step_count == 3 and resumed.model.embedding.weight.device == CUDA
        for a, b in zip(resumed.model.parameters(), trainer.model.parameters()):
            assert torch.equal(a.cpu(), b.cpu())
        assert math.isfinite(resumed.step(3)["loss"])


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_training_steps_under_bf16_autocast(tmp_path, objective):
    trainer = Trainer(run_config(tmp_path, "prefix_sums", objective, amp="bf16"))
    assert trainer.amp is torch.bfloat16
    for step in range(2):
        metrics = trainer.step(step)
        assert not metrics.get("skipped") and math.isfinite(metrics["loss"])


BACKWARDS = ("implicit", "phantom", "unrolled", "truncated", "neumann")


def model_gradients(device: torch.device, solver: str, backward: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
    torch.manual_seed(0)
    model = LoopedDEQ(vocab_size=4, num_classes=2, grid=(6,), width=16, heads=2, solver=solver, backward=backward,
                      max_iter=6, rtol=1e-3, attention="local", window=3).to(device)
    x = torch.randint(0, 4, (5, 6), generator=torch.Generator().manual_seed(1)).to(device)
    out = model(x)
    out.logits.float().square().mean().backward()
    return out.logits.detach().cpu(), [p.grad.detach().cpu() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("solver", ("picard", "anderson", "broyden"))
@pytest.mark.parametrize("backward", BACKWARDS)
def test_every_solver_and_backward_mode_on_the_device(solver, backward):
    logits, grads = model_gradients(torch.device("cpu"), solver, backward)
    with fake_cuda() as gpu:
        logits_d, grads_d = model_gradients(CUDA, solver, backward)
    assert gpu.reads > 0 and len(grads_d) == len(grads) > 0
    # the device takes the loop's branch-free path: the same arithmetic up to the order of a few sums
    torch.testing.assert_close(logits_d, logits, rtol=1e-4, atol=1e-5)
    for g_d, g in zip(grads_d, grads):
        torch.testing.assert_close(g_d, g, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("task", TASKS)
def test_every_tasks_metrics_on_the_device(task):
    t = get_task(task, **TASKS[task]["task_options"])
    x, y = t.make("val", 6, seed=3)
    logits = torch.randn(*y.shape, t.num_classes, generator=torch.Generator().manual_seed(0))
    logits[:3] = 5 * F.one_hot(y[:3], t.num_classes)  # some right answers
    metrics = lambda x, y, out: (t.correct(out, y, x), t.cell_accuracy(out, y, x), t.loss_mask(x, y),  # noqa: E731
                                 t.propagation_depth(x))
    on_cpu = metrics(x, y, logits)
    with fake_cuda():
        on_device = metrics(x.to(CUDA), y.to(CUDA), logits.to(CUDA))
        for value in on_device[:3]:
            assert value is None or value.device == CUDA
        on_device = [v.cpu() if isinstance(v, torch.Tensor) else v for v in on_device]
    assert on_cpu[0][:3].all()
    for a, b in zip(on_device, on_cpu):
        assert torch.equal(a, b) if isinstance(b, torch.Tensor) else a == b


def test_evaluation_on_the_device():
    t = get_task("prefix_sums", **TASKS["prefix_sums"]["task_options"])
    x, y = t.make("hard", 6, seed=1)

    def evaluate(device):
        torch.manual_seed(0)
        model = LoopedDEQ(vocab_size=t.vocab_size, num_classes=t.num_classes, grid=t.grid, width=16, heads=2,
                          max_iter=8).to(device)
        sweep = iteration_sweep(model, x, y, t.correct, [1, 3, 8], rtol=1e-2, cells=t.cell_accuracy, device=device)
        adaptive = adaptive_accuracy(model, x, y, t.correct, max_iter=8, device=device)
        return sweep, adaptive

    sweep, adaptive = evaluate(torch.device("cpu"))
    with fake_cuda():
        sweep_d, adaptive_d = evaluate(CUDA)
    assert sweep_d.accuracy == sweep.accuracy and sweep_d.cell_accuracy == pytest.approx(sweep.cell_accuracy)
    assert torch.equal(sweep_d.settled_at, sweep.settled_at)
    assert adaptive_d.accuracy == adaptive.accuracy
    assert torch.equal(adaptive_d.iterations.cpu(), adaptive.iterations)


def test_analyze_on_the_device():
    def report(device):
        torch.manual_seed(0)
        model = LoopedDEQ(vocab_size=5, num_classes=2, grid=(3,), width=8, heads=2, recall="internal").double()
        with torch.no_grad():
            model.block.mlp.proj.bias.normal_(0, 1.0)  # a contraction (as tests/test_analysis.py)
        x = torch.randint(0, 5, (3, 3), generator=torch.Generator().manual_seed(0))
        return analyze(model.to(device), x.to(device), progress=False, max_iter=60, rtol=1e-8, directions=2)

    on_cpu = report(torch.device("cpu"))
    with fake_cuda():
        on_device = report(CUDA)
    assert on_device.spectral_radius == pytest.approx(on_cpu.spectral_radius, rel=1e-6)
    assert on_device.input_sensitivity == pytest.approx(on_cpu.input_sensitivity, rel=1e-6)
    assert on_device.distinct_fixed_points == on_cpu.distinct_fixed_points


@pytest.mark.slow  # about 30 s
def test_a_sweep_run_trains_evaluates_and_analyses_on_the_device(tmp_path, monkeypatch):
    from experiments import sweep
    from experiments.presets import get_preset

    devices = []

    def analyze_where(model, x, *args, **kwargs):
        devices.append((model.embedding.weight.device, x.device))
        return analyze(model, x, *args, **kwargs)

    monkeypatch.setattr("deqloop.analysis.analyze", analyze_where)

    tiny = get_preset("tiny").with_(regimes=("progressive",))
    spec = tiny.runs(recall=("internal",))[0]
    with fake_cuda() as gpu:
        result = sweep.run_one(tiny, spec, tmp_path / "runs", data={}, results=None, device="cuda:0")
    assert gpu.reads > 0
    assert devices and set(devices) == {(CUDA, CUDA)}  # not copied to the CPU (45 min a run at 512 tokens)
    assert set(result["analysis"]) == {"hard", "val"}


@pytest.mark.parametrize("method", ("picard", "anderson", "broyden"))
def test_a_solve_on_the_device_reads_the_host_once_per_check_and_copies_nothing(method):
    from deqloop.solvers import BatchedMap, solve

    torch.manual_seed(0)
    model = LoopedDEQ(vocab_size=5, num_classes=3, grid=(6,), width=16, heads=2, recall="internal")
    with torch.no_grad():
        model.block.mlp.proj.bias.normal_(0, 1.0)  # a contraction: examples converge at different counts
    x = torch.randint(0, 5, (16, 6), generator=torch.Generator().manual_seed(0))
    with fake_cuda() as gpu, torch.no_grad():
        model.to(CUDA)
        e = model.embed(x.to(CUDA))
        z0 = model.initial_state(e)
        reads, copies = gpu.reads, gpu.copies
        sol = solve(BatchedMap(model.step, e), z0, method=method, rtol=1e-4, max_iter=40)
        reads, copies = gpu.reads - reads, gpu.copies - copies
        iterations = sol.iterations.cpu()
    assert sol.converged.cpu().all() and iterations.min() < iterations.max()  # rows were dropped on the way
    # one read for z0's finiteness, one per check (every 8 iterations) until none is left; dropping
    # converged rows reads nothing, and the status codes are no device tensors made from numbers
    assert reads == 1 + math.ceil(int(iterations.max()) / 8)
    assert copies == 0


def test_the_jacobian_penalty_draws_its_probe_on_the_device():
    from deqloop.train.objectives import Equilibrium

    torch.manual_seed(0)
    model = LoopedDEQ(vocab_size=5, num_classes=3, grid=(6,), width=16, heads=2)
    x = torch.randint(0, 5, (4, 6), generator=torch.Generator().manual_seed(0))
    z = torch.randn(4, 6, 16, generator=torch.Generator().manual_seed(1))
    on_cpu = Equilibrium(model, seed=3, jac_reg=0.1).jacobian_penalty(x, z, step=7).detach()
    with fake_cuda() as gpu:
        model.to(CUDA)
        xd, zd = x.to(CUDA), z.to(CUDA)
        copies = gpu.copies
        on_device = Equilibrium(model, seed=3, jac_reg=0.1).jacobian_penalty(xd, zd, step=7)
        assert gpu.copies == copies  # ε is drawn there, not copied from the host every step
        assert on_device.device == CUDA
        on_device = on_device.detach().cpu()
    # the fake device's generator is the CPU's, so the numbers agree (on a GPU: another draw)
    torch.testing.assert_close(on_device, on_cpu)


def test_chess_evaluation_reads_the_targets_once_per_batch():
    pytest.importorskip("chess")
    t = get_task("chess", **TASKS["chess"]["task_options"])
    x, y = t.make("val", 6, seed=3)
    logits = torch.randn(*y.shape, t.num_classes, generator=torch.Generator().manual_seed(0))
    with fake_cuda() as gpu:
        yd, out = y.to(CUDA), logits.to(CUDA)
        first = t.correct(out, yd)
        reads = gpu.reads
        again = [t.correct(out, yd) for _ in range(5)]  # as at every iteration count of an evaluation
        assert gpu.reads == reads  # yd is not read again
        assert all(torch.equal(a.cpu(), first.cpu()) for a in again)
        yd[0] = 0  # changed targets are checked again
        with pytest.raises(ConfigError, match="exactly two squares"):
            t.correct(out, yd)
