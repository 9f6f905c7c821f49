"""Section 4: the 2n + d-weight ReLU network fits any targets on n distinct samples (real sizes)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from rethink_dist.cli import main
from rethink_dist.theory import run_expressivity
from rethink_dist.theory.expressivity import RepeatedSamplesError, count_params, fit


def _check_lemma(net, X, y):
    """The lemma's structure, checked independently of fit: sorted knots interleave the sorted
    projections, and the explicit lower-triangular A solves A w = y."""
    z = (X @ net.a).detach()
    zs, order = torch.sort(z)
    b = net.b.detach()
    assert bool((b[1:] > zs[:-1]).all()) and bool((b < zs).all())
    A = torch.relu(zs[:, None] - b[None, :])
    assert torch.equal(A, torch.tril(A))
    assert math.isclose(float(torch.diagonal(A).min()), net.report.min_eigenvalue, rel_tol=1e-9)
    return float((A @ net.w.detach() - y[order]).abs().max())


@pytest.fixture(scope="module")
def samples_3000():
    g = torch.Generator().manual_seed(1)
    return torch.randn(3000, 3072, generator=g, dtype=torch.float64), g


@pytest.mark.parametrize("targets", ["gaussian", "sign"])
def test_fits_3000_samples_in_3072_dims(samples_3000, targets):
    X, g = samples_3000
    n, d = X.shape
    y = torch.randn(n, generator=g, dtype=torch.float64)
    if targets == "sign":
        y = torch.sign(y)
    net = fit(X, y)
    r = net.report
    print(f"\n[expressivity] n={n} d={d} {targets}: {r}")
    assert count_params(net) == r.params == 2 * n + d
    assert r.a_method == "spaced" and abs(r.min_gap - 1.0) < 1e-6  # evenly spaced projections
    scale = float(y.abs().max())
    assert r.max_abs_error <= 1e-5 * scale
    assert float((net(X).detach() - y).abs().max()) <= 1e-5 * scale
    assert float((net.forward_dense(X) - y).abs().max()) <= 1e-5 * scale  # the literal sum of ReLUs
    assert _check_lemma(net, X, y) <= 1e-5 * scale


def test_100k_samples_in_3072_dims_reports_error_and_conditioning():
    g = torch.Generator().manual_seed(2)
    n, d = 100_000, 3072
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randn(n, generator=g, dtype=torch.float64)
    net = fit(X, y)
    r = net.report
    print(f"\n[expressivity] n={n} d={d}: built in {r.build_seconds:.1f} s, checked in {r.check_seconds:.1f} s; {r}")
    assert count_params(net) == 2 * n + d
    assert r.a_method == "random" and r.min_gap > r.projection_tolerance > 0
    assert r.min_eigenvalue == pytest.approx(0.75 * r.min_gap, rel=1e-6)
    assert math.isfinite(r.max_abs_weight) and r.max_abs_weight > 1.0 / r.min_gap  # weights ~ dy / gap
    # The docstring predicts ~eps * n^2 * max|y|, about 1e-6 of the scale here.
    assert r.relative_error < 1e-4
    # The literal sum of 100,000 ReLU terms cancels catastrophically (terms up to |w| * R ~ 1e12):
    # its error is eps * R * sum|w|, about 100x the local form's that forward() uses.
    sub = torch.arange(0, n, 997)
    dense_err = float((net.forward_dense(X[sub]) - y[sub]).abs().max())
    print(f"[expressivity] literal relu(z - b) @ w on {len(sub)} samples: max error {dense_err:.2e}")
    assert dense_err < 1e-2 * r.target_scale


def test_one_hot_targets_take_d_plus_n_plus_kn_weights():
    g = torch.Generator().manual_seed(3)
    n, d, k = 400, 20, 10
    X = torch.rand(n, d, generator=g, dtype=torch.float64)
    labels = torch.randint(0, k, (n,), generator=g)
    Y = torch.nn.functional.one_hot(labels, k).double()
    net = fit(X, Y)
    assert count_params(net) == d + n + k * n
    assert net.report.max_abs_error < 1e-6
    assert torch.equal(net(X).argmax(1), labels)
    # the fast forward is the same function as the literal sum, also away from the samples
    Z = torch.randn(300, d, generator=g, dtype=torch.float64)
    fast, dense = net(Z).detach(), net.forward_dense(Z)
    assert float((fast - dense).abs().max()) <= 1e-9 * float(dense.abs().max() + 1)


def test_repeated_samples():
    g = torch.Generator().manual_seed(4)
    X = torch.randn(50, 8, generator=g, dtype=torch.float64)
    X[31] = X[7]
    y = torch.randn(50, generator=g, dtype=torch.float64)
    with pytest.raises(RepeatedSamplesError, match=r"samples 7 and 31 are equal but have different targets"):
        fit(X, y)
    y[31] = y[7]  # the same target: one hidden unit fits both
    net = fit(X, y)
    assert net.report.n_distinct == 49 and count_params(net) == 2 * 49 + 8
    assert net.report.max_abs_error < 1e-9


def test_float32_reports_its_larger_error():
    g = torch.Generator().manual_seed(5)
    X = torch.randn(500, 600, generator=g)
    y = torch.randn(500, generator=g)
    r = fit(X, y).report
    assert r.dtype == "float32" and count_params(fit(X, y)) == 2 * 500 + 600
    assert 1e-9 < r.relative_error < 1e-1  # float32 rounding shows, but the fit holds


def test_cli_writes_json_and_rejects_bad_input(tmp_path, capsys):
    out = tmp_path / "e.json"
    assert main(["expressivity", "--n", "300", "--d", "40", "--targets", "labels", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert {"n", "d", "params", "max_abs_error", "min_eigenvalue", "seconds"} <= set(res)
    assert res["params"] == 2 * 300 + 40 and res["max_abs_error"] < 1e-6 and res["targets"] == "labels as +-1"
    bad = tmp_path / "bad.json"
    assert main(["expressivity", "--n", "300", "--json", str(bad)]) == 2
    assert main(["expressivity", "--n", "30", "--d", "4", "--dtype", "float16", "--json", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["rethink-dist: error: d is required without a dataset (Gaussian samples in d dimensions)",
                   "rethink-dist: error: dtype='float16' is not valid; valid: float32, float64"]
    assert not bad.exists()


def test_digits_labels_one_hot():
    res = run_expressivity({"dataset": "digits", "n": 500, "targets": "labels"})
    assert res["d"] == 64 and res["outputs"] == 10
    assert res["params"] == 64 + res["n_distinct"] * 11
    assert res["max_abs_error"] < 1e-6
    with pytest.raises(ValueError, match="unknown expressivity option"):
        run_expressivity({"n": 3, "d": 2, "width": 5})
