"""Architectures and data sets from outside the package, named in a config.

``model.name`` takes, besides the package's own five architectures:

- ``torchvision:<builder>``: a classification model of torchvision (``torchvision:resnet18``),
  randomly initialised, built for the data's input shape and class count;
- ``timm:<name>``: ``timm.create_model(name)`` (the optional extra: ``pip install 'rethink-dist[timm]'``);
- ``<module>:<callable>``: your own builder, called as ``callable((C, H, W), num_classes, **kwargs)``
  and returning an ``nn.Module``; ``dropout=p`` and ``batch_norm=False`` are passed only when the
  config asks for them, and only if the callable takes them.

``data.name`` takes, besides the built-in data sets, ``<module>:<callable>``: a function of no
arguments returning ``(train_images, train_labels, test_images, test_labels)`` as numpy arrays,
N x H x W x C uint8 images and N integer labels (0 .. classes-1).

Your module is imported by its dotted name from ``sys.path`` and the current directory. On a Ray
cluster every worker must import it too: ship it with Ray's runtime environment (a sweep file's
``RUNTIME_ENV``, e.g. ``{"py_modules": ["my_research"]}``, or ``ray job submit --working-dir``);
docs/own-code.md shows both. The models are built in :mod:`rethink_dist.models.external`; this
module only names, imports and checks (it is below the data and model layers).
"""

from __future__ import annotations

import difflib
import importlib
import os
import re
import sys
from typing import Any, Callable

import numpy as np

from rethink_dist.architectures import MODELS
from rethink_dist.errors import ConfigError, DataError
from rethink_dist.protocol import DATASETS, DatasetInfo, paper_decay_per_epoch

LIBRARIES = ("torchvision", "timm")
TIMM_EXTRA = "pip install 'rethink-dist[timm]'"
_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
USER_DATA_EPOCHS = 100  # [open] the default epoch cap of a user's data set (CIFAR-10's)


def is_external(name: str) -> bool:
    """Whether a model or data set name points outside the package (``prefix:target``)."""
    return isinstance(name, str) and ":" in name


def split(name: str, what: str) -> tuple[str, str]:
    """``(prefix, target)`` of ``prefix:target``; ConfigError when the name is not of that form."""
    if not _SPEC.match(name):
        raise ConfigError(f"{what}={name!r} is not a valid name; valid: a built-in name, torchvision:<builder>, "
                          "timm:<name> or <module>:<callable> (a dotted module path and a function in it)")
    prefix, target = name.split(":", 1)
    return prefix, target


def model_kind(name: str) -> str:
    """``builtin``, ``torchvision``, ``timm`` or ``module`` (the user's own callable)."""
    if not is_external(name):
        return "builtin"
    prefix, _ = split(name, "model.name")
    return prefix if prefix in LIBRARIES else "module"


# ------------------------------------------------------------------------------ importing
def import_callable(spec: str, what: str) -> Callable[..., Any]:
    """The object ``module:attr`` names, imported; ConfigError (one line) when it cannot be."""
    module_name, attr = split(spec, what)
    try:
        module = _import(module_name)
    except ImportError as e:
        raise ConfigError(f"{what}={spec!r}: module {module_name!r} does not import ({type(e).__name__}: "
                          f"{_first_line(e)}); valid: a module importable here and on every Ray worker (ship it "
                          "with the sweep file's RUNTIME_ENV or `ray job submit --working-dir`; docs/own-code.md)"
                          ) from None
    except Exception as e:  # the user's module raised while importing
        raise ConfigError(f"{what}={spec!r}: importing {module_name!r} raised {type(e).__name__}: "
                          f"{_first_line(e)}") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{what}={spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"{what}={spec!r}: {attr!r} is a {type(obj).__name__}, not a callable")
    return obj


def _import(module_name: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        # `python -m` puts the current directory on sys.path, a console script does not: look there too.
        here = os.getcwd()
        if e.name != module_name.split(".")[0] or here in sys.path:
            raise
        sys.path.append(here)
        return importlib.import_module(module_name)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# ------------------------------------------------------------------------------ model names
def check_model_name(name: str) -> str:
    """Check that ``name`` names a model that exists (without building it); returns its kind."""
    if name in MODELS:
        return "builtin"
    if not is_external(name):
        raise ConfigError(f"unknown architecture {name!r}; valid: {', '.join(sorted(MODELS))}, torchvision:<builder>, "
                          "timm:<name> or <module>:<callable>")
    kind = model_kind(name)
    _, target = split(name, "model.name")
    if kind == "torchvision":
        valid = torchvision_models()
        if target not in valid:
            raise ConfigError(f"model.name={name!r}: torchvision has no classification model {target!r}; valid: "
                              f"{_close(target, valid)}")
    elif kind == "timm":
        timm = import_timm(name)
        if not timm.is_model(target):
            raise ConfigError(f"model.name={name!r}: timm has no model {target!r}; valid: "
                              f"{_close(target, timm.list_models())}")
    else:
        import_callable(name, "model.name")
    return kind


def torchvision_models() -> list[str]:
    """torchvision's classification builders (the detection, segmentation and video ones left out)."""
    import torchvision.models

    return sorted(torchvision.models.list_models(module=torchvision.models))


def import_timm(name: str):
    try:
        import timm
    except ImportError:
        raise ConfigError(f"model.name={name!r} needs timm, which is not installed; install the extra: {TIMM_EXTRA}"
                          ) from None
    return timm


def _close(target: str, valid: list[str]) -> str:
    near = difflib.get_close_matches(target, valid, n=5, cutoff=0.5)
    return ", ".join(near) + " (closest names)" if near else f"one of {len(valid)} names (list_models())"


# ------------------------------------------------------------------------------ data sets
_USER_DATA: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}


def load_user_data(spec: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The arrays ``module:callable`` returns, checked; loaded once per process."""
    if spec not in _USER_DATA:
        fn = import_callable(spec, "data.name")
        try:
            out = fn()
        except Exception as e:
            raise DataError(f"data.name={spec!r}: the loader raised {type(e).__name__}: {_first_line(e)}") from None
        _USER_DATA[spec] = check_user_arrays(spec, out)
    return _USER_DATA[spec]


def check_user_arrays(spec: str, out: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The four arrays, or DataError naming what is wrong and what is valid."""
    valid = ("valid: (train_images, train_labels, test_images, test_labels), numpy arrays of N x H x W x C "
             "uint8 images and N integer labels >= 0")
    if not isinstance(out, (tuple, list)) or len(out) != 4:
        got = f"a {type(out).__name__}" + (f" of {len(out)} items" if isinstance(out, (tuple, list)) else "")
        raise DataError(f"data.name={spec!r} returned {got}; {valid}")
    names = ("train_images", "train_labels", "test_images", "test_labels")
    arrays = []
    for key, a in zip(names, out):
        if not isinstance(a, np.ndarray):
            raise DataError(f"data.name={spec!r}: {key} is a {type(a).__name__}, not a numpy array; {valid}")
        arrays.append(a)
    tr_x, tr_y, te_x, te_y = arrays
    for key, x, y in (("train", tr_x, tr_y), ("test", te_x, te_y)):
        if x.dtype != np.uint8 or x.ndim != 4 or min(x.shape) < 1:
            raise DataError(f"data.name={spec!r}: {key}_images has shape {x.shape} and dtype {x.dtype}; {valid}")
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"data.name={spec!r}: {key}_labels has shape {y.shape} and dtype {y.dtype}; {valid}")
        if len(y) != len(x):
            raise DataError(f"data.name={spec!r}: {len(x)} {key} images but {len(y)} {key} labels; {valid}")
        if len(y) and y.min() < 0:
            raise DataError(f"data.name={spec!r}: {key}_labels holds {int(y.min())}; {valid}")
    if tr_x.shape[1:] != te_x.shape[1:]:
        raise DataError(f"data.name={spec!r}: train images are {tr_x.shape[1:]} but test images {te_x.shape[1:]} "
                        "(H x W x C); valid: the same shape")
    if int(max(tr_y.max(), te_y.max() if len(te_y) else 0)) < 1:
        raise DataError(f"data.name={spec!r}: every label is 0; valid: at least two classes")
    return (np.ascontiguousarray(tr_x), tr_y.astype(np.int64), np.ascontiguousarray(te_x), te_y.astype(np.int64))


def user_dataset_info(spec: str) -> DatasetInfo:
    """The facts of a user's data set, from its arrays: classes, shape, and the defaults its trials take.

    [open] choices, logged with each run as the resolved config: the model sees the whole image
    (crop = the shorter side); a random crop pads by 4 pixels on images of 32 pixels or more
    (CIFAR-10's usual), by side/8 (at least 1) on smaller ones; the paper's learning-rate decay
    (0.95 per 50,000 images) per epoch of N images; at most 100 epochs.
    """
    tr_x, tr_y, _, te_y = load_user_data(spec)
    n, h, w, c = tr_x.shape
    side = min(h, w)
    classes = int(max(tr_y.max(), te_y.max() if len(te_y) else 0)) + 1
    return DatasetInfo(spec, classes, (h, w, c), side, 4 if side >= 32 else max(1, side // 8),
                       paper_decay_per_epoch(n), USER_DATA_EPOCHS, ("memory",), False,
                       f"your data set: {spec}")


def dataset_facts(name: str) -> DatasetInfo:
    """The facts of a built-in data set or of a user's ``module:callable``; ConfigError if neither."""
    if name in DATASETS:
        return DATASETS[name]
    if is_external(name):
        split(name, "data.name")
        return user_dataset_info(name)
    raise ConfigError(f"unknown dataset {name!r}; valid: {', '.join(sorted(DATASETS))} or <module>:<callable> "
                      "(your own data set)")
