"""Minimum-norm kernel interpolation (Zhang et al. 2017, section 5), under a memory budget.

SGD from zero on a linear model stays in the span of the data, so when it fits the training set
it finds ``w = X^T alpha`` with ``K alpha = Y``: the minimum-norm interpolant. Here K is a kernel
matrix (linear ``X X^T``, Gaussian RBF ``exp(-gamma |x_i - x_j|^2)`` or Laplacian
``exp(-gamma |x_i - x_j|)``) on raw pixels (pixels / 255, flattened) or on random-conv features
(:func:`random_conv_features`, the paper's "random conv-net" preprocessing), Y the one-hot
training labels (0/1), and:

- ``ridge = 0``: ``K alpha = Y``, the interpolant, by the ``cholesky_pcg`` solver, in K's dtype for
  storage (float32: n = 60,000 takes 13.4 GiB) and float64 where accuracy needs it:

  1. K is computed by row blocks into the lower triangle of one n x n array and copied onto its
     upper triangle (:func:`mirror_lower`); its diagonal is kept as a vector.
  2. The lower triangle is factored in place, ``L L^T = K + shift I`` (LAPACK ?potrf, which leaves
     the upper triangle, K, untouched). In float32 K itself is not positive definite to working
     precision (its smallest eigenvalues are far below eps32 * lambda_max), so the shift starts at
     eps * lambda_max (lambda_max bounded by the largest row sum), the size of the factorization's
     own backward error, and grows 10x after a failed pivot (the lower triangle is restored from the
     upper one). float64 tries shift 0 first.
  3. Mixed-precision iterative refinement: the residual ``R = Y - K alpha`` is accumulated in float64
     from the stored K (:func:`sym_matvec64`), the correction ``K d = R`` is solved by preconditioned
     conjugate gradients (products with K in float32 by BLAS ?symm on the upper triangle, the
     preconditioner two triangular solves with L), and ``alpha += d``, until ``max |R| <= tol``
     (default 1e-3: with one-hot targets, 0.5 already classifies every training sample as its label).
     CG stops when 25 iterations bring no new lowest residual, and a refinement that raises the
     residual is undone: a system that cannot be interpolated in this precision (or at all: equal
     samples with different labels) ends unconverged, never as a fit.

  The result records the shift, the iterations (per label set: the iterations until its residual met
  the tolerance), the residual on the stored K and, recomputed in float64 from the features (not from
  the stored matrix), the residual of the function itself, with its bound
  ``tol + e_K ||alpha||_1`` (:func:`gram_entry_error_bound`: how far a stored entry may be from
  k(x_i, x_j)).
- the linear kernel with n > feature dimension D and ridge 0: rank(K) <= D < n, no interpolant in
  general: the least-squares ``K^+ Y`` from the SVD of the features (K never formed), singular values
  of F at or below max(n, D) * eps * the largest dropped (``svd_pinv``, ``singular: true``).
- ``ridge = lam > 0``: ``(K + lam I) alpha = Y`` by the same solver, for comparison (the paper: 15%
  vs 17% on CIFAR-10).

Reported: train error (the predictions recomputed as ``K alpha`` from the features in float64),
test error, and the norm ``sqrt(tr(alpha^T K alpha))`` of the function (the RKHS norm; for the
linear kernel the Frobenius norm of ``W = X^T alpha``). Everything runs on the CPU; on CUDA only
the linear kernel's SVD route (torch's CUDA Cholesky clears the triangle that holds K).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as Fn

from rethink_dist.config import KERNELS

DTYPES = {"float32": torch.float32, "float64": torch.float64}


class KernelMemoryError(ValueError):
    """The problem does not fit the memory budget; the message names the sizes."""


def _size(nbytes: float) -> str:
    return f"{nbytes / 2**30:.1f} GiB" if nbytes >= 2**28 else f"{nbytes / 2**20:.1f} MiB"


# ------------------------------------------------------------------------------ features
def raw_features(images: np.ndarray, dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu") -> torch.Tensor:
    """uint8 N x H x W x C images -> N x (H W C) pixels / 255."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    return x.reshape(len(images), -1).to(dtype).div_(255.0)


def random_conv_features(
    images: np.ndarray,
    num_filters: int,
    *,
    filter_size: int = 5,
    pool: int = 2,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
    batch: int = 1024,
) -> torch.Tensor:
    """A random convolutional layer as fixed preprocessing: N x (num_filters * pool^2) features.

    Each image (pixels / 255) is standardized (mean 0, std 1, as TensorFlow's
    per_image_standardization), convolved with ``num_filters`` Gaussian filters of size
    ``filter_size`` (std 1/sqrt(fan-in), drawn from ``seed``, stride 1, no padding), passed through
    ReLU and average-pooled to a ``pool x pool`` grid.
    """
    n, h, w, c = images.shape
    if filter_size > min(h, w):
        raise ValueError(f"filter_size={filter_size} is larger than the {h}x{w} images; valid: 1..{min(h, w)}")
    gen = torch.Generator().manual_seed(seed)
    filters = torch.randn(num_filters, c, filter_size, filter_size, generator=gen, dtype=torch.float64)
    filters = (filters / math.sqrt(c * filter_size**2)).to(device, dtype)
    out = torch.empty(n, num_filters * pool * pool, dtype=dtype, device=device)
    for i in range(0, n, batch):
        x = torch.from_numpy(np.ascontiguousarray(images[i : i + batch])).to(device).permute(0, 3, 1, 2).to(dtype) / 255.0
        flat = x.reshape(len(x), -1)
        std = flat.std(dim=1, correction=0).clamp_min(1.0 / math.sqrt(flat.shape[1]))
        x = (x - flat.mean(dim=1)[:, None, None, None]) / std[:, None, None, None]
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # TF32 would change the features on GPUs
            y = Fn.adaptive_avg_pool2d(torch.relu(Fn.conv2d(x, filters)), pool)
        out[i : i + len(x)] = y.reshape(len(x), -1)
    return out


# ------------------------------------------------------------------------------ Gram blocks
def default_gamma(F: torch.Tensor, kernel: str = "rbf") -> float:
    """scikit-learn's gamma='scale' for rbf: 1 / (D * Var(features)); for laplacian (exp(-gamma |x - y|))
    its square root, 1 / sqrt(D * Var), so that gamma * the typical distance sqrt(2 D Var) is sqrt(2),
    near the rbf default's gamma * the typical squared distance, 2."""
    var = float(F.double().var(correction=0)) if F.numel() > 1 else 1.0
    g = 1.0 / (F.shape[1] * var) if var > 0 else 1.0
    return math.sqrt(g) if kernel == "laplacian" else g


def kernel_block(Fq: torch.Tensor, Ft: torch.Tensor, sq_q: torch.Tensor, sq_t: torch.Tensor, kernel: str, gamma: float) -> torch.Tensor:
    """k(Fq, Ft) as a len(Fq) x len(Ft) block (sq_*: squared row norms, used by rbf and laplacian)."""
    blk = Fq @ Ft.T
    if kernel in ("rbf", "laplacian"):
        blk.mul_(-2.0).add_(sq_q[:, None]).add_(sq_t[None, :]).clamp_(min=0.0)
        if kernel == "laplacian":
            blk.sqrt_()
        blk.mul_(-gamma).exp_()
    return blk


class Progress:
    """Lines on stderr while a big solve runs (n >= PROGRESS_N: minutes to an hour on a CPU), at most
    one every EVERY_S seconds but for a step's start and end; a small one stays silent."""

    PROGRESS_N = 20_000
    EVERY_S = 30.0

    def __init__(self, n: int, enabled: bool | None = None) -> None:
        self.on = n >= self.PROGRESS_N if enabled is None else enabled
        self.t0 = self.last = time.perf_counter()

    def say(self, text: str, step: bool = False) -> None:
        now = time.perf_counter()
        if not self.on or (not step and now - self.last < self.EVERY_S):
            return
        self.last = now
        print(f"rethink-dist kernel: [{now - self.t0:5.0f} s] {text}", file=sys.stderr, flush=True)


QUIET = Progress(0, enabled=False)


def gram_lower(F: torch.Tensor, kernel: str, gamma: float, block: int, out: torch.Tensor | None = None,
               progress: Progress = QUIET) -> torch.Tensor:
    """The lower triangle (and diagonal) of K = k(F, F), by row blocks; the upper part is left unset.

    The diagonal of the rbf and Laplacian kernels is set to its exact value 1: computed as
    |x|^2 + |x|^2 - 2 x.x it is a rounding error, which the square root of the Laplacian kernel
    would turn into sqrt(eps |x|^2), about 1e-4 in float32.
    """
    n = len(F)
    K = out if out is not None else torch.empty(n, n, dtype=F.dtype, device=F.device)
    sq = (F * F).sum(dim=1)
    progress.say(f"the Gram matrix: {n:,} x {n:,} {str(F.dtype)[6:]} ({_size(K.numel() * K.element_size())}), "
                 f"in {-(-n // block)} blocks of rows", step=True)
    for i0 in range(0, n, block):
        i1 = min(n, i0 + block)
        K[i0:i1, :i1] = kernel_block(F[i0:i1], F[:i1], sq[i0:i1], sq[:i1], kernel, gamma)
        progress.say(f"the Gram matrix: {i1:,} of {n:,} rows")
    if kernel != "linear":
        K.diagonal().fill_(1.0)
    return K


def predict(Fq: torch.Tensor, Ft: torch.Tensor, alpha: torch.Tensor, kernel: str, gamma: float, block: int,
            same: bool = False, progress: Progress = QUIET) -> torch.Tensor:
    """k(Fq, Ft) @ alpha, by row blocks of Fq, in alpha's dtype (the features are converted to it).
    ``same``: Fq is Ft, whose kernel diagonal is set exactly (as :func:`gram_lower` does)."""
    Fq, Ft = Fq.to(alpha.dtype), Ft.to(alpha.dtype)
    sq_t = (Ft * Ft).sum(dim=1)
    out = torch.empty(len(Fq), alpha.shape[1], dtype=alpha.dtype, device=alpha.device)
    for i0 in range(0, len(Fq), block):
        q = Fq[i0 : i0 + block]
        blk = kernel_block(q, Ft, (q * q).sum(dim=1), sq_t, kernel, gamma)
        if same and kernel != "linear":
            blk[:, i0 : i0 + len(q)].diagonal().fill_(1.0)
        out[i0 : i0 + len(q)] = blk @ alpha
        progress.say(f"predicting {i0 + len(q):,} of {len(Fq):,} {'training' if same else 'query'} samples")
    return out


# ------------------------------------------------------------------------------ solves
# The interpolation tolerance: the largest |(K + ridge I) alpha - Y| entry the solve may leave. With
# one-hot targets any value below 0.5 already classifies every training sample as its label; 1e-3
# asks far more (the function is within 0.1% of every target), while a float32 Gram matrix with
# float64 accumulation still reaches it (docs/theory.md: the measured residuals).
TOL = 1e-3
MAX_ITER = 200
STALL = 25  # conjugate-gradient iterations without a new lowest max residual before the solver gives up
# The first shift of the float32 factorization, in units of eps(dtype) * lambda_max(K): float32
# Cholesky's backward error is of that size (||E|| <~ c eps ||K||), so a smaller shift leaves the
# factor's error as large as the shift and the factorization can meet a negative pivot; a larger one
# makes more eigenvalues of K fall below it, which preconditioned CG pays for in iterations.
SHIFT_EPS_UNITS = 1.0


@dataclass
class Solution:
    alpha: torch.Tensor  # n x k
    solver: str  # cholesky_pcg | svd_pinv
    singular: bool
    rank: int | None  # kept singular values (svd_pinv)
    detail: str  # what ran and why (the shift, the iterations, the residual reached)
    shift: float | None = None  # the shift of the factored K + shift I (cholesky_pcg)
    iterations: int | None = None  # preconditioned CG iterations (0: none needed)
    converged: bool = True  # reached the tolerance on the stored Gram matrix
    stored_max_residual: float | None = None  # max |(K + ridge I) alpha - Y|, K the stored (dtype) Gram matrix
    column_iterations: list[int] | None = None  # per target column: the first iteration its residual met TOL
    factor_attempts: list[str] | None = None
    refinements: int | None = None  # float64 residuals after the first
    seconds: dict | None = None  # gram (with the mirror copy), factor (all attempts), cg
    stored_max_residual_narrow: float | None = None  # the same, the products accumulated in the stored dtype


def _pinv_cutoff_singular_values(n: int, dim: int, dtype: torch.dtype, largest: float) -> float:
    """Singular values of the n x D features at or below max(n, D) * eps * the largest are zero.

    An SVD computed in ``dtype`` is exact for a matrix within about that much of F in the 2-norm
    (its backward error), and F itself is rounded to ``dtype``: singular values below it cannot be
    told from zero. The cut is on the singular values of F, the square roots of the eigenvalues of
    K = F F^T: on K's eigenvalues it is (max(n, D) eps)^2 * lambda_max, not numpy's n eps lambda_max,
    which in float32 kept only the directions within 0.7% of the top one.
    """
    return max(n, dim) * torch.finfo(dtype).eps * largest


def _lapack_potrf(dtype: torch.dtype):
    """LAPACK's ?potrf as torch itself links it (MKL, inside libtorch_cpu), or None where this torch
    build does not export it."""
    import ctypes
    import os

    try:
        lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
        return getattr(lib, "spotrf_" if dtype == torch.float32 else "dpotrf_")
    except (OSError, AttributeError):
        return None


def cholesky_inplace(K: torch.Tensor) -> int:
    """Overwrite the lower triangle of the row-major K with L (L L^T = K), leaving the strictly upper
    triangle as it was; 0 or the failing row.

    LAPACK is column-major: the transpose of the row-major K is column-major and its upper triangle
    is K's lower one, so ?potrf factors it truly in place (no copy of the n x n array). On the CPU
    this calls the LAPACK routine that torch.linalg.cholesky calls (MKL's, from libtorch_cpu) directly:
    torch.linalg.cholesky zeroes the other triangle, where the solver keeps K. (scipy's LAPACK is the
    fallback where torch exports none; a 60,000-image solve through it ended in a segmentation fault,
    while MKL's routine is the one torch.linalg.cholesky has run at that size.)
    """
    if K.device.type == "cpu":
        import ctypes

        if not K.is_contiguous():
            raise ValueError("cholesky_inplace needs a contiguous matrix")
        potrf = _lapack_potrf(K.dtype)
        if potrf is not None:
            n, info = ctypes.c_int(len(K)), ctypes.c_int(0)
            potrf(ctypes.c_char_p(b"U"), ctypes.byref(n), ctypes.c_void_p(K.data_ptr()), ctypes.byref(n),
                  ctypes.byref(info))
            return int(info.value)
        from scipy.linalg import lapack

        a = K.numpy().T
        c, info = (lapack.spotrf if K.dtype == torch.float32 else lapack.dpotrf)(a, lower=0, clean=0, overwrite_a=1)
        if not np.shares_memory(c, a):  # a copy would double the memory: never silently
            raise RuntimeError("LAPACK potrf copied the Gram matrix")
        return int(info)
    info = torch.empty((), dtype=torch.int32, device=K.device)
    torch.linalg.cholesky_ex(K.mT, upper=True, out=(K.mT, info))
    return int(info)


def cholesky_solve_inplace_factor(L: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """alpha = (L L^T)^-1 Y by two triangular solves reading only L's lower triangle (torch.cholesky_solve
    would copy L)."""
    return torch.linalg.solve_triangular(L.mT, torch.linalg.solve_triangular(L, Y, upper=False), upper=True)


def mirror_lower(A: torch.Tensor, block: int) -> None:
    """Copy the strictly lower triangle of A onto its strictly upper one (A symmetric), by column blocks."""
    n = len(A)
    for j0 in range(0, n, block):
        j1 = min(n, j0 + block)
        A[:j0, j0:j1] = A[j0:j1, :j0].T
        d = A[j0:j1, j0:j1]
        d.copy_(d.tril() + d.tril(-1).T)


def restore_lower(A: torch.Tensor, diag: torch.Tensor, block: int) -> None:
    """Rebuild the lower triangle (and diagonal) of A from its strictly upper one, after a failed factorization."""
    n = len(A)
    for j0 in range(0, n, block):
        j1 = min(n, j0 + block)
        A[j0:j1, :j0] = A[:j0, j0:j1].T
        d = A[j0:j1, j0:j1]
        u = d.triu(1)
        d.copy_(u + u.T)
    A.diagonal().copy_(diag)


def sym_matvec(A: torch.Tensor, diag: torch.Tensor, V: torch.Tensor, block: int, wide: bool) -> torch.Tensor:
    """K V, K the symmetric matrix with A's strictly upper triangle and the diagonal ``diag``, by row
    blocks of the upper triangle (each used twice: for its rows and, transposed, for its columns).

    ``wide``: each block is widened to float64 (into one reused buffer) before its products, so the
    n-term sums accumulate in float64; the stored entries stay rounded to A's dtype. Otherwise the
    products run in A's dtype, reading A in place (a float32 product loses about
    eps32 * sqrt(n) * max|K_ij alpha_j| per entry: docs/theory.md has the measured difference).
    """
    n = len(A)
    dt = torch.float64 if wide else A.dtype
    V = V.to(dt)
    if A.device.type == "cpu" and (not wide or A.dtype == dt):
        # BLAS ?symm reads one triangle in place: the lower triangle of the column-major view A^T
        # (A's upper one), whose diagonal holds the factor's; K's own diagonal is added instead.
        from scipy.linalg import blas

        symm = blas.ssymm if dt == torch.float32 else blas.dsymm
        v = np.asfortranarray(V.numpy())
        out = torch.from_numpy(np.ascontiguousarray(symm(1.0, A.numpy().T, v, side=0, lower=1)))
        return out.add_(V * (diag.to(dt) - A.diagonal())[:, None])
    out = V * diag.to(dt)[:, None]
    buf = torch.empty(min(block, n), n, dtype=dt, device=A.device) if wide and A.dtype != dt else None
    for i0 in range(0, n, block):
        i1 = min(n, i0 + block)
        b = i1 - i0
        if buf is not None:
            U = buf[:b, : n - i0]
            U.copy_(A[i0:i1, i0:])
        else:
            U = A[i0:i1, i0:]
        d = U[:, :b].triu(1)
        out[i0:i1] += d @ V[i0:i1] + d.T @ V[i0:i1]
        if i1 < n:
            out[i0:i1] += U[:, b:] @ V[i1:]
            out[i1:] += U[:, b:].T @ V[i0:i1]
    return out


def sym_matvec64(A: torch.Tensor, diag: torch.Tensor, V: torch.Tensor, block: int) -> torch.Tensor:
    """K V accumulated in float64 (:func:`sym_matvec` with ``wide``)."""
    return sym_matvec(A, diag, V, block, wide=True)


def lambda_max_bound(A: torch.Tensor, diag: torch.Tensor, block: int) -> float:
    """The largest absolute row sum of K (from its upper triangle and diagonal): >= lambda_max(K)
    (Gershgorin); for the RBF and Laplacian kernels (entries > 0) within a few percent of it, as the
    top eigenvector is nearly constant."""
    ones = torch.ones(len(A), 1, dtype=A.dtype, device=A.device)
    return float(sym_matvec(A, diag, ones, block, wide=False).abs().max())


def _precond(A: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """(L L^T)^-1 R with the factor in A's lower triangle, in A's dtype (columns scaled to max 1
    first, so that float32 neither underflows nor overflows), returned in float64."""
    scale = R.abs().amax(dim=0).clamp_min(1e-300)
    return cholesky_solve_inplace_factor(A, (R / scale).to(A.dtype)).to(torch.float64) * scale


def _safe_div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    ok = b > 0
    return torch.where(ok, a / b.where(ok, torch.ones_like(b)), torch.zeros_like(b))


def pcg(A: torch.Tensor, diag: torch.Tensor, Y: torch.Tensor, block: int, tol: float, max_iter: int,
        inner_reduction: float = 1e-2, max_outer: int = 8, L: torch.Tensor | None = None,
        progress: Progress = QUIET):
    """K alpha = Y by mixed-precision iterative refinement: the residual R = Y - K alpha with float64
    accumulation (:func:`sym_matvec64`), then the correction K d = R by preconditioned conjugate
    gradients (each column its own CG, run side by side; float64 vectors, products with K in A's
    dtype, the Cholesky factor of K + shift I in A's lower triangle as the preconditioner) until its
    residual falls by ``inner_reduction`` (or below tol / 2), and alpha += d; until max |R| <= tol.

    The inner products in float32 cost a quarter of the float64 ones (no widening, a quarter of the
    memory traffic), and their rounding error, relative to d, shrinks with d from one refinement to
    the next; only the outer residuals, a few, need float64.

    Returns (alpha, CG iterations in all, max |R| of the last outer residual, per column the
    cumulative CG iteration at which its residual first met tol (0: at the start; -1: never),
    refinement steps). ``L``: the array whose lower triangle holds the factor, when not A's own.
    """
    L = A if L is None else L
    Y = Y.to(torch.float64)
    m = Y.shape[1]
    X = torch.zeros_like(Y)
    R = Y.clone()
    first = [-1] * m
    it = outer = 0
    wide = A.dtype == torch.float64
    while True:
        col = R.abs().amax(dim=0)
        for j in range(m):
            if first[j] < 0 and float(col[j]) <= tol:
                first[j] = it
        res = float(col.max())
        if res <= tol or outer >= max_outer or it >= max_iter:
            break
        outer += 1
        target = torch.clamp(col * inner_reduction, min=0.5 * tol)
        D = torch.zeros_like(R)
        Rin = R.clone()
        Z = _precond(L, Rin)
        P = Z.clone()
        rz = (Rin * Z).sum(0)
        best, since = float("inf"), 0
        while it < max_iter:
            it += 1
            Q = sym_matvec(A, diag, P, block, wide=wide).to(torch.float64)
            a = _safe_div(rz, (P * Q).sum(0))
            D += a * P
            Rin -= a * Q
            cin = Rin.abs().amax(dim=0)
            for j in range(m):
                if first[j] < 0 and float(cin[j]) <= tol:
                    first[j] = it
            if bool((cin <= target).all()):
                break
            worst = float(cin.max())
            progress.say(f"conjugate gradients: refinement {outer}, iteration {it}, max residual {worst:.3g} "
                         f"(this step's target {float(target.max()):.3g})")
            if worst < best:
                best, since = worst, 0
            else:
                since += 1
            if since >= STALL:  # no progress: the system cannot be solved in this precision
                break
            Z = _precond(L, Rin)
            rz_new = (Rin * Z).sum(0)
            P = Z + _safe_div(rz_new, rz) * P
            rz = rz_new
        X += D
        R_new = Y - sym_matvec64(A, diag, X, block)
        res_new = float(R_new.abs().max())
        progress.say(f"conjugate gradients: refinement {outer} ends at iteration {it}, float64 max residual "
                     f"{res_new:.3g} (tolerance {tol:g})", step=True)
        if res_new >= res:  # the correction made it worse: keep the better alpha, stop
            X -= D
            break
        R = R_new
    return X, it, res, first, outer


def solves_by_svd(kernel: str, ridge: float, n: int, dim: int) -> bool:
    """The linear kernel without a ridge and with n > D: solved from the SVD of the features, K never formed."""
    return kernel == "linear" and ridge == 0 and n > dim


def left_singular(F: torch.Tensor, via_qr: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, S) of the thin SVD of the tall F (n x D, n > D). ``via_qr``: the SVD of R from F = QR, then
    U = Q U_R: on CUDA, torch's SVD of a tall 50,000 x 3,072 matrix takes a slow iterative (Jacobi)
    route, while the QR and a D x D SVD are fast."""
    if not via_qr:
        U, S, _ = torch.linalg.svd(F, full_matrices=False)
        return U, S
    Q, R = torch.linalg.qr(F, mode="reduced")
    Ur, S, _ = torch.linalg.svd(R)
    return Q @ Ur, S


def factor_shifted(A: torch.Tensor, diag: torch.Tensor, block: int, attempts: int = 4,
                   target: torch.Tensor | None = None, progress: Progress = QUIET) -> tuple[float, list[str]]:
    """Factor K + shift I in A's lower triangle (A's strictly upper triangle holds K, ``diag`` its
    diagonal), starting from shift = SHIFT_EPS_UNITS * eps * lambda_max and multiplying it by 10 after
    each failed factorization (the lower triangle is restored from the upper one in between).
    float64 tries shift 0 first: its rounding (eps64 * lambda_max) is far below the kernels' smallest
    eigenvalues at the sizes it fits in memory. ``target``: factor into this array (a copy of A)
    instead, leaving A whole. Returns the shift and what each attempt met."""
    n = len(A)
    eps = torch.finfo(A.dtype).eps
    lam = lambda_max_bound(A, diag, block)
    base = SHIFT_EPS_UNITS * eps * lam
    shifts = ([0.0] if A.dtype == torch.float64 else []) + [base * 10**k for k in range(attempts)]
    said = []
    for k, shift in enumerate(shifts):
        if target is not None:
            target.copy_(A)
        elif k:
            restore_lower(A, diag, block)
        M = A if target is None else target
        M.diagonal().copy_(diag + shift)
        progress.say(f"factoring K + {shift:.3g} I: one {str(A.dtype)[6:]} Cholesky of {n:,} rows "
                     f"({n**3 / 3e12:.1f} TFLOP)", step=True)
        info = cholesky_inplace(M)
        if info == 0:
            said.append(f"K + {shift:.3g} I factored")
            progress.say(said[-1], step=True)
            return shift, said
        said.append(f"K + {shift:.3g} I met a non-positive pivot at row {info} of {n}")
        progress.say(said[-1], step=True)
    raise KernelNotInterpolated(
        f"no Cholesky factorization of K + shift I in {str(A.dtype)[6:]} up to shift {shifts[-1]:.3g} "
        f"(eps * lambda_max = {eps * lam:.3g}): {'; '.join(said)}")


class KernelNotInterpolated(RuntimeError):
    """The solve did not reach an interpolant; the message says what it met."""


def solve_min_norm(
    F: torch.Tensor, Y: torch.Tensor, kernel: str, gamma: float, ridge: float, block: int, budget_bytes: float,
    tol: float = TOL, max_iter: int = MAX_ITER, keep_k_apart: bool | None = None, progress: Progress = QUIET,
) -> Solution:
    """alpha with (K + ridge I) alpha = Y (see the module docstring).

    ``keep_k_apart`` (default: off the CPU): factor a copy of K (2 n^2 of memory) instead of K's own
    lower triangle; torch's CUDA Cholesky clears the other triangle, where the CPU route keeps K."""
    n, dim = F.shape
    if solves_by_svd(kernel, ridge, n, dim):
        # rank(K) <= dim < n: K^+ = U S^-2 U^T from the SVD of F, never forming K.
        U, S = left_singular(F, via_qr=F.device.type == "cuda")
        keep = S > _pinv_cutoff_singular_values(n, dim, F.dtype, float(S.max()))
        v = U[:, keep]
        alpha = v @ ((v.T @ Y) / (S[keep] ** 2)[:, None])
        rank = int(keep.sum())
        return Solution(alpha, "svd_pinv", True, rank,
                        f"linear kernel with n={n} > feature dimension {dim}: rank(K) = {rank} < n, no interpolant "
                        f"unless Y lies in its range; least squares K^+ Y, singular values of F kept above "
                        f"max(n, D) * eps * the largest")
    t0 = time.perf_counter()
    A = gram_lower(F, kernel, gamma, block, progress=progress)
    mirror_lower(A, block)
    diag = A.diagonal().to(torch.float64) + ridge
    t1 = time.perf_counter()
    apart = (F.device.type != "cpu") if keep_k_apart is None else keep_k_apart
    L = torch.empty_like(A) if apart else None
    try:
        shift, said = factor_shifted(A, diag, block, target=L, progress=progress)
    except KernelNotInterpolated as e:
        return Solution(torch.zeros_like(Y), "cholesky_pcg", False, None, str(e), converged=False,
                        stored_max_residual=float(Y.abs().max()), iterations=0, factor_attempts=[str(e)])
    t2 = time.perf_counter()
    alpha, iters, res, first, outer = pcg(A, diag, Y, wide_block(block, n), tol, max_iter, L=L, progress=progress)
    # the same residual with the products in A's dtype: what a solver without float64 accumulation would see
    res_narrow = float((Y.to(A.dtype) - sym_matvec(A, diag, alpha, wide_block(block, n), wide=False)).abs().max())
    del A, L
    seconds = {"gram": t1 - t0, "factor": t2 - t1, "cg": time.perf_counter() - t2}
    converged = res <= tol
    what = (f"{'; '.join(said)} in {str(F.dtype)[6:]} as the preconditioner; conjugate gradients with float64 "
            f"residuals reached max |K{' + ridge I' if ridge else ''} alpha - Y| = {res:.3g} "
            f"{'<=' if converged else '>'} tolerance {tol:g} in {iters} iterations ({outer} refinement steps)")
    return Solution(alpha, "cholesky_pcg", False, None, what,
                    shift=shift, iterations=iters, converged=converged, stored_max_residual=res,
                    column_iterations=first, factor_attempts=said, refinements=outer, seconds=seconds,
                    stored_max_residual_narrow=res_narrow)


def gram_entry_error_bound(F: torch.Tensor, kernel: str, gamma: float) -> float:
    """e_K: how far an entry of the Gram matrix computed in F's dtype may be from the exact k(x_i, x_j).

    The squared distance |x|^2 + |y|^2 - 2 x.y is rounded to about eps (|x|^2 + |y|^2 + 2 |x||y|)
    <= 4 eps max|x|^2, and the exponential's argument (gamma times it, or times its square root for
    the Laplacian kernel: an error of at most sqrt(that)) carries it over to K_ij <= 1 as an absolute
    error. The interpolant of the stored matrix then misses the features' by at most
    e_K * ||alpha||_1 per entry (:func:`residual_bound`).
    """
    sq_max = float((F.double() ** 2).sum(1).max())
    eps = torch.finfo(F.dtype).eps
    if kernel == "rbf":
        return 4 * eps * gamma * sq_max
    if kernel == "laplacian":
        return 2 * gamma * math.sqrt(eps * sq_max)
    return 4 * eps * sq_max * math.sqrt(F.shape[1])


def residual_bound(alpha: torch.Tensor, e_k: float, tol: float) -> float:
    """The stated bound on max |K alpha - Y| recomputed from the features: the solver's tolerance on
    the stored matrix plus e_K times the largest column l1-norm of alpha."""
    return tol + e_k * float(alpha.abs().sum(0).max())


# ------------------------------------------------------------------------------ budget
def available_bytes(device: torch.device) -> float:
    if device.type == "cuda":
        return float(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return 8.0 * 2**30


def plan_block(n: int, n_query: int, dim: int, item: int, budget_bytes: float, block: int | None = None,
               forms_k: bool = True, copies: int = 1) -> int:
    """Rows per Gram block such that K (``copies`` n x n arrays: 2 where the factor is kept apart from
    K) or, where K is never formed, the SVD's n x D factor, + the features + one block fit the budget
    (or an error)."""
    big, what = ((copies * n * n, "K" if copies == 1 else "K and its factor") if forms_k
                 else (n * dim, "the SVD of the features"))
    fixed = (big + (n + n_query) * dim) * item
    if fixed > budget_bytes:
        hint = "lower max_train, use float32, or raise the budget" if item > 4 else "lower max_train or raise the budget"
        raise KernelMemoryError(
            f"n={n}: {what} needs {_size(big * item)} and the features {_size((n + n_query) * dim * item)} "
            f"in {item * 8}-bit floats, over the budget of {_size(budget_bytes)}: {hint}"
        )
    if block is None:
        block = int((budget_bytes - fixed) // (2 * max(n, n_query) * item))
        block = max(64, min(4096, block))
    return max(1, min(block, max(n, n_query)))


@dataclass
class KernelFit:
    alpha: torch.Tensor  # float64
    gamma: float
    solution: Solution
    train_pred: torch.Tensor  # (K + ridge I) alpha, K recomputed in float64 from the features
    norm: float
    block: int
    gram_solve_seconds: float
    predict_seconds: float


def wide_block(block: int, n: int) -> int:
    """Rows per float64 block (products with K, predictions): at most 1,024 (0.5 GB at n = 60,000)."""
    return max(1, min(block, 1024, n))


def interpolate(
    F: torch.Tensor,
    Y: torch.Tensor,
    *,
    kernel: str = "rbf",
    gamma: float | None = None,
    ridge: float = 0.0,
    budget_bytes: float | None = None,
    block: int | None = None,
    n_query: int = 0,
    tol: float = TOL,
    max_iter: int = MAX_ITER,
    progress: Progress | None = None,
) -> KernelFit:
    """Solve for alpha on features F (n x D) and targets Y (n x k); recompute (K + ridge I) alpha in
    float64 from the features (not from the stored Gram matrix) and the norm. ``progress``: where the
    lines of a long solve go (default: stderr when n >= Progress.PROGRESS_N)."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel={kernel!r} is not valid; valid: {', '.join(KERNELS)}")
    n, dim = F.shape
    gamma = default_gamma(F, kernel) if (gamma is None and kernel != "linear") else (gamma or 0.0)
    budget = budget_bytes if budget_bytes is not None else 0.8 * available_bytes(F.device)
    blk = plan_block(n, n_query, dim, F.element_size(), budget, block, forms_k=not solves_by_svd(kernel, ridge, n, dim),
                     copies=1 if F.device.type == "cpu" else 2)
    progress = Progress(n) if progress is None else progress
    t0 = time.perf_counter()
    sol = solve_min_norm(F, Y.to(F.dtype), kernel, gamma, ridge, blk, budget, tol=tol, max_iter=max_iter,
                         progress=progress)
    if F.device.type == "cuda":
        torch.cuda.synchronize(F.device)
    t1 = time.perf_counter()
    alpha = sol.alpha.to(torch.float64)
    train_pred = predict(F, F, alpha, kernel, gamma, wide_block(blk, n), same=True, progress=progress)
    if ridge:
        train_pred += ridge * alpha
    norm = math.sqrt(max(0.0, float((alpha * (train_pred - ridge * alpha)).sum())))
    return KernelFit(alpha, gamma, sol, train_pred, norm, blk, t1 - t0, time.perf_counter() - t1)
