"""The theory experiments of sections 4 and 5, as trial kinds.

:func:`run_expressivity` and :func:`run_kernel` take the options of the ``rethink-dist
expressivity`` and ``rethink-dist kernel`` commands as a dict (the CLIs call them too), validate
them (a bad value raises ConfigError with one line naming it and the valid choices) and return the
JSON-ready dict the commands write. Their options are the typed configs
:class:`~rethink_dist.config.ExpressivityConfig` and :class:`~rethink_dist.config.KernelConfig`
(:func:`validate_expressivity` and :func:`validate_kernel`: the checks alone, which a sweep runs
before Ray starts). The constructions live in :mod:`.expressivity` and :mod:`.kernel`.
"""

from __future__ import annotations

import math
import time
from typing import Any, Mapping

from rethink_dist.config import ExpressivityConfig, KernelConfig
from rethink_dist.errors import ConfigError, DataError


def validate_expressivity(params: Mapping[str, Any]) -> ExpressivityConfig:
    """The checked options of an expressivity trial (ConfigError: one line naming the value)."""
    return ExpressivityConfig.from_dict(params)


def validate_kernel(params: Mapping[str, Any]) -> KernelConfig:
    """The checked options of a kernel trial (ConfigError: one line naming the value)."""
    return KernelConfig.from_dict(params)


def run_expressivity(params: Mapping[str, Any]) -> dict[str, Any]:
    """Build the section-4 network on n samples and report its size, fit error and conditioning."""
    p = validate_expressivity(params).to_dict()
    import numpy as np
    import torch

    from rethink_dist.theory.expressivity import fit

    dtype = {"float32": torch.float32, "float64": torch.float64}[p["dtype"]]
    gen = torch.Generator().manual_seed(p["seed"])
    labels = None
    if p["dataset"] is None:
        n, d = p["n"], p["d"]
        num_classes = p["num_classes"] or 2
        X = torch.randn(n, d, generator=gen, dtype=dtype)
        if p["targets"] == "labels":
            labels = torch.randint(0, num_classes, (n,), generator=gen)
    else:
        from rethink_dist.data import load

        ds = load(p["dataset"], p["data_root"])
        avail = len(ds.train_y)
        n = avail if p["n"] is None else p["n"]
        if n > avail:
            raise ConfigError(f"n={n} exceeds the {avail} training samples of {p['dataset']!r}")
        d = int(np.prod(ds.train_x.shape[1:]))
        if p["d"] is not None and p["d"] != d:
            raise ConfigError(f"d={p['d']} does not match dataset {p['dataset']!r}, whose images have d={d}")
        if p["num_classes"] is not None and p["num_classes"] != ds.num_classes:
            raise ConfigError(f"num_classes={p['num_classes']} does not match dataset {p['dataset']!r} ({ds.num_classes})")
        num_classes = ds.num_classes
        X = torch.from_numpy(ds.train_x[:n].reshape(n, d)).to(dtype) / 255.0
        labels = torch.from_numpy(ds.train_y[:n])
    if p["targets"] == "gaussian":
        y = torch.randn(n, generator=gen, dtype=dtype)
        targets = "gaussian N(0, 1)"
    elif num_classes == 2:
        y = (2 * labels - 1).to(dtype)
        targets = "labels as +-1"
    else:
        y = torch.nn.functional.one_hot(labels, num_classes).to(dtype)
        targets = f"labels one-hot ({num_classes} outputs)"

    t0 = time.perf_counter()
    try:
        net = fit(X, y, a=p["a"], seed=p["seed"])
    except DataError:
        raise
    except ValueError as e:  # the construction's conditions on its input (e.g. a='spaced' needs n <= d)
        raise ConfigError(str(e)) from None
    seconds = time.perf_counter() - t0
    r = net.report
    out = {
        "n": n, "d": d, "params": r.params, "max_abs_error": r.max_abs_error,
        "min_eigenvalue": r.min_eigenvalue, "seconds": seconds,
    }
    out.update({
        "kind": "expressivity", "dataset": p["dataset"], "targets": targets, "dtype": p["dtype"], "seed": p["seed"],
        "outputs": r.outputs, "n_distinct": r.n_distinct, "params_formula": "2n + d" if r.outputs == 1 else "d + n + k n",
        "relative_error": r.relative_error, "target_scale": r.target_scale, "min_gap": r.min_gap,
        "projection_tolerance": r.projection_tolerance, "max_abs_weight": r.max_abs_weight,
        "a_method": r.a_method, "draws": r.draws, "build_seconds": r.build_seconds, "check_seconds": r.check_seconds,
    })
    return out


# ------------------------------------------------------------------------------ kernels
def run_kernel(params: Mapping[str, Any]) -> dict[str, Any]:
    """Minimum-norm (or ridge) kernel interpolation on a dataset; train/test error and norm."""
    from rethink_dist.theory import kernel as kn

    options = validate_kernel(params)
    p, cfg = options.to_dict(), options.data_config()
    import numpy as np
    import torch

    from rethink_dist.data import load
    from rethink_dist.data.memory import corrupt_dataset

    if p["device"] == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' but no CUDA device is available; valid here: auto, cpu")
    device = torch.device("cuda" if p["device"] == "cuda" or (p["device"] == "auto" and torch.cuda.is_available()) else "cpu")
    dtype = kn.DTYPES[p["dtype"]]

    t0 = time.perf_counter()
    ds = load(p["dataset"], p["data_root"])
    arrays = corrupt_dataset(ds, cfg.corruption)  # the same corruption module as the networks'
    n = len(arrays.train_y) if p["max_train"] is None else min(p["max_train"], len(arrays.train_y))
    train_x, train_y = arrays.train_x[:n], arrays.train_y[:n]
    if p["features"] == "raw":
        F_tr = kn.raw_features(train_x, dtype, device)
        F_te = kn.raw_features(arrays.test_x, dtype, device)
    else:
        try:
            conv = dict(num_filters=p["num_filters"], filter_size=p["filter_size"], pool=p["pool"], seed=p["seed"],
                        dtype=dtype, device=device)
            F_tr = kn.random_conv_features(train_x, **conv)
            F_te = kn.random_conv_features(arrays.test_x, **conv)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    Y = torch.nn.functional.one_hot(torch.from_numpy(train_y), ds.num_classes).to(device, dtype)
    extra = []  # (level, training labels, changed fraction) solved with the same factorization
    for lv in p["also_levels"] or ():
        more = corrupt_dataset(ds, cfg.replace(**{"corruption.kind": "labels" if lv > 0 else "none",
                                                  "corruption.level": lv}).corruption)
        extra.append((lv, more.train_y[:n], float(np.mean(more.changed[:n]))))
    if extra:
        Y = torch.cat([Y] + [torch.nn.functional.one_hot(torch.from_numpy(y), ds.num_classes).to(device, dtype)
                             for _, y, _ in extra], dim=1)
    budget = p["memory_gb"] * 2**30 if p["memory_gb"] is not None else None
    progress = kn.Progress(n)
    try:
        fitted = kn.interpolate(F_tr, Y, kernel=p["kernel"], gamma=p["gamma"], ridge=p["ridge"], budget_bytes=budget,
                                block=p["block_size"], n_query=len(F_te), tol=p["tol"], max_iter=p["max_iter"],
                                progress=progress)
    except kn.KernelMemoryError as e:
        raise ConfigError(str(e)) from None
    t1 = time.perf_counter()
    test_pred = kn.predict(F_te, F_tr, fitted.alpha, p["kernel"], fitted.gamma, kn.wide_block(fitted.block, n),
                           progress=progress)
    predict_seconds = fitted.predict_seconds + time.perf_counter() - t1
    k = ds.num_classes
    test_labels = torch.from_numpy(arrays.test_y).to(device)
    sol = fitted.solution
    e_k = kn.gram_entry_error_bound(F_tr, p["kernel"], fitted.gamma)

    def block(j: int, labels: np.ndarray) -> dict[str, Any]:
        """Errors, norm, residuals and iterations of the j-th label set's k columns."""
        cols = slice(j * k, (j + 1) * k)
        a, pred, target = fitted.alpha[:, cols], fitted.train_pred[:, cols], Y[:, cols].double()
        res = pred - target  # (K + ridge I) alpha - Y, K from the features in float64
        its = (sol.column_iterations or [])[cols]
        bound = kn.residual_bound(a, e_k, p["tol"]) if sol.solver == "cholesky_pcg" else None
        out = {"train_error": float((pred.argmax(1) != torch.from_numpy(labels).to(device)).double().mean()),
               "test_error": float((test_pred[:, cols].argmax(1) != test_labels).double().mean()),
               "norm": math.sqrt(max(0.0, float((a * (pred - p["ridge"] * a)).sum()))),
               "max_fit_residual": float(res.abs().max()),
               "relative_residual": float(res.norm() / target.norm()),
               "residual_bound": bound,
               "iterations_to_fit": (max(its) if its and min(its) >= 0 else None)}
        # An interpolant: the solve reached its tolerance and, recomputed from the features, every
        # entry of K alpha is within 0.5 of its one-hot target (so each sample is classified as its label).
        out["interpolated"] = bool(p["ridge"] == 0 and sol.converged and out["max_fit_residual"] < 0.5)
        return out

    main = block(0, train_y)
    also = [{"level": lv, "labels_changed": changed, **block(j, y)} for j, (lv, y, changed) in enumerate(extra, 1)]
    return {
        "n_train": n, "n_test": len(arrays.test_y), "train_error": main["train_error"],
        "test_error": main["test_error"], "norm": main["norm"], "seconds": time.perf_counter() - t0,
        "kind": "kernel", "dataset": p["dataset"], "kernel": p["kernel"],
        "gamma": fitted.gamma if p["kernel"] != "linear" else None,
        "features": p["features"], "feature_dim": int(F_tr.shape[1]),
        "num_filters": p["num_filters"] if p["features"] == "random_conv" else None,
        "ridge": p["ridge"], "corruption": p["corruption"], "level": p["level"],
        "labels_changed": float(np.mean(arrays.changed[:n])),
        "interpolated": main["interpolated"] and all(a["interpolated"] for a in also),
        "max_fit_residual": main["max_fit_residual"], "relative_residual": main["relative_residual"],
        "residual_bound": main["residual_bound"], "stored_max_residual": sol.stored_max_residual,
        "stored_max_residual_narrow_products": sol.stored_max_residual_narrow,
        "tolerance": p["tol"], "iterations": sol.iterations, "iterations_to_fit": main["iterations_to_fit"],
        "refinements": sol.refinements, "shift": sol.shift, "gram_entry_error_bound": e_k,
        "also_levels": also,
        "singular": sol.singular, "solver": sol.solver, "solver_detail": sol.detail, "rank": sol.rank,
        "dtype": p["dtype"], "device": str(device), "block_size": fitted.block,
        "gram_solve_seconds": fitted.gram_solve_seconds, "solve_seconds_by_step": sol.seconds,
        "predict_seconds": predict_seconds, **_peak_memory(device),
    }


def _peak_memory(device) -> dict[str, float | None]:
    """Measured peaks: this process's resident memory (its high-water mark, for the whole process
    life) and, on CUDA, the most the caching allocator handed out."""
    import resource
    import sys

    import torch

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    rss_bytes = rss if sys.platform == "darwin" else rss * 1024
    gpu = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {"peak_rss_gib": rss_bytes / 2**30, "peak_gpu_gib": None if gpu is None else gpu / 2**30}
