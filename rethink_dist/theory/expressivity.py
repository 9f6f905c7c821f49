"""Finite-sample expressivity (Zhang et al. 2017, section 4), built and checked.

The theorem: a two-layer ReLU network ``c(x) = sum_j w_j * max(<a, x> - b_j, 0)`` with 2n + d
weights (a in R^d, b and w in R^n) represents any real function on n distinct samples in d
dimensions. :func:`fit` builds that network:

1. ``a`` makes the projections ``z_i = <a, x_i>`` distinct and well separated. When the distinct
   samples number at most d (``a="spaced"``, the default there) a is the minimum-norm solution of
   ``X a = t`` with t evenly spaced (spacing 1), so every gap is exactly 1 up to rounding. Otherwise
   (``a="random"``) a is a random unit vector, redrawn when two distinct samples land closer than
   the rounding error of a dot product.
2. The projections are sorted (O(n log n)) and ``b_1 < z_1 < b_2 < z_2 < ... < b_n < z_n`` with
   ``b_i = z_{i-1} + knot * (z_i - z_{i-1})`` (knot 1/4) and ``b_1`` one mean gap below ``z_1``.
3. The lower-triangular system ``A w = y``, ``A_ij = max(z_i - b_j, 0)``, is solved in O(n) without
   forming A: between knots c is linear with slope ``s_k = w_1 + ... + w_k``, so hitting ``y_i``
   after ``y_{i-1}`` needs ``s_i = (y_i - y_{i-1} - s_{i-1} (b_i - z_{i-1})) / (z_i - b_i)``, and
   ``w_i = s_i - s_{i-1}``. With knot < 1/2 the factor on ``s_{i-1}`` is knot / (1 - knot) = 1/3, so
   rounding errors in the slopes die out instead of adding up, and ``|s_i| <= 2 max|dy| / gap``.

Cost: O(n d) for the projections (two matrix-vector products: one to find repeated samples, one
for the error check), O(n log n) for the sort, O(n) for b and w, O(n + d) memory besides X.
``a="spaced"`` adds the minimum-norm solution of ``X a = t`` on the distinct samples (Cholesky
of their n x n Gram matrix), O(n^2 d) time and O(n d) memory: no more than X itself, since it is
used only when n <= d.

Multi-output targets (n x k, e.g. one-hot labels of k classes) share a and b (one hidden layer of
n ReLUs) and take one output column per class: d + n + k n weights (d + 11 n for 10 classes);
scalar targets take exactly 2n + d. Repeated samples with equal targets are fitted by one hidden
unit (the network then has 2m + d weights for m distinct samples); repeated samples with
different targets raise :class:`RepeatedSamplesError`: no function fits them.

How the error grows with n, and why. In exact arithmetic the fit is exact. In floating point with
unit roundoff eps, the stored weights are rounded, and a slope error of eps |w_j| made at knot j
is integrated over the rest of the range R of the projections, so the error of the network at a
sample is about ``eps * R * sum_j |w_j|`` in the worst case (a random walk of roundings:
``eps * R * sqrt(sum_j w_j^2)`` typically). The weights are of size ``max|dy| / gap``:

- evenly spaced projections (n <= d): gap 1 and R = n, so ``sum_j |w_j| ~ n max|dy|`` and the
  error grows like ``eps * n^2 * max|y|`` (about ``eps * n^1.5`` typically): ~1e-9 of the targets'
  scale at n = 3,000 in float64, far below 1e-5.
- random a (n > d): the smallest of n random gaps is about R / n^2, one weight is about
  ``max|dy| n^2 / R``, and the error grows like ``eps * n^2 * max|y|`` (times a log n from the
  other small gaps): 1e-6 to 1e-5 of the scale at n = 100,000 in float64 (measured: Gaussian and
  +-1 targets), but far above 1 in float32
  (eps 6e-8), where 100,000 random projections cannot even be kept apart. The report says so
  (``min_gap`` against ``projection_tolerance``, ``max_abs_weight``, ``max_abs_error``).

The lemma's conditioning is reported as it states it: the smallest eigenvalue of A is
``min_i (z_i - b_i) = (1 - knot) * min gap``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from rethink_dist.config import EXPRESSIVITY_A as A_METHODS
from rethink_dist.errors import DataError

KNOT = 0.25  # where b_i sits between z_{i-1} and z_i (a fraction of the gap)


class RepeatedSamplesError(DataError):
    """Two equal samples with different targets: no function fits them."""


@dataclass
class FitReport:
    """What :func:`fit` built and how well it fits (attached to the module as ``.report``)."""

    n: int  # samples given
    n_distinct: int  # distinct samples = hidden units
    d: int
    outputs: int  # 1 for scalar targets, k for n x k targets
    params: int  # 2m + d (scalar) or d + m + k m (k outputs), m = n_distinct
    dtype: str
    a_method: str  # "spaced" | "random" (and why, when "spaced" fell back)
    draws: int  # random draws of a tried
    min_gap: float  # smallest gap between sorted projections
    projection_tolerance: float  # rounding bound of one projection <a, x> in this dtype
    min_eigenvalue: float  # the lemma's min_i (z_i - b_i)
    max_abs_weight: float  # largest |w_j|
    target_scale: float  # max |y|
    max_abs_error: float | None  # max_i |c(x_i) - y_i| over all n samples (None: check=False)
    relative_error: float | None  # max_abs_error / target_scale
    build_seconds: float
    check_seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


class ReluInterpolant(nn.Module):
    """``c(x) = sum_j w_j * max(<a, x> - b_j, 0)``: parameters a (d), b (m), w (m or m x k).

    ``forward`` evaluates exactly this sum, rewritten with b sorted as ``c(b_k) + S_k (z - b_k)``
    for the k knots below ``z = <a, x>`` (``S_k`` the prefix sums of w, ``c(b_k)`` their running
    integral): O(N log m) for N inputs instead of O(N m), and more accurate: each output adds one
    local term to c(b_k) instead of m terms of size |w_j| |z - b_j| that cancel. :meth:`forward_dense`
    is the literal sum (at n = 100,000 random samples its rounding error is ~100x larger).
    """

    def __init__(self, a: torch.Tensor, b: torch.Tensor, w: torch.Tensor):
        super().__init__()
        self.a = nn.Parameter(a)
        self.b = nn.Parameter(b)
        self.w = nn.Parameter(w)
        self.report: FitReport | None = None

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.a.shape[0]:
            raise ValueError(f"input must be N x {self.a.shape[0]}, got shape {tuple(x.shape)}")
        return x.to(self.a.dtype) @ self.a

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self._project(x)
        b, w = self.b, self.w
        if b.numel() > 1 and bool((b[1:] < b[:-1]).any()):
            order = torch.argsort(b)
            b, w = b[order], w[order]
        slopes = torch.cumsum(w, 0)  # slope of c right of b_k
        db = torch.diff(b)
        steps = slopes[:-1] * (db if w.dim() == 1 else db[:, None])
        at_knots = torch.cat([torch.zeros_like(slopes[:1]), torch.cumsum(steps, 0)])  # c(b_k)
        k = torch.searchsorted(b.detach(), z.detach().contiguous(), side="left")  # #{j: b_j < z}
        idx = (k - 1).clamp(min=0)
        dz = z - b[idx]
        out = at_knots[idx] + slopes[idx] * (dz if w.dim() == 1 else dz[:, None])
        active = k > 0
        return torch.where(active if w.dim() == 1 else active[:, None], out, torch.zeros_like(out))

    @torch.no_grad()
    def forward_dense(self, x: torch.Tensor, max_elements: int = 1 << 24) -> torch.Tensor:
        """The literal ``relu(z - b) @ w``, in chunks of at most ``max_elements`` hidden values."""
        z = self._project(x)
        rows = max(1, max_elements // max(1, self.b.numel()))
        return torch.cat([torch.relu(z[i : i + rows, None] - self.b[None, :]) @ self.w for i in range(0, len(z), rows)])


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _projection_tolerance(a: torch.Tensor, max_row_norm: float, dtype: torch.dtype) -> float:
    """A (typical-case) rounding bound of <a, x>: 4 sqrt(d) eps |a| max|x|."""
    eps = torch.finfo(dtype).eps
    return 4.0 * math.sqrt(a.numel()) * eps * float(a.double().norm()) * max_row_norm


def _max_row_norm(X: torch.Tensor, max_elements: int = 1 << 22) -> float:
    """max_i |x_i| (inf or nan if X is not finite), in chunks: no temporary of X's size."""
    rows = max(1, max_elements // X.shape[1])
    return max(float(X[i : i + rows].norm(dim=1).max()) for i in range(0, X.shape[0], rows))


def _random_direction(d: int, gen: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    r = torch.randn(d, generator=gen, dtype=torch.float64)
    return (r / r.norm()).to(dtype)


def _distinct(X: torch.Tensor, z: np.ndarray, tol: float, Y: np.ndarray) -> np.ndarray:
    """Indices of the first occurrence of each distinct row of X (ascending).

    Equal rows project to (nearly) equal values, so only samples in runs of projections closer
    than ``tol`` are compared, by their exact bytes. Raises RepeatedSamplesError when equal rows
    carry different targets.
    """
    n = len(z)
    order = np.argsort(z, kind="stable")
    close = np.diff(z[order]) <= tol
    if not close.any():
        return np.arange(n)
    drop: list[int] = []
    pos = np.flatnonzero(close)
    starts = pos[np.r_[True, np.diff(pos) > 1]]
    ends = pos[np.r_[np.diff(pos) > 1, True]] + 1  # inclusive end of each run of close pairs
    for s, e in zip(starts, ends):
        seen: dict[bytes, int] = {}
        for i in sorted(int(v) for v in order[s : e + 1]):
            key = (X[i] + 0).cpu().numpy().tobytes()  # + 0 turns -0.0 into 0.0
            j = seen.setdefault(key, i)
            if j != i:
                if not np.array_equal(Y[i], Y[j]):
                    yi, yj = (Y[i][0], Y[j][0]) if Y.shape[1] == 1 else (Y[i].tolist(), Y[j].tolist())
                    raise RepeatedSamplesError(
                        f"samples {j} and {i} are equal but have different targets ({yj} vs {yi}): "
                        "no function fits both; remove one of them or give them the same target"
                    )
                drop.append(i)
    return np.setdiff1d(np.arange(n), np.asarray(drop, dtype=np.int64))


def _solve_weights(zs: np.ndarray, b: np.ndarray, Ys: np.ndarray) -> np.ndarray:
    """w from the recurrence on the slopes (float64, O(m) per output column)."""
    m, k = Ys.shape
    before = np.empty(m)  # b_i - z_{i-1} (0 for the first unit: no slope yet)
    before[0] = 0.0
    before[1:] = b[1:] - zs[:-1]
    diag = (zs - b).tolist()  # A_ii = z_i - b_i
    before = before.tolist()
    W = np.empty((m, k))
    for c in range(k):
        ys = Ys[:, c].tolist()
        s_prev, y_prev = 0.0, 0.0
        col = [0.0] * m
        for i in range(m):
            s = (ys[i] - y_prev - s_prev * before[i]) / diag[i]
            col[i] = s - s_prev
            s_prev, y_prev = s, ys[i]
        W[:, c] = col
    return W


def fit(
    X: torch.Tensor,
    y: torch.Tensor,
    *,
    a: str = "auto",
    knot: float = KNOT,
    seed: int = 0,
    check: bool = True,
    max_draws: int = 4,
) -> ReluInterpolant:
    """Build the section-4 network that maps each row of X to its target in y.

    X is n x d (float32 or float64, any device), y has length n (scalar targets: 2n + d weights)
    or is n x k (k outputs: d + n + k n weights). Returns a :class:`ReluInterpolant` whose
    ``.report`` (:class:`FitReport`) holds the fit error and the conditioning.
    """
    t0 = time.perf_counter()
    if not isinstance(X, torch.Tensor) or X.dim() != 2 or X.shape[0] < 1 or X.shape[1] < 1:
        raise ValueError(f"X must be a non-empty n x d tensor, got {getattr(X, 'shape', type(X))}")
    if X.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"X must be float32 or float64, got {X.dtype}")
    n, d = X.shape
    y = torch.as_tensor(y)
    if y.dim() not in (1, 2) or y.shape[0] != n:
        raise ValueError(f"y must have length n={n} (or be n x k), got shape {tuple(y.shape)}")
    if a not in A_METHODS:
        raise ValueError(f"a={a!r} is not valid; valid: {', '.join(A_METHODS)}")
    if not 0.0 < knot < 0.5:
        raise ValueError(f"knot={knot} must lie in (0, 0.5): the slope recurrence damps errors only then")
    max_row_norm = _max_row_norm(X)  # also the finiteness check of X, in O(d) rows at a time
    if not math.isfinite(max_row_norm) or not bool(torch.isfinite(y).all()):
        raise ValueError("X and y must be finite (no NaN or inf)")
    dtype = X.dtype
    Y = y.detach().to("cpu", torch.float64).reshape(n, -1).numpy()
    k = Y.shape[1]
    gen = torch.Generator().manual_seed(seed)

    # ---------------------------------------------------------------- repeated samples
    r = _random_direction(d, gen, dtype).to(X.device)
    z = (X @ r).double().cpu().numpy()
    keep = _distinct(X, z, _projection_tolerance(r, max_row_norm, dtype), Y)
    m = len(keep)
    keep_t = torch.from_numpy(keep).to(X.device)

    # ---------------------------------------------------------------- the direction a
    method, draws, a_vec, zu = "random", 1, r, z[keep]
    if a == "spaced" and m > d:
        raise ValueError(f"a='spaced' needs at most d={d} distinct samples, got {m}; use a='random' or 'auto'")
    if a == "spaced" or (a == "auto" and m <= d):
        Xu = X[keep_t].to(torch.float64)
        t = torch.arange(m, dtype=torch.float64, device=X.device) - (m - 1) / 2.0
        # Minimum-norm solution of Xu a = t: a = Xu^T v with (Xu Xu^T) v = t, by Cholesky (faster
        # than a QR here), plus one step of iterative refinement. The m x m Gram matrix is no larger
        # than Xu (m <= d). Linearly dependent samples make the Cholesky fail or the check below.
        L, info = torch.linalg.cholesky_ex(Xu @ Xu.T)
        if int(info) == 0:
            v = torch.cholesky_solve(t[:, None], L)
            v += torch.cholesky_solve(t[:, None] - Xu @ (Xu.T @ v), L)
            sol = (Xu.T @ v)[:, 0].to(dtype)
        else:
            sol = torch.zeros(d, dtype=dtype, device=X.device)
        del Xu, L
        z_sp = (X[keep_t] @ sol).double().cpu().numpy()
        if np.abs(z_sp - t.cpu().numpy()).max() <= 0.25:
            method, a_vec, zu = "spaced", sol, z_sp
        else:
            method = "random (spaced failed: the distinct samples are linearly dependent)"
    if method != "spaced":
        best = (np.diff(np.sort(zu)).min() if m > 1 else np.inf, a_vec, zu)
        while best[0] <= _projection_tolerance(best[1], max_row_norm, dtype) and draws < max_draws:
            draws += 1
            cand = _random_direction(d, gen, dtype).to(X.device)
            zc = (X[keep_t] @ cand).double().cpu().numpy()
            gap = np.diff(np.sort(zc)).min()
            if gap > best[0]:
                best = (gap, cand, zc)
        _, a_vec, zu = best

    # ---------------------------------------------------------------- knots b and weights w
    order = np.argsort(zu, kind="stable")
    zs = zu[order]
    gaps = np.diff(zs)
    if m > 1 and gaps.min() <= 0:
        i, j = keep[order[int(np.argmin(gaps))]], keep[order[int(np.argmin(gaps)) + 1]]
        raise ValueError(
            f"distinct samples {i} and {j} have the same projection in {str(dtype)[6:]} after {draws} draws of a: "
            "they cannot be told apart at this precision; use float64 or fewer samples"
        )
    np_dtype = np.float32 if dtype == torch.float32 else np.float64
    mean_gap = (zs[-1] - zs[0]) / (m - 1) if m > 1 else 1.0
    b = np.empty(m)
    b[0] = zs[0] - mean_gap
    b[1:] = zs[:-1] + knot * gaps
    b = b.astype(np_dtype).astype(np.float64)  # the stored (rounded) knots are the ones solved for
    diag = zs - b
    if (diag <= 0).any() or (m > 1 and (b[1:] < zs[:-1]).any()):
        raise ValueError(f"the projections are too close to interleave knots in {str(dtype)[6:]}; use float64")
    W = _solve_weights(zs, b, Y[keep][order])

    dev = X.device
    b_t = torch.from_numpy(b).to(dev, dtype)
    w_t = torch.from_numpy(W[:, 0] if y.dim() == 1 else W).to(dev, dtype)
    module = ReluInterpolant(a_vec.detach().clone(), b_t, w_t)
    build_seconds = time.perf_counter() - t0

    # ---------------------------------------------------------------- report
    t1 = time.perf_counter()
    scale = float(np.abs(Y).max())
    err = None
    if check:
        with torch.no_grad():
            pred = module(X).to(torch.float64).reshape(n, -1).cpu().numpy()
        err = float(np.abs(pred - Y).max())
    module.report = FitReport(
        n=n, n_distinct=m, d=d, outputs=k, params=count_params(module), dtype=str(dtype).replace("torch.", ""),
        a_method=method, draws=draws,
        min_gap=float(gaps.min()) if m > 1 else math.inf,
        projection_tolerance=_projection_tolerance(a_vec, max_row_norm, dtype),
        min_eigenvalue=float(diag.min()), max_abs_weight=float(np.abs(W).max()), target_scale=scale,
        max_abs_error=err, relative_error=None if err is None else err / (scale or 1.0),
        build_seconds=build_seconds, check_seconds=time.perf_counter() - t1,
    )
    return module
