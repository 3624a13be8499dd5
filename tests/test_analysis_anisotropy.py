"""The paper's anisotropy toy (deqloop.analysis.anisotropy): the stable sets, the nearest stable
point and the two measures at points worked out by hand, the nearest point against a dense search
of the boundary, the table's statistics against numpy, and the figure."""

from __future__ import annotations

import math

import numpy as np
import pytest

from deqloop.analysis.anisotropy import (
    EPS,
    SIGMAS,
    anisotropy_table,
    balance,
    draws,
    log_ratio,
    plot_anisotropy,
    project,
    stable,
)
from deqloop.errors import ConfigError

R5 = math.sqrt(5)


def test_stable_sets_at_chosen_points():
    # internal |1 + xy| ≤ 1: (1, −1) → 0, (1, 1) → 2, (2, −1) → 1 (the edge), (3, −1) → 2, (0, 7) → 1
    x, y = np.array([1, 1, 2, 3, 0]), np.array([-1, 1, -1, -1, 7])
    assert stable(x, y, "internal").tolist() == [True, False, True, False, True]
    # external |(1 + y) x| ≤ 1: (1, 0) → 1, (2, 0) → 2, (2, −0.5) → 1, (5, −1) → 0, (0.5, 2) → 1.5
    x, y = np.array([1, 2, 2, 5, 0.5]), np.array([0, 0, -0.5, -1, 2])
    assert stable(x, y, "external").tolist() == [True, False, True, True, False]
    with pytest.raises(ConfigError, match="recall"):
        stable(1.0, 1.0, "none")


def test_nearest_internal_points_by_hand():
    pts = np.array([[0.5, -0.5], [3.0, 2.0], [-1.0, -4.0], [2.0, -2.0]])
    near, dist = project(pts, "internal")
    # inside: itself; xy > 0: the nearer axis; (2, −2) beyond xy = −2: (√2, −√2) by symmetry, since
    # x⁴ − 2x³ + 4x − 4 = (x² − 2)(x² − 2x + 2)
    want = np.array([[0.5, -0.5], [3.0, 0.0], [0.0, -4.0], [math.sqrt(2), -math.sqrt(2)]])
    np.testing.assert_allclose(near, want, atol=1e-12)
    np.testing.assert_allclose(dist, [0.0, 2.0, 1.0, 2 * math.sqrt(2) - 2], atol=1e-12)


def test_nearest_external_point_off_the_vertex_by_hand():
    """(−3, 2): u = 1 + y = 3, xu = −9 < −1. On xu = −1 the vertex (−1, 1) is at √8, but the quartic
    x⁴ + 3x³ − 3x − 1 = (x² − 1)(x² + 3x + 1) has the nearer roots (−3 ± √5)/2, at √7."""
    near, dist = project(np.array([[-3.0, 2.0]]), "external")
    assert dist[0] == pytest.approx(math.sqrt(7), rel=1e-12)
    options = [((-3 - R5) / 2, (1 - R5) / 2), ((-3 + R5) / 2, (1 + R5) / 2)]
    assert any(np.allclose(near[0], o, atol=1e-10) for o in options)
    # (2, 1): u = 2, on the diagonal: the vertex (1, 1) of xu = 1, i.e. y = 0 (a triple root: 1e-5)
    near, dist = project(np.array([[2.0, 1.0], [5.0, -1.0]]), "external")
    np.testing.assert_allclose(near, [[1.0, 0.0], [5.0, -1.0]], atol=1e-5)
    np.testing.assert_allclose(dist, [math.sqrt(2), 0.0], atol=1e-10)


@pytest.mark.parametrize("recall", ["internal", "external"])
def test_nearest_point_is_the_dense_searchs_and_stable(recall):
    pts = draws(30, 2.0, seed=3)
    near, dist = project(pts, recall)
    x, y = near[:, 0], near[:, 1]
    factor = np.abs(1 + x * y) if recall == "internal" else np.abs((1 + y) * x)
    assert (factor <= 1 + 1e-9).all()  # stable, up to rounding on the edge
    # the boundary, densely: both hyperbola branches and, for internal, the axes
    t = np.concatenate([-np.geomspace(1e-3, 60, 100_000), np.geomspace(1e-3, 60, 100_000)])
    if recall == "internal":
        curve = np.concatenate([np.stack([t, -2 / t], 1), np.stack([t, 0 * t], 1), np.stack([0 * t, t], 1)])
    else:
        curve = np.concatenate([np.stack([t, 1 / t - 1], 1), np.stack([t, -1 / t - 1], 1)])
    for p, n, d in zip(pts, near, dist):
        if stable(p[0], p[1], recall):
            assert d == 0 and (n == p).all()
            continue
        brute = np.sqrt(((curve - p) ** 2).sum(1)).min()
        assert d <= brute + 1e-9 and d == pytest.approx(brute, abs=2e-3)
        assert d == pytest.approx(np.linalg.norm(n - p), rel=1e-12)


def test_the_two_measures_by_hand():
    pts = np.array([[2.0, -0.5], [-3.0, 3.0], [1.0, 0.0]])
    np.testing.assert_allclose(log_ratio(pts), [math.log((2 + EPS) / (0.5 + EPS)), 0.0, math.log((1 + EPS) / EPS)],
                               rtol=1e-12)
    np.testing.assert_allclose(balance(pts), [(0.5 + EPS) / (2 + EPS), 1.0, EPS / (1 + EPS)], rtol=1e-12)
    assert log_ratio(pts[:1], eps=0.0)[0] == pytest.approx(math.log(4)) and balance(pts[:1], eps=0.0)[0] == 0.25
    # the default ε is 1e-8: a gain of exactly 0 against 1 reads log(1e8) ≈ 18.42, a balance of 1e-8
    assert log_ratio(np.array([[1.0, 0.0]]))[0] == pytest.approx(18.420680744, rel=1e-8)
    assert balance(np.array([[0.0, 1.0]]))[0] == pytest.approx(1e-8, rel=1e-6)


def test_table_statistics_against_numpy():
    assert SIGMAS == (0.1, 0.5, 1.0, 2.0, 4.0)
    rows = anisotropy_table(sigmas=(0.5, 2.0), n=300, seed=1)
    base = np.random.default_rng(1).normal(0.0, 1.0, size=(300, 2))
    for row, sigma in zip(rows, (0.5, 2.0)):
        assert (row.sigma, row.n) == (sigma, 300)
        np.testing.assert_allclose(draws(300, sigma, seed=1), sigma * base, rtol=1e-12)  # the same draws, scaled
        for s in ("internal", "external"):
            near, _ = project(sigma * base, s)
            for measure, got in ((log_ratio(near), row.log_ratio[s]), (balance(near), row.balance[s])):
                want = (measure.mean(), measure.std(ddof=1) / math.sqrt(300), np.median(measure))
                assert got == pytest.approx(want, rel=1e-9)
    # the internal set is reached on an axis more often: its stable points are the more lopsided
    assert all(r.balance["internal"][2] < r.balance["external"][2] for r in rows)


def test_the_figure_is_written(tmp_path):
    rows = anisotropy_table(sigmas=(0.5, 1.0), n=50)
    path = plot_anisotropy(tmp_path / "fig" / "anisotropy.png", rows=rows, shown=10)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20_000
    with pytest.raises(ConfigError):
        plot_anisotropy(tmp_path / "x.png", rows=rows, sigma=0.0)
