"""StabilityReport serialization and summary, the reachability helpers, plots and the CLI hook."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from test_analysis import distinct_inputs, tiny_model

from deqloop.analysis import StabilityReport, analyze, plot_report
from deqloop.analysis.reachability import agreement, contraction_factor, count_distinct, relative_spread
from deqloop.analysis.report import regimes
from deqloop.checkpoint import CheckpointError, load_checkpoint, load_model
from deqloop.cli import main
from deqloop.cli.analyze import add_analyze_arguments, run_analyze
from deqloop.model import EARLIER_FORMS


@pytest.fixture(scope="module")
def report() -> StabilityReport:
    # A budget of 12 iterations leaves some examples unconverged from "noise": NaNs and
    # partial fractions must survive serialization.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = tiny_model("internal", **EARLIER_FORMS)  # the instance whose convergence the tests pin
        return analyze(model, distinct_inputs(6, (3,)), max_iter=12, rtol=1e-8, eig_k=3, eig_ncv=10,
                       directions=2, noise_scale=3.0, progress=False)
    finally:
        torch.set_num_threads(threads)


def test_report_json_round_trip_is_plain_and_lossless(report):
    text = report.to_json()
    data = json.loads(text)  # strict JSON: no NaN tokens
    assert isinstance(data["spectral_radius"], list) and all(isinstance(v, float) for v in data["spectral_radius"])
    assert isinstance(data["eigenvalues"][0][0], list) and len(data["eigenvalues"][0][0]) == 2  # [re, im]
    assert data["regime"] == report.regime
    back = StabilityReport.from_json(text)
    assert back.to_dict() == report.to_dict()
    assert torch.equal(back.eigenvalues, report.eigenvalues)
    assert torch.equal(back.reachability["noise"].converged, report.reachability["noise"].converged)
    assert back.reachability["embed"].trace.shape == report.reachability["embed"].trace.shape
    with pytest.raises(ValueError, match="unknown StabilityReport field"):
        StabilityReport.from_dict({**data, "colour": 1})


def test_report_fields_have_the_documented_shapes(report):
    B = 6
    for name in ("spectral_radius", "sigma_max", "resolvent_norm", "input_sensitivity", "local_smoothness",
                 "backward_iterations", "backward_residual", "backward_converged"):
        assert getattr(report, name).shape == (B,), name
    assert report.eigenvalues.shape == (B, 3) and report.eigenvalues.dtype == torch.complex128
    assert len(report.regime) == B and set(report.regime) <= {"contractive", "critical", "expansive"}
    # the reference init is the first, "embed"; its 12-iteration budget leaves 5 of 6 unconverged,
    # and each converged example (distinct inputs) is a fixed point of its own
    embed = report.reachability["embed"].converged
    assert report.reference_init == "embed" and int(embed.sum()) == 1
    assert report.converged_fraction == pytest.approx(1 / 6)
    assert report.distinct_fixed_points == 1
    assert report.options["max_iter"] == 12 and report.model["recall"] == "internal"


def test_summary_is_a_table_of_the_headline_numbers(report):
    text = report.summary()
    for needle in ("reachability", "converged", "contraction median", "agreement within 0.01",
                   "distinct", "spectral radius ρ(J)", "σ_max(J)", "‖(I − J)⁻¹‖", "input sensitivity",
                   "backward iterations", "regime (δ = 0.05)"):
        assert needle in text, needle
    rho_line = next(line for line in text.splitlines() if line.startswith("spectral radius"))
    assert f"{float(report.spectral_radius.max()):.4g}" in rho_line


def test_regime_labels():
    rho = torch.tensor([0.5, 0.96, 1.0, 1.04, 1.2, float("nan")], dtype=torch.float64)
    assert regimes(rho, 0.05) == ["contractive", "critical", "critical", "critical", "expansive", "unknown"]


def test_contraction_factor_is_the_geometric_decay_over_each_examples_own_iterations():
    k = torch.arange(10, dtype=torch.float64)[:, None]
    trace = torch.cat([0.3 * 0.5**k, 2.0 * 0.9**k, torch.ones(10, 1)], dim=1)  # (T, B)
    trace[6:, 0] = trace[5, 0]  # example 0 stopped after 6 iterations: its value repeats
    out = contraction_factor(trace, torch.tensor([6, 10, 1]))
    assert out[0].item() == pytest.approx(0.5, rel=1e-12)
    assert out[1].item() == pytest.approx(0.9, rel=1e-12)
    assert math.isnan(out[2].item())  # one iteration: no rate


def test_distinct_agreement_and_spread_helpers():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 4, 5, generator=g, dtype=torch.float64)
    z = centers[torch.tensor([0, 1, 0, 2, 1, 0])] * (1 + 1e-4 * torch.randn(6, 1, 1, generator=g, dtype=torch.float64))
    assert count_distinct(z, 1e-2) == 3
    assert count_distinct(z, 1e-6) == 6
    assert count_distinct(z[:0], 1e-2) == 0
    ok = torch.tensor([True, True, True, False, True, True])
    other = z.clone()
    other[1] *= 1.5  # disagrees
    frac, n = agreement(z, other, ok, torch.ones(6, dtype=torch.bool), 1e-2)
    assert n == 5 and frac == pytest.approx(4 / 5)
    assert math.isnan(agreement(z, other, ~torch.ones(6, dtype=torch.bool), ok, 1e-2)[0])
    assert relative_spread(centers[torch.zeros(4, dtype=torch.long)]) == 0.0
    pts = torch.randn(50, 20, generator=g, dtype=torch.float64)
    p = pts.numpy()
    ref = np.sqrt(((p - p.mean(axis=0)) ** 2).sum(axis=1).mean() / (p**2).sum(axis=1).mean())
    assert relative_spread(pts) == pytest.approx(ref, rel=1e-12)
    assert relative_spread(torch.zeros(3, 4, dtype=torch.float64)) == 0.0


def test_plots_without_a_spectrum_are_the_residual_traces_only(report, tmp_path):
    # The full set is written (and checked) by the CLI test below.
    bare = dataclasses.replace(report, eigenvalues=None, spectral_radius=None, eig_converged=None, regime=None)
    paths = plot_report(bare, tmp_path / "bare", prefix="t-")
    assert [p.name for p in paths] == ["t-residual_traces.png"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _checkpoint(tmp_path):
    model = tiny_model("internal").float()
    path = tmp_path / "run" / "last.pt"
    path.parent.mkdir()
    torch.save({"model_config": model.config.to_dict(), "model": model.state_dict(), "step": 10}, path)
    return model, path


def test_cli_analyzes_a_checkpoint_on_a_task(tmp_path, capsys):
    model, path = _checkpoint(tmp_path)
    parser = argparse.ArgumentParser()
    add_analyze_arguments(parser)
    args = parser.parse_args([str(path), "--task", "prefix_sums", "--n", "3", "--inits", "zeros", "embed",
                              "--measures", "spectrum", "--dtype", "float64", "--max-iter", "60", "--rtol", "1e-8"])
    assert run_analyze(args) == 0
    out = capsys.readouterr().out
    assert "spectral radius ρ(J)" in out and "on 3 examples of grid (32,)" in out
    folder = tmp_path / "run" / "last-analysis"
    data = json.loads((folder / "report.json").read_text())
    assert data["batch"] == 3 and data["reference_init"] == "zeros" and len(data["spectral_radius"]) == 3
    assert data["options"]["max_iter"] == 60
    assert {p.name for p in folder.iterdir()} == {"report.json", "residual_traces.png", "eigenvalues.png", "spectral_radius.png"}
    for png in folder.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    loaded = load_model(path)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


def test_cli_main_and_its_errors(tmp_path, capsys):
    _, path = _checkpoint(tmp_path)
    out = tmp_path / "elsewhere"
    assert main(["analyze", str(path), "--task", "prefix_sums", "--n", "2", "--inits", "zeros", "--measures",
                 "--no-plots", "--out", str(out)]) == 0
    assert [p.name for p in out.iterdir()] == ["report.json"]
    capsys.readouterr()
    bad = tmp_path / "bad.pt"
    torch.save({"model": {}}, bad)
    with pytest.raises(CheckpointError, match="lacks 'model_config'"):
        load_checkpoint(bad)
    assert main(["analyze", str(bad), "--task", "prefix_sums"]) == 2
    assert "lacks 'model_config'" in capsys.readouterr().err
    # --task is checked against the registry (no fixed choices: user tasks may be registered)
    assert main(["analyze", str(path), "--task", "tic_tac_toe"]) == 2
    err = capsys.readouterr().err
    assert "unknown task 'tic_tac_toe'" in err and len(err.strip().splitlines()) == 1
    # a weights-only checkpoint has no task of its own: --task is needed
    assert main(["analyze", str(path), "--n", "2"]) == 2
    assert "holds weights only (no training config, so no task)" in capsys.readouterr().err
