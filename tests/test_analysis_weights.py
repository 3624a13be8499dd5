"""The paper's weight diagnostics against numpy on a tiny model's named weights, in
``weight_diagnostics``, the stability monitor's record and ``analyze``'s report."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from deqloop.analysis import StabilityReport, WEIGHT_KEYS, analyze, weight_diagnostics
from deqloop.model import LoopedDEQ
from deqloop.train.monitor import StabilityMonitor


def tiny_model(recall: str, seed: int = 0, width: int = 8, **kwargs) -> LoopedDEQ:
    torch.manual_seed(seed)
    return LoopedDEQ(vocab_size=5, num_classes=2, grid=(3,), width=width, heads=2, recall=recall, **kwargs)


def np_(w: torch.Tensor) -> np.ndarray:
    return w.detach().double().numpy()


def norm2(w: np.ndarray) -> float:
    return float(np.linalg.svd(w, compute_uv=False)[0])


def expected_injection(w_x: torch.Tensor, w_h: torch.Tensor) -> dict[str, float]:
    wx, wh = np_(w_x), np_(w_h)
    s = np.linalg.svd(wx, compute_uv=False)
    out = {
        "injection_spectral_radius": float(np.abs(np.linalg.eigvals(wx)).max()),
        "injection_norm": float(s[0]),
        "injection_norm_ratio": float(s[0]) / norm2(wh),
        "injection_condition": float(s[0] / s[-1]),
    }
    if len(s) >= 11:  # the authors' code's "condition": σ₁ over the 11th singular value
        out["injection_condition_11"] = float(s[0] / s[10])
    return out


def expected_block(model: LoopedDEQ) -> dict[str, float]:
    D = model.arch.width
    qkv = np_(model.block.attn.qkv.weight)  # rows: queries, keys, values
    return {
        "qk_norm_product": norm2(qkv[:D]) * norm2(qkv[D:2 * D]),
        "attn_out_norm": norm2(np_(model.block.attn.proj.weight)),
        "mlp_norm_product": norm2(np_(model.block.mlp.fc.weight)) * norm2(np_(model.block.mlp.proj.weight)),
    }


def check(got: dict[str, float], want: dict[str, float]) -> None:
    assert set(got) == set(want)
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=1e-10), k


def test_without_recall_only_the_block_keys():
    model = tiny_model("none")
    got = weight_diagnostics(model)
    check(got, expected_block(model))
    assert list(got) == [k for k in WEIGHT_KEYS if k in got]


@pytest.mark.parametrize("width", [8, 12])
def test_external_recall_against_numpy(width):
    model = tiny_model("external", width=width)
    inj = model.block.inject
    want = {**expected_injection(inj.w_z.weight, inj.w_e.weight), **expected_block(model)}
    got = weight_diagnostics(model)
    check(got, want)
    assert list(got) == [k for k in WEIGHT_KEYS if width >= 11 or k != "injection_condition_11"]


def test_the_shared_internal_pair_is_reported_as_is():
    model = tiny_model("internal")  # the paper's internal recall: one pair for both sublayers
    inj = model.block.inject
    assert model.block.attn_res.inject is None and model.block.mlp_res.inject is None
    check(weight_diagnostics(model), {**expected_injection(inj.w_z.weight, inj.w_e.weight), **expected_block(model)})


def test_per_sublayer_pairs_are_each_reported_and_the_bare_key_is_the_largest():
    model = tiny_model("internal", width=12, recall_maps="per_sublayer")
    pairs = {"attn": model.block.attn_res.inject, "mlp": model.block.mlp_res.inject}
    per = {where: expected_injection(m.w_z.weight, m.w_e.weight) for where, m in pairs.items()}
    want = expected_block(model)
    for k in per["attn"]:
        want[k] = max(per["attn"][k], per["mlp"][k])
        for where in pairs:
            want[f"{k}/{where}"] = per[where][k]
    check(weight_diagnostics(model), want)


def test_known_matrices_by_hand():
    """A W_x with eigenvalues 2 and 0.5 but σ₁ larger than ρ (non-normal), a singular W_x."""
    model = tiny_model("external")
    D = model.arch.width
    with torch.no_grad():
        w = torch.zeros(D, D)
        w[0, 0], w[1, 1], w[0, 1] = 2.0, 0.5, 3.0
        w[2:, 2:] = torch.eye(D - 2)
        model.block.inject.w_z.weight.copy_(w)
        model.block.inject.w_e.weight.copy_(0.25 * torch.eye(D))
    got = weight_diagnostics(model)
    # ρ = 2; the 2×2 corner [[2, 3], [0, .5]] has σ² the roots of s² − 13.25 s + 1 (det 1, ‖·‖_F² 13.25)
    s1 = math.sqrt((13.25 + math.sqrt(13.25**2 - 4)) / 2)
    s2 = 1 / s1
    assert got["injection_spectral_radius"] == pytest.approx(2.0)
    assert got["injection_norm"] == pytest.approx(s1)
    assert got["injection_norm_ratio"] == pytest.approx(s1 / 0.25)
    assert got["injection_condition"] == pytest.approx(s1 / s2)
    with torch.no_grad():
        model.block.inject.w_z.weight[1, 1] = 0.0
        model.block.inject.w_z.weight[0, 1] = 0.0
    assert weight_diagnostics(model)["injection_condition"] == math.inf


def test_the_authors_condition_divides_by_the_eleventh_singular_value():
    model = tiny_model("external", width=12)
    with torch.no_grad():  # singular values 12, 11, ..., 1 (a permuted diagonal: eigenvalues ±)
        w = torch.diag(torch.arange(12.0, 0.0, -1.0))[torch.randperm(12, generator=torch.Generator().manual_seed(0))]
        model.block.inject.w_z.weight.copy_(w)
    got = weight_diagnostics(model)
    assert got["injection_condition"] == pytest.approx(12.0) and got["injection_condition_11"] == pytest.approx(6.0)
    assert got["injection_norm"] == pytest.approx(12.0)


def test_the_monitor_records_them():
    model = tiny_model("external").double()
    x = torch.randint(0, 5, (2, 3), generator=torch.Generator().manual_seed(1))
    record = StabilityMonitor(model, x, seed=0, eig_matvecs=3, max_iter=5).measure(3)
    want = weight_diagnostics(model)
    assert {k: record[k] for k in want} == want


def test_analyze_reports_them_and_they_survive_json():
    model = tiny_model("internal")
    x = torch.randint(0, 5, (2, 3), generator=torch.Generator().manual_seed(1))
    report = analyze(model, x, inits=("embed",), measures=(), max_iter=5, progress=False)
    assert report.weights == weight_diagnostics(model)
    back = StabilityReport.from_json(report.to_json())
    assert back.weights == pytest.approx(report.weights)
    assert "ρ(W_x)" in report.summary()


def test_untied_blocks_are_read_at_the_first_block_as_the_paper_does():
    model = tiny_model("none", blocks=3)  # the paper's "fixed" baseline, with 3 blocks instead of 15
    first = model.block[0]
    assert first.attn.qkv.weight is not model.block[1].attn.qkv.weight
    D = model.arch.width
    qkv = np_(first.attn.qkv.weight)
    want = {"qk_norm_product": norm2(qkv[:D]) * norm2(qkv[D:2 * D]), "attn_out_norm": norm2(np_(first.attn.proj.weight)),
            "mlp_norm_product": norm2(np_(first.mlp.fc.weight)) * norm2(np_(first.mlp.proj.weight))}
    check(weight_diagnostics(model), want)


def test_the_gru_residual_reports_the_same_keys():
    model = tiny_model("internal", residual="gru", norm="peri")
    inj = model.block.inject
    check(weight_diagnostics(model), {**expected_injection(inj.w_z.weight, inj.w_e.weight), **expected_block(model)})


def test_a_zero_input_map_and_non_finite_weights():
    model = tiny_model("external")
    with torch.no_grad():
        model.block.inject.w_e.weight.zero_()
    assert weight_diagnostics(model)["injection_norm_ratio"] == math.inf
    with torch.no_grad():
        model.block.inject.w_z.weight[0, 0] = float("nan")
        model.block.attn.proj.weight[1, 1] = float("inf")
    got = weight_diagnostics(model)
    assert all(math.isnan(got[k]) for k in ("injection_spectral_radius", "injection_norm", "injection_norm_ratio",
                                            "injection_condition", "attn_out_norm"))
    assert math.isfinite(got["qk_norm_product"]) and math.isfinite(got["mlp_norm_product"])


@pytest.mark.parametrize("width", [10, 11])
def test_the_authors_condition_needs_eleven_singular_values(width):
    from deqloop.analysis.weights import _injection  # RoPE keeps a model's width even: the pair alone

    w_x = torch.randn(width, width, generator=torch.Generator().manual_seed(width), dtype=torch.float64)
    w_h = torch.eye(width, dtype=torch.float64)
    got = _injection(w_x, w_h)
    check(got, expected_injection(w_x, w_h))
    assert ("injection_condition_11" in got) == (width == 11)


def test_a_module_without_a_looped_block_is_refused():
    class NotLooped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.block = torch.nn.Linear(2, 2)  # a block, but not one with injection weights

    with pytest.raises(TypeError, match="NotLooped has no looped block"):
        weight_diagnostics(NotLooped())
    with pytest.raises(TypeError, match="has no looped block"):
        weight_diagnostics(torch.nn.Linear(2, 2))
