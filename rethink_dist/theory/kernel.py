"""Minimum-norm kernel interpolation (Zhang et al. 2017, section 5), under a memory budget.

SGD from zero on a linear model stays in the span of the data, so when it fits the training set
it finds ``w = X^T alpha`` with ``K alpha = Y``: the minimum-norm interpolant. Here K is a kernel
matrix (linear ``X X^T`` or Gaussian RBF ``exp(-gamma |x_i - x_j|^2)``) on raw pixels (pixels / 255,
flattened) or on random-conv features (:func:`random_conv_features`, the paper's "random conv-net"
preprocessing), Y the one-hot training labels (0/1), and:

- ``ridge = 0``: ``K alpha = Y`` by a Cholesky factorization of K, in place (K is the only n x n
  array, so n = 50,000 takes 10 GB in float32). When K is singular (a Cholesky pivot at or below
  ``n * eps * max diag K``, e.g. equal images; or the linear kernel with n > feature dimension,
  where K has rank <= dimension by construction) the result says ``singular: true`` and alpha is
  the minimum-norm least-squares solution ``K^+ Y``, with numpy's cut-off: eigenvalues below
  ``n * eps * max`` are dropped (an eigendecomposition of K; for the linear kernel an SVD of the
  n x D feature matrix).
- ``ridge = lam > 0``: ``(K + lam I) alpha = Y`` for comparison (the paper: 15% vs 17% on CIFAR-10).

Reported: train error (0 when interpolating: the predictions are recomputed as ``K alpha`` from
the features, not taken from the solve), test error, and the norm ``sqrt(tr(alpha^T K alpha))`` of
the function (the RKHS norm; for the linear kernel the Frobenius norm of ``W = X^T alpha``).

The Gram matrix is computed by row blocks, only its lower triangle (all that Cholesky and the
eigendecomposition read), so the work is n^2 D flops; everything runs on any torch device.
"""

from __future__ import annotations

import math
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
def default_gamma(F: torch.Tensor) -> float:
    """scikit-learn's gamma='scale': 1 / (D * Var(features))."""
    var = float(F.double().var(correction=0)) if F.numel() > 1 else 1.0
    return 1.0 / (F.shape[1] * var) if var > 0 else 1.0


def kernel_block(Fq: torch.Tensor, Ft: torch.Tensor, sq_q: torch.Tensor, sq_t: torch.Tensor, kernel: str, gamma: float) -> torch.Tensor:
    """k(Fq, Ft) as a len(Fq) x len(Ft) block (sq_*: squared row norms, used by rbf)."""
    blk = Fq @ Ft.T
    if kernel == "rbf":
        blk.mul_(-2.0).add_(sq_q[:, None]).add_(sq_t[None, :]).clamp_(min=0.0).mul_(-gamma).exp_()
    return blk


def gram_lower(F: torch.Tensor, kernel: str, gamma: float, block: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """The lower triangle (and diagonal) of K = k(F, F), by row blocks; the upper part is left unset."""
    n = len(F)
    K = out if out is not None else torch.empty(n, n, dtype=F.dtype, device=F.device)
    sq = (F * F).sum(dim=1)
    for i0 in range(0, n, block):
        i1 = min(n, i0 + block)
        K[i0:i1, :i1] = kernel_block(F[i0:i1], F[:i1], sq[i0:i1], sq[:i1], kernel, gamma)
    return K


def predict(Fq: torch.Tensor, Ft: torch.Tensor, alpha: torch.Tensor, kernel: str, gamma: float, block: int) -> torch.Tensor:
    """k(Fq, Ft) @ alpha, by row blocks of Fq."""
    sq_t = (Ft * Ft).sum(dim=1)
    out = torch.empty(len(Fq), alpha.shape[1], dtype=alpha.dtype, device=alpha.device)
    for i0 in range(0, len(Fq), block):
        q = Fq[i0 : i0 + block]
        out[i0 : i0 + len(q)] = kernel_block(q, Ft, (q * q).sum(dim=1), sq_t, kernel, gamma) @ alpha
    return out


# ------------------------------------------------------------------------------ solves
@dataclass
class Solution:
    alpha: torch.Tensor  # n x k
    solver: str  # cholesky | eigh_pinv | svd_pinv
    singular: bool
    rank: int | None  # kept eigenvalues (pinv solvers)
    detail: str  # why it is singular, if it is


def _lstsq_cutoff(n: int, dtype: torch.dtype, largest: float) -> float:
    """numpy's lstsq cut-off: values at or below n * eps * the largest count as zero."""
    return n * torch.finfo(dtype).eps * largest


def _pinv_apply(vecs: torch.Tensor, vals: torch.Tensor, rhs: torch.Tensor, n: int) -> tuple[torch.Tensor, int]:
    """vecs diag(1/vals) vecs^T rhs over the eigenvalues above numpy's lstsq cut-off n*eps*max."""
    cut = _lstsq_cutoff(n, vals.dtype, float(vals.abs().max()))
    keep = vals.abs() > cut
    v = vecs[:, keep]
    return v @ ((v.T @ rhs) / vals[keep][:, None]), int(keep.sum())


def cholesky_inplace(K: torch.Tensor) -> int:
    """Overwrite the lower triangle of the row-major K with L (L L^T = K); 0 or the failing row.

    LAPACK is column-major: factoring K itself makes torch copy it (twice the memory at n = 20,000),
    while its transpose view (column-major, the same lower triangle seen as an upper one) is
    factored truly in place.
    """
    info = torch.empty((), dtype=torch.int32, device=K.device)
    torch.linalg.cholesky_ex(K.mT, upper=True, out=(K.mT, info))
    return int(info)


def cholesky_solve_inplace_factor(L: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """alpha = (L L^T)^-1 Y by two triangular solves (torch.cholesky_solve would copy L)."""
    return torch.linalg.solve_triangular(L.mT, torch.linalg.solve_triangular(L, Y, upper=False), upper=True)


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


def solve_min_norm(
    F: torch.Tensor, Y: torch.Tensor, kernel: str, gamma: float, ridge: float, block: int, budget_bytes: float
) -> Solution:
    """alpha with (K + ridge I) alpha = Y, or K^+ Y when K is singular (see the module docstring)."""
    n, dim = F.shape
    item = F.element_size()
    if solves_by_svd(kernel, ridge, n, dim):
        # rank(K) <= dim < n: K^+ = U S^-2 U^T from the SVD of F, never forming K.
        U, S = left_singular(F, via_qr=F.device.type == "cuda")
        alpha, rank = _pinv_apply(U, S * S, Y, n)
        return Solution(alpha, "svd_pinv", True, rank, f"linear kernel with n={n} > feature dimension {dim}")
    K = gram_lower(F, kernel, gamma, block)
    if ridge:
        K.diagonal().add_(ridge)
    top = float(K.diagonal().abs().max())
    info = cholesky_inplace(K)
    if info == 0:
        # Rounding can leave a tiny positive pivot where K is singular (equal samples): the
        # factorization then "succeeds" with a meaningless solve. Pivots at or below numpy's
        # lstsq cut-off (n * eps * the largest diagonal entry) count as singular.
        pivots = K.diagonal().square()
        row = int(pivots.argmin())
        cut = _lstsq_cutoff(n, K.dtype, top)
        if float(pivots[row]) > cut:
            return Solution(cholesky_solve_inplace_factor(K, Y), "cholesky", False, None, "")
        detail = (f"Cholesky pivot {float(pivots[row]):.3g} at row {row + 1} of {n} is below the cut-off "
                  f"{cut:.3g} in {str(F.dtype)[6:]}")
    else:
        detail = f"Cholesky met a non-positive pivot at row {info} of {n} in {str(F.dtype)[6:]}"
    # K, its eigenvectors and the solver's workspace: about 3 n^2 on the CPU (LAPACK's syevd works
    # in place), 4 n^2 on CUDA (cuSOLVER's syevd keeps a workspace the size of K).
    need = (4 if F.device.type == "cuda" else 3) * n * n * item
    if need > budget_bytes:
        raise KernelMemoryError(
            f"K is singular ({detail}) and its eigendecomposition needs {_size(need)} > budget "
            f"{_size(budget_bytes)}: add a ridge, use float64, or lower max_train"
        )
    gram_lower(F, kernel, gamma, block, out=K)  # the factorization overwrote it
    if ridge:
        K.diagonal().add_(ridge)
    vals, vecs = torch.linalg.eigh(K)
    del K
    alpha, rank = _pinv_apply(vecs, vals, Y, n)
    return Solution(alpha, "eigh_pinv", True, rank, detail)


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
               forms_k: bool = True) -> int:
    """Rows per Gram block such that K (or, where K is never formed, the SVD's n x D factor) + the
    features + one block fit the budget (or an error)."""
    big, what = (n * n, "K") if forms_k else (n * dim, "the SVD of the features")
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
    alpha: torch.Tensor
    gamma: float
    solution: Solution
    train_pred: torch.Tensor
    norm: float
    block: int
    gram_solve_seconds: float
    predict_seconds: float


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
) -> KernelFit:
    """Solve for alpha on features F (n x D) and targets Y (n x k); recompute K alpha and the norm."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel={kernel!r} is not valid; valid: {', '.join(KERNELS)}")
    n, dim = F.shape
    gamma = default_gamma(F) if (gamma is None and kernel == "rbf") else (gamma or 0.0)
    budget = budget_bytes if budget_bytes is not None else 0.8 * available_bytes(F.device)
    blk = plan_block(n, n_query, dim, F.element_size(), budget, block, forms_k=not solves_by_svd(kernel, ridge, n, dim))
    t0 = time.perf_counter()
    sol = solve_min_norm(F, Y.to(F.dtype), kernel, gamma, ridge, blk, budget)
    if F.device.type == "cuda":
        torch.cuda.synchronize(F.device)
    t1 = time.perf_counter()
    train_pred = predict(F, F, sol.alpha, kernel, gamma, blk)
    norm = math.sqrt(max(0.0, float((sol.alpha * train_pred).sum())))
    return KernelFit(sol.alpha, gamma, sol, train_pred, norm, blk, t1 - t0, time.perf_counter() - t1)
