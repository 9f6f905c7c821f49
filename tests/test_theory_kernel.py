"""Section 5: minimum-norm kernel interpolation, checked against numpy and on real digits."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rethink_dist.cli import main
from rethink_dist.config import ConfigError
from rethink_dist.theory import run_kernel
from rethink_dist.theory import kernel as kn


def _np_kernel(A: np.ndarray, B: np.ndarray, kernel: str, gamma: float) -> np.ndarray:
    if kernel == "linear":
        return A @ B.T
    d2 = ((A[:, None, :] - B[None, :, :]) ** 2).sum(-1)
    return np.exp(-gamma * (np.sqrt(d2) if kernel == "laplacian" else d2))


def _problem(n: int, dim: int, k: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    F = rng.normal(size=(n, dim))
    Y = np.eye(k)[rng.integers(0, k, n)]
    return F, Y


@pytest.mark.parametrize(
    "kernel,n,dim,duplicate,solver",
    [
        ("rbf", 60, 5, False, "cholesky_pcg"),  # K positive definite
        ("laplacian", 60, 5, False, "cholesky_pcg"),
        ("linear", 60, 5, False, "svd_pinv"),  # rank 5 < 60: singular by construction
        ("linear", 40, 80, False, "cholesky_pcg"),  # n <= dim: K = F F^T invertible
        ("rbf", 60, 5, True, "cholesky_pcg"),  # two equal samples with equal targets: K singular, Y in its range
    ],
)
def test_solution_equals_numpy_min_norm_lstsq(kernel, n, dim, duplicate, solver):
    F, Y = _problem(n, dim)
    if duplicate:
        F[17], Y[17] = F[3], Y[3]
    gamma = 0.3
    fitted = kn.interpolate(torch.from_numpy(F), torch.from_numpy(Y), kernel=kernel, gamma=gamma, block=7)
    K = _np_kernel(F, F, kernel, gamma)
    alpha = fitted.alpha.numpy()
    assert fitted.solution.solver == solver
    assert fitted.solution.singular == (solver == "svd_pinv")
    if duplicate:
        # K is singular and alpha not unique (any split of one weight between the two copies), the
        # function K alpha and its norm are: those of the system without the copy
        keep = [i for i in range(n) if i != 17]
        alpha_np = np.zeros_like(Y)
        alpha_np[keep] = np.linalg.solve(K[np.ix_(keep, keep)], Y[keep])
        alpha, alpha_np = K @ alpha, K @ alpha_np
    else:
        alpha_np = np.linalg.lstsq(K, Y, rcond=None)[0]  # numpy's minimum-norm least-squares solution
    np.testing.assert_allclose(alpha, alpha_np, rtol=1e-6, atol=1e-8 * np.abs(alpha_np).max())
    if not duplicate:
        np.testing.assert_allclose(fitted.train_pred.numpy(), K @ alpha_np, atol=1e-8)
        assert fitted.norm == pytest.approx(np.sqrt(np.trace(alpha_np.T @ K @ alpha_np)), rel=1e-8)
    else:
        np.testing.assert_allclose(fitted.train_pred.numpy(), Y, atol=1e-8)
        assert fitted.norm == pytest.approx(np.sqrt(np.trace(np.linalg.lstsq(K[np.ix_(keep, keep)], Y[keep], rcond=None)[0].T @ Y[keep])), rel=1e-6)


def test_ridge_and_blocked_gram_match_numpy():
    F, Y = _problem(50, 7)
    K = _np_kernel(F, F, "rbf", 0.2)
    Ft = torch.from_numpy(F)
    lower = kn.gram_lower(Ft, "rbf", 0.2, block=8).numpy()
    np.testing.assert_allclose(np.tril(lower), np.tril(K), atol=1e-13)
    fitted = kn.interpolate(Ft, torch.from_numpy(Y), kernel="rbf", gamma=0.2, ridge=0.5, block=8)
    np.testing.assert_allclose(fitted.alpha.numpy(), np.linalg.solve(K + 0.5 * np.eye(50), Y), rtol=1e-9, atol=1e-12)


def test_digits_rbf_interpolates_and_logs_test_error(capsys):
    res = run_kernel({"dataset": "digits", "kernel": "rbf"})
    print(f"\n[kernel] digits rbf raw: {json.dumps(res)}")
    assert res["n_train"] == 1437 and res["n_test"] == 360
    assert res["solver"] == "cholesky_pcg" and not res["singular"] and res["interpolated"]
    assert res["shift"] == 0.0 and res["iterations"] == 1  # float64: K itself factored, the solve exact
    assert res["train_error"] == 0.0
    assert 0.0 <= res["test_error"] < 0.1  # far better than chance (0.9)
    assert res["max_fit_residual"] < 1e-6


def test_random_labels_are_fitted_too_and_the_norm_grows():
    common = {"dataset": "digits", "kernel": "rbf", "max_train": 600}
    clean = run_kernel(common)
    rand = run_kernel({**common, "corruption": "labels", "level": 1.0})
    print(f"\n[kernel] digits 600, true labels: norm {clean['norm']:.1f} test error {clean['test_error']:.3f}; "
          f"random labels: norm {rand['norm']:.1f} test error {rand['test_error']:.3f}")
    assert clean["train_error"] == rand["train_error"] == 0.0
    assert rand["labels_changed"] > 0.8
    assert rand["norm"] > 2 * clean["norm"]
    assert rand["test_error"] > 0.7


def test_random_conv_features():
    imgs = np.random.default_rng(0).integers(0, 256, size=(20, 8, 8, 3), dtype=np.uint8)
    f1 = kn.random_conv_features(imgs, 16, filter_size=3, pool=2, seed=1)
    f2 = kn.random_conv_features(imgs, 16, filter_size=3, pool=2, seed=1, batch=7)
    f3 = kn.random_conv_features(imgs, 16, filter_size=3, pool=2, seed=2)
    assert f1.shape == (20, 16 * 4) and bool((f1 >= 0).all())
    assert torch.allclose(f1, f2) and not torch.allclose(f1, f3)
    res = run_kernel({"features": "random_conv", "num_filters": 32, "filter_size": 3, "max_train": 500})
    assert res["feature_dim"] == 128 and res["train_error"] == 0.0 and res["test_error"] < 0.2


def test_float32_and_linear_singular_on_digits():
    res = run_kernel({"kernel": "linear", "max_train": 300})
    assert res["singular"] and res["solver"] == "svd_pinv" and res["rank"] <= 64
    assert "n=300 > feature dimension 64" in res["solver_detail"] and not res["interpolated"]
    res32 = run_kernel({"kernel": "rbf", "dtype": "float32", "max_train": 400})
    assert res32["dtype"] == "float32" and res32["train_error"] == 0.0


def test_cli_and_one_line_errors(tmp_path, capsys):
    out = tmp_path / "k.json"
    assert main(["kernel", "--dataset", "digits", "--max-train", "200", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert {"n_train", "n_test", "train_error", "test_error", "norm", "seconds"} <= set(res)
    assert res["n_train"] == 200 and res["train_error"] == 0.0
    capsys.readouterr()
    bad = tmp_path / "bad.json"
    for argv in (["--kernel", "poly"], ["--max-train", "300", "--memory-gb", "0.0001"], ["--level", "0.5"],
                 ["--features", "random_conv", "--filter-size", "9"], ["--tol", "0"], ["--max-iter", "0"]):
        assert main(["kernel", *argv, "--json", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 6 and all(line.startswith("rethink-dist: error: ") for line in err)
    assert "tol must be > 0" in err[4] and "max_iter must be an integer >= 1" in err[5]
    assert "kernel='poly' is not valid; valid: linear, rbf, laplacian" in err[0]
    assert "over the budget" in err[1]
    assert "filter_size=9 is larger than the 8x8 images" in err[3]
    assert not bad.exists()
    with pytest.raises(ConfigError, match="unknown kernel option"):
        run_kernel({"lambda": 1.0})


def test_also_levels_equal_separate_solves():
    """Label corruption changes Y, not K: one factorization answers every level as separate solves do."""
    from rethink_dist.config import ConfigError
    from rethink_dist.theory import run_kernel

    base = {"dataset": "digits", "kernel": "rbf", "max_train": 600, "dtype": "float64"}
    both = run_kernel({**base, "also_levels": [1.0, 0.5]})
    assert [a["level"] for a in both["also_levels"]] == [1.0, 0.5]
    assert both["also_levels"] and run_kernel(base)["also_levels"] == []
    for extra in both["also_levels"]:
        alone = run_kernel({**base, "corruption": "labels", "level": extra["level"]})
        assert extra["train_error"] == alone["train_error"] == 0.0
        assert extra["test_error"] == alone["test_error"]
        assert extra["labels_changed"] == alone["labels_changed"]
        assert abs(extra["norm"] - alone["norm"]) <= 1e-8 * alone["norm"]
    assert both["also_levels"][0]["norm"] > both["norm"]  # random labels need a larger norm
    for bad, needle in (([1.5], "also_levels=\\[1.5\\]"), ([], "also_levels=\\[\\]")):
        with pytest.raises(ConfigError, match=needle):
            run_kernel({**base, "also_levels": bad})
    with pytest.raises(ConfigError, match="pixel corruption changes K"):
        run_kernel({**base, "corruption": "random_pixels", "also_levels": [1.0]})


def test_linear_kernel_beyond_the_dimension_needs_no_room_for_k():
    """With n > D the linear kernel is solved from the SVD of the features, never forming K, so a
    budget too small for K must not refuse it (60,000 Fashion-MNIST images were refused so)."""
    from rethink_dist.config import ConfigError
    from rethink_dist.theory import run_kernel

    k_bytes = 1437 * 1437 * 8
    small = k_bytes / 4 / 2**30  # a quarter of K, ample for the features and the SVD factor
    res = run_kernel({"dataset": "digits", "kernel": "linear", "memory_gb": small})
    assert res["solver"] == "svd_pinv" and res["singular"] and res["rank"] <= 64
    assert res == {**res, **{k: v for k, v in run_kernel({"dataset": "digits", "kernel": "linear"}).items()
                             if k in ("train_error", "test_error", "rank")}}
    with pytest.raises(ConfigError, match="K needs .* over the budget"):  # the RBF kernel does form K
        run_kernel({"dataset": "digits", "kernel": "rbf", "memory_gb": small})


def test_the_gpu_route_of_the_tall_svd_equals_the_plain_one():
    """On CUDA the linear kernel's SVD goes through QR (F = QR, SVD of R): the same U S^2 U^T."""
    F = torch.randn(300, 40, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    U1, S1 = kn.left_singular(F, via_qr=False)
    U2, S2 = kn.left_singular(F, via_qr=True)
    assert torch.allclose(S1, S2, rtol=1e-10)
    assert torch.allclose(U1 @ torch.diag(S1 ** 2) @ U1.T, U2 @ torch.diag(S2 ** 2) @ U2.T, atol=1e-8)
    assert torch.allclose(U2.T @ U2, torch.eye(40, dtype=torch.float64), atol=1e-10)


@pytest.fixture(scope="module")
def fashion():
    from rethink_dist.data import load

    return load("fashion_mnist")


@pytest.mark.parametrize("kernel", ["rbf", "laplacian"])
def test_float32_solver_equals_a_float64_direct_solve_on_fashion_mnist(kernel, fashion):
    """2,000 real Fashion-MNIST images: the float32 solver (shifted float32 Cholesky + conjugate
    gradients with float64 residuals) against a float64 Cholesky solve of the unshifted K."""
    ds = fashion
    n, n_test = 2000, 1000
    labels = torch.from_numpy(ds.train_y[:n])
    Y = torch.nn.functional.one_hot(labels, 10).double()
    F32, F64 = (kn.raw_features(ds.train_x[:n], dt) for dt in (torch.float32, torch.float64))
    T64 = kn.raw_features(ds.test_x[:n_test], torch.float64)
    gamma = kn.default_gamma(F64, kernel)
    fit = kn.interpolate(F32, Y, kernel=kernel, gamma=gamma)
    sol = fit.solution
    assert sol.solver == "cholesky_pcg" and sol.converged and sol.shift > 0  # K + shift I factored in float32
    assert sol.stored_max_residual <= kn.TOL
    K = kn.gram_lower(F64, kernel, gamma, 1024)
    K = K.tril() + K.tril(-1).T
    alpha64 = torch.cholesky_solve(Y, torch.linalg.cholesky(K))
    assert float((K @ alpha64 - Y).abs().max()) < 1e-6  # float64 interpolates this K directly
    # the residual recomputed from the features (float64) is within the stated bound, and far below
    # the 0.5 that classification needs: every training image is predicted as its label
    res = float((fit.train_pred - Y).abs().max())
    bound = kn.residual_bound(fit.alpha, kn.gram_entry_error_bound(F32, kernel, gamma), kn.TOL)
    assert res <= bound and res < 0.05
    assert torch.equal(fit.train_pred.argmax(1), labels)
    # the same function on the test images: same predictions (a flip only where float64's own top two
    # scores are within the difference of the two functions)
    p32 = kn.predict(T64, F64, fit.alpha, kernel, gamma, 1024)
    p64 = kn.predict(T64, F64, alpha64, kernel, gamma, 1024)
    diff = float((p32 - p64).abs().max())
    assert diff < 0.05
    top2 = p64.topk(2, dim=1).values
    flips = p32.argmax(1) != p64.argmax(1)
    assert bool(((top2[:, 0] - top2[:, 1])[flips] <= 2 * diff).all()) and int(flips.sum()) <= 2
    print(f"\n[kernel] fashion-mnist {n} {kernel}: shift {sol.shift:.2g}, {sol.iterations} CG iterations, "
          f"residual {res:.2g} (bound {bound:.2g}), test functions differ by {diff:.2g}, {int(flips.sum())} flips")


def test_a_system_float32_cannot_interpolate_is_reported_not_fitted(tmp_path, capsys):
    """digits with a wide RBF (gamma = 0.003): float64 interpolates it, float32 cannot (K's small
    eigenvalues are below float32's rounding of K): one line, exit 3, the JSON says why."""
    out = tmp_path / "k.json"
    assert main(["kernel", "--dataset", "digits", "--gamma", "0.003", "--dtype", "float64", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["interpolated"]
    capsys.readouterr()
    assert main(["kernel", "--dataset", "digits", "--gamma", "0.003", "--dtype", "float32", "--json", str(out)]) == 3
    cap = capsys.readouterr()
    err = cap.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rethink-dist: not interpolated: cholesky_pcg left max |K alpha - Y|")
    assert cap.out == ""
    res = json.loads(out.read_text())
    assert not res["interpolated"] and res["solver"] == "cholesky_pcg" and res["train_error"] > 0.1
    assert res["stored_max_residual"] > res["tolerance"] and "> tolerance" in res["solver_detail"]
    assert res["max_fit_residual"] >= 0.5 and res["iterations"] < 200  # gave up when CG stalled


def test_equal_images_with_different_labels_cannot_be_interpolated():
    """No function takes two values at one image: the solver stops and says it did not converge."""
    from rethink_dist.data import load

    ds = load("digits")
    F = kn.raw_features(ds.train_x[:300], torch.float64)
    y = torch.from_numpy(ds.train_y[:300]).clone()
    F[7] = F[3]
    y[7] = (y[3] + 1) % 10
    fit = kn.interpolate(F, torch.nn.functional.one_hot(y, 10).double())
    assert not fit.solution.converged and fit.solution.stored_max_residual > 0.4
    assert float((fit.train_pred - torch.nn.functional.one_hot(y, 10)).abs().max()) > 0.4


def test_the_factor_kept_apart_from_k_gives_the_same_solve():
    """Off the CPU the factor is kept in a copy of K (torch's CUDA Cholesky clears the triangle where
    the CPU route keeps K); on the CPU both routes run and agree."""
    from rethink_dist.data import load

    ds = load("digits")
    F = kn.raw_features(ds.train_x[:600], torch.float32)
    Y = torch.nn.functional.one_hot(torch.from_numpy(ds.train_y[:600]), 10).float()
    gamma = kn.default_gamma(F)
    inplace = kn.solve_min_norm(F, Y, "rbf", gamma, 0.0, 128, 1e9)
    apart = kn.solve_min_norm(F, Y, "rbf", gamma, 0.0, 128, 1e9, keep_k_apart=True)
    assert inplace.converged and apart.converged and inplace.shift == apart.shift > 0
    assert float((inplace.alpha - apart.alpha).abs().max()) <= 1e-4 * float(inplace.alpha.abs().max())


def test_a_big_solve_says_where_it_is_and_a_small_one_stays_silent(capsys):
    """Progress lines (rethink_dist/theory/kernel.py, Progress): each step of the solve, on stderr,
    when asked for (by default from n = 20,000 rows on); none for a small solve by default."""
    from rethink_dist.data import load

    ds = load("digits")
    F = kn.raw_features(ds.train_x[:600], torch.float32)
    Y = torch.nn.functional.one_hot(torch.from_numpy(ds.train_y[:600]), 10).float()
    kn.interpolate(F, Y, kernel="rbf")
    assert capsys.readouterr().err == ""
    loud = kn.Progress(len(F), enabled=True)
    fit = kn.interpolate(F, Y, kernel="rbf", progress=loud)
    assert fit.solution.converged
    err = capsys.readouterr().err.splitlines()
    assert all(line.startswith("rethink-dist kernel: [") for line in err)
    text = "\n".join(err)
    for step in ("the Gram matrix: 600 x 600 float32", "factoring K + ", "factored",
                 "conjugate gradients: refinement 1 ends at iteration"):
        assert step in text, (step, text)
