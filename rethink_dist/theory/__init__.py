"""The theory experiments of sections 4 and 5, as trial kinds.

:func:`run_expressivity` and :func:`run_kernel` take the options of the ``rethink-dist
expressivity`` and ``rethink-dist kernel`` commands as a dict (the CLIs call them too), validate
them (a bad value raises ConfigError with one line naming it and the valid choices) and return the
JSON-ready dict the commands write. :func:`validate_expressivity` and :func:`validate_kernel` are
the checks alone (the sweep runner calls them before Ray starts). The constructions live in :mod:`.expressivity` and :mod:`.kernel`.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Mapping

from rethink_dist.config import TrialConfig
from rethink_dist.errors import ConfigError

EXPRESSIVITY_DEFAULTS: dict[str, Any] = {
    "n": None,  # samples (required without a dataset; with one: default all training samples)
    "d": None,  # dimension (required without a dataset; with one it is the image size)
    "seed": 0,  # the data, the targets and the random direction a
    "dtype": "float64",  # of the samples, the targets and the network
    "targets": "gaussian",  # gaussian: N(0, 1) | labels: class labels (2 classes: +-1; more: one-hot)
    "num_classes": None,  # labels without a dataset (default 2); with one: the dataset's
    "dataset": None,  # None: Gaussian samples N(0, I_d); else the first n training images / 255
    "data_root": None,
    "a": "auto",  # auto | spaced | random (see rethink_dist.theory.expressivity)
}

KERNEL_DEFAULTS: dict[str, Any] = {
    "dataset": "digits",
    "data_root": None,
    "kernel": "rbf",  # linear | rbf
    "gamma": None,  # rbf width; None: 1 / (D * Var(features)) (scikit-learn's 'scale')
    "features": "raw",  # raw (pixels / 255) | random_conv
    "num_filters": 256,  # random_conv: filters of the random convolutional layer
    "filter_size": 5,
    "pool": 2,  # random_conv: average-pool each filter map to pool x pool
    "ridge": 0.0,  # l2 regularization lambda; 0: the minimum-norm interpolant
    "max_train": None,  # use only the first N training samples
    "corruption": "none",  # the randomization tests' corruptions (rethink_dist.corruption)
    "level": 0.0,  # label-corruption probability (corruption=labels)
    "corruption_seed": 0,
    # More label-corruption levels solved with the same factorization of K (labels change Y, not K):
    # each adds a result under "also_levels" (train/test error, norm). Needs corruption none or labels.
    "also_levels": None,
    "dtype": "float64",  # float32 | float64
    "device": "auto",  # auto (cuda when present) | cpu | cuda
    "memory_gb": None,  # budget for K, features and blocks; None: 80% of the free memory
    "block_size": None,  # Gram rows per block; None: from the budget
    "seed": 0,  # the random filters
}


def _config_error(msg: str) -> Exception:
    return ConfigError(msg)


def _merge(params: Mapping[str, Any], defaults: dict[str, Any], kind: str) -> dict[str, Any]:
    if not isinstance(params, Mapping):
        raise _config_error(f"{kind} params must be a dict, got {type(params).__name__}")
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise _config_error(f"unknown {kind} option(s) {unknown}; valid: {', '.join(sorted(defaults))}")
    out = dict(defaults)
    out.update({k: v for k, v in params.items() if v is not None})
    return out


def _int(p: dict, key: str, lo: int, optional: bool = True) -> None:
    v = p[key]
    if v is None and optional:
        return
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise _config_error(f"{key} must be an integer >= {lo}, got {v!r}")


def _float(p: dict, key: str, lo: float, lo_open: bool, optional: bool = True) -> None:
    v = p[key]
    if v is None and optional:
        return
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (v > lo if lo_open else v >= lo)
    if not ok:
        raise _config_error(f"{key} must be a finite number {'>' if lo_open else '>='} {lo}, got {v!r}")
    p[key] = float(v)


def _choice(p: dict, key: str, valid: tuple) -> None:
    if p[key] not in valid:
        raise _config_error(f"{key}={p[key]!r} is not valid; valid: {', '.join(map(str, valid))}")


def _dataset_config(p: dict, corruption: dict | None = None):
    """Validate dataset (+ corruption) through the trial config, the one place those rules live."""
    root = p["data_root"]
    if root and "://" not in root and not Path(root).exists():
        raise _config_error(f"data_root {root!r} does not exist")
    d = {"data": {"name": p["dataset"], "root": p["data_root"], "max_train": p.get("max_train")}}
    if corruption:
        d["corruption"] = corruption
    return TrialConfig.from_dict(d)


# ------------------------------------------------------------------------------ expressivity
def validate_expressivity(params: Mapping[str, Any]) -> dict[str, Any]:
    """The full, checked options of an expressivity trial (ConfigError: one line naming the value)."""
    p = _merge(params, EXPRESSIVITY_DEFAULTS, "expressivity")
    _int(p, "n", 1)
    _int(p, "d", 1)
    _int(p, "seed", 0, optional=False)
    _int(p, "num_classes", 2)
    _choice(p, "dtype", ("float32", "float64"))
    _choice(p, "targets", ("gaussian", "labels"))
    from rethink_dist.theory.expressivity import A_METHODS

    _choice(p, "a", A_METHODS)
    if p["dataset"] is None:
        for key in ("n", "d"):
            if p[key] is None:
                raise _config_error(f"{key} is required without a dataset (Gaussian samples in d dimensions)")
    else:
        _dataset_config(p)
    return p


def run_expressivity(params: Mapping[str, Any]) -> dict[str, Any]:
    """Build the section-4 network on n samples and report its size, fit error and conditioning."""
    p = validate_expressivity(params)
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
            raise _config_error(f"n={n} exceeds the {avail} training samples of {p['dataset']!r}")
        d = int(np.prod(ds.train_x.shape[1:]))
        if p["d"] is not None and p["d"] != d:
            raise _config_error(f"d={p['d']} does not match dataset {p['dataset']!r}, whose images have d={d}")
        if p["num_classes"] is not None and p["num_classes"] != ds.num_classes:
            raise _config_error(f"num_classes={p['num_classes']} does not match dataset {p['dataset']!r} ({ds.num_classes})")
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
    net = fit(X, y, a=p["a"], seed=p["seed"])
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
def validate_kernel(params: Mapping[str, Any]) -> dict[str, Any]:
    """The full, checked options of a kernel trial (ConfigError: one line naming the value)."""
    from rethink_dist.theory import kernel as kn

    p = _merge(params, KERNEL_DEFAULTS, "kernel")
    _choice(p, "kernel", kn.KERNELS)
    _choice(p, "features", kn.FEATURES)
    _choice(p, "dtype", tuple(kn.DTYPES))
    _choice(p, "device", ("auto", "cpu", "cuda"))
    _float(p, "gamma", 0.0, lo_open=True)
    _float(p, "ridge", 0.0, lo_open=False, optional=False)
    _float(p, "memory_gb", 0.0, lo_open=True)
    _float(p, "level", 0.0, lo_open=False, optional=False)
    for key, lo in (("num_filters", 1), ("filter_size", 1), ("pool", 1), ("max_train", 1), ("block_size", 1)):
        _int(p, key, lo)
    _int(p, "seed", 0, optional=False)
    _int(p, "corruption_seed", 0, optional=False)
    levels = p["also_levels"]
    if levels is not None:
        if not isinstance(levels, (list, tuple)) or not levels or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= v <= 1.0 for v in levels):
            raise _config_error(f"also_levels={levels!r} is not valid; valid: a list of label-corruption levels in [0, 1]")
        if p["corruption"] not in ("none", "labels"):
            raise _config_error(f"also_levels needs corruption 'none' or 'labels' (a pixel corruption changes K), "
                                f"not {p['corruption']!r}")
        p["also_levels"] = [float(v) for v in levels]
    if p["gamma"] is not None and p["kernel"] != "rbf":
        raise _config_error(f"gamma={p['gamma']} only applies to kernel='rbf', not {p['kernel']!r}")
    _dataset_config(p, _corruption(p))
    return p


def _corruption(p: dict) -> dict:
    return {"kind": p["corruption"], "level": p["level"], "seed": p["corruption_seed"]}


def run_kernel(params: Mapping[str, Any]) -> dict[str, Any]:
    """Minimum-norm (or ridge) kernel interpolation on a dataset; train/test error and norm."""
    from rethink_dist.theory import kernel as kn

    p = validate_kernel(params)
    cfg = _dataset_config(p, _corruption(p))
    import numpy as np
    import torch

    from rethink_dist.data import load
    from rethink_dist.data.memory import corrupt_dataset

    if p["device"] == "cuda" and not torch.cuda.is_available():
        raise _config_error("device='cuda' but no CUDA device is available; valid here: auto, cpu")
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
            raise _config_error(str(e)) from None
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
    try:
        fitted = kn.interpolate(F_tr, Y, kernel=p["kernel"], gamma=p["gamma"], ridge=p["ridge"], budget_bytes=budget,
                                block=p["block_size"], n_query=len(F_te))
    except kn.KernelMemoryError as e:
        raise _config_error(str(e)) from None
    t1 = time.perf_counter()
    test_pred = kn.predict(F_te, F_tr, fitted.alpha, p["kernel"], fitted.gamma, fitted.block)
    predict_seconds = fitted.predict_seconds + time.perf_counter() - t1
    k = ds.num_classes
    test_labels = torch.from_numpy(arrays.test_y).to(device)

    def block(j: int, labels: np.ndarray) -> dict[str, float]:
        """Errors, norm and fit residual of the j-th label set's k columns."""
        cols = slice(j * k, (j + 1) * k)
        a, pred, target = fitted.alpha[:, cols], fitted.train_pred[:, cols], Y[:, cols]
        return {"train_error": float((pred.argmax(1) != torch.from_numpy(labels).to(device)).double().mean()),
                "test_error": float((test_pred[:, cols].argmax(1) != test_labels).double().mean()),
                "norm": math.sqrt(max(0.0, float((a * pred).sum()))),
                "max_fit_residual": float((pred - (target - p["ridge"] * a)).abs().max())}

    main = block(0, train_y)
    also = [{"level": lv, "labels_changed": changed, **block(j, y)} for j, (lv, y, changed) in enumerate(extra, 1)]
    sol = fitted.solution
    return {
        "n_train": n, "n_test": len(arrays.test_y), "train_error": main["train_error"],
        "test_error": main["test_error"], "norm": main["norm"], "seconds": time.perf_counter() - t0,
        "kind": "kernel", "dataset": p["dataset"], "kernel": p["kernel"], "gamma": fitted.gamma if p["kernel"] == "rbf" else None,
        "features": p["features"], "feature_dim": int(F_tr.shape[1]),
        "num_filters": p["num_filters"] if p["features"] == "random_conv" else None,
        "ridge": p["ridge"], "corruption": p["corruption"], "level": p["level"],
        "labels_changed": float(np.mean(arrays.changed[:n])),
        "max_fit_residual": main["max_fit_residual"], "also_levels": also,
        "singular": sol.singular, "singular_detail": sol.detail, "solver": sol.solver, "rank": sol.rank,
        "dtype": p["dtype"], "device": str(device), "block_size": fitted.block,
        "gram_solve_seconds": fitted.gram_solve_seconds, "predict_seconds": predict_seconds,
        **_peak_memory(device),
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
