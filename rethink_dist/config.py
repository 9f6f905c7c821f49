"""Trial configuration: frozen dataclasses, a strict ``from_dict`` and a flat view for logging.

A trial is fully described by a :class:`TrialConfig`. Its defaults are the dataclasses' below,
except the fields left as ``None``: those depend on the data set and the architecture, and
:meth:`TrialConfig.resolved`, the one resolution step, fills them from the table of
:mod:`rethink_dist.defaults`. So a config stays short and the choice made is still logged with
every run (``to_flat`` is taken of the resolved config); ``rethink-dist train --print-config``
prints a resolved config. The [open] choices are documented in docs/protocol.md. "Time to overfit" is the first step at which the training accuracy reaches
``stop.fit_threshold`` (default 1.0: the whole training set).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from rethink_dist import protocol
from rethink_dist.architectures import MODELS
from rethink_dist.defaults import dependent_defaults
from rethink_dist.errors import ConfigError
from rethink_dist.external import check_model_name, dataset_facts

_DEFER_CHECKS = contextvars.ContextVar("rethink_defer_checks", default=False)


@contextlib.contextmanager
def deferred_checks():
    """While inside, ``TrialConfig.from_dict`` and ``replace`` check keys and types but leave the value
    checks to the caller: a sweep file's trials are checked one by one afterwards, so that an error
    names the trial (its index and run name), whichever way the file built it."""
    token = _DEFER_CHECKS.set(True)
    try:
        yield
    finally:
        _DEFER_CHECKS.reset(token)


__all__ = ["ConfigError", "ExpressivityConfig", "KernelConfig", "TrialConfig", "deferred_checks", "imagenet_trial",
           "run_name"]

# The randomization tests' corruptions (implemented in rethink_dist.corruption).
CORRUPTION_KINDS = ("none", "labels", "shuffled_pixels", "random_pixels", "gaussian")
PIXEL_CORRUPTIONS = ("shuffled_pixels", "random_pixels", "gaussian")
LOADERS = ("memory", "ffcv")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")

@dataclass(frozen=True)
class DataConfig:
    name: str = "digits"
    root: str | None = None  # folder with the raw files (cifar10: torchvision's layout)
    download: bool = False  # fetch the raw files when missing (needs the network)
    loader: str = "memory"  # memory | ffcv
    beton_dir: str | None = None  # folder with train.beton / test.beton (loader=ffcv)
    image_size: int | None = None  # input side after cropping; None: the dataset's crop (rethink_dist.defaults)
    max_train: int | None = None  # use only the first N training samples (None: all)
    channels: int | None = None  # model input channels (a gray channel repeated); None: rethink_dist.defaults
    # Train on a seeded random fraction of the training set (corruption.subset_indices); evaluation,
    # corruption and the per-sample records keep covering every training sample. None: all of it.
    subset: float | None = None
    subset_seed: int = 0


@dataclass(frozen=True)
class CorruptionConfig:
    kind: str = "none"  # none | labels | shuffled_pixels | random_pixels | gaussian
    level: float = 0.0  # probability that a training label is redrawn (kind=labels)
    seed: int = 0  # the corruption is a pure function of (seed, split, sample index)
    corrupt_test: bool = False  # also corrupt the test labels (the paper does not)


@dataclass(frozen=True)
class ModelConfig:
    name: str = "mlp_1x512"
    kwargs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OptimConfig:
    lr: float | None = None  # None: the paper's rate for the architecture (rethink_dist.defaults)
    momentum: float = 0.9
    lr_decay: float | None = None  # multiplied into lr after every epoch; None: the dataset's (rethink_dist.defaults)
    batch_size: int = 128
    epochs: int | None = None  # maximum epochs; None: the dataset's (rethink_dist.defaults)


@dataclass(frozen=True)
class RegConfig:
    weight_decay: float = 0.0
    augment: bool = False  # random crop (+ flips for ImageNet) instead of a centre crop
    dropout: float = 0.0
    batch_norm: bool = True  # inception_small only: False removes every BatchNorm


@dataclass(frozen=True)
class StopConfig:
    stop_when_fitted: bool = False  # end the trial once the training set is fitted
    fit_threshold: float = 1.0  # training accuracy that counts as "fitted"


@dataclass(frozen=True)
class ResourceConfig:
    cpus: float = 1.0  # per trial (or per data-parallel worker)
    gpus: float = 0.0  # per trial (or per data-parallel worker); fractions let small trials share a GPU
    ddp_workers: int = 0  # >0: data-parallel trial with this many Ray Train workers
    # A data-parallel trial that resizes: None keeps it at ddp_workers; 1 <= m < ddp_workers lets it go
    # on with as few as m workers when nodes are lost, and grow back to ddp_workers (Ray Train's
    # elastic training; rethink_dist.sweep.ddp)
    ddp_min_workers: int | None = None
    ddp_resize_check_s: float = 60.0  # an elastic trial checks this often whether it can grow back


@dataclass(frozen=True)
class TrialConfig:
    data: DataConfig = field(default_factory=DataConfig)
    corruption: CorruptionConfig = field(default_factory=CorruptionConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    reg: RegConfig = field(default_factory=RegConfig)
    stop: StopConfig = field(default_factory=StopConfig)
    resources: ResourceConfig = field(default_factory=ResourceConfig)
    seed: int = 0  # model initialisation, batch order, augmentation, dropout
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16
    name: str | None = None  # None: built from the resolved config (run_name; rethink_dist.defaults)
    sample_records: bool = False  # per training sample: first epoch fitted for good, forgetting events

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrialConfig":
        """Build and validate a config from a nested dict; unknown keys and bad values are refused."""
        cfg = _from_dict(cls, d, "")
        if not _DEFER_CHECKS.get():
            cfg.validate()
        return cfg

    def replace(self, **changes: Any) -> "TrialConfig":
        """A copy with dotted-path changes, e.g. ``replace(**{"optim.lr": 0.1})``, validated."""
        d = self.to_dict()
        for path, value in changes.items():
            node = d
            parts = path.split(".")
            for p in parts[:-1]:
                if not isinstance(node.get(p), dict):
                    raise ConfigError(f"unknown config key {path!r}")
                node = node[p]
            if parts[-1] not in node:
                raise ConfigError(f"unknown config key {path!r}; valid at that level: {', '.join(sorted(node))}")
            node[parts[-1]] = value
        return TrialConfig.from_dict(d)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["model"]["kwargs"] = dict(self.model.kwargs)
        return d

    def to_flat(self) -> dict[str, Any]:
        """A flat ``{"optim.lr": 0.01, ...}`` view of the resolved config, for logging."""
        return _flatten(self.resolved().to_dict())

    def fingerprint(self) -> str:
        """A short stable hash of what determines the results (the resolved config without resources)."""
        d = self.resolved().to_dict()
        d.pop("resources")  # where a trial runs does not change what it computes
        if d["data"]["subset"] is None:  # options added later, left out when off: earlier trials keep their ids
            del d["data"]["subset"], d["data"]["subset_seed"]
        blob = json.dumps(d, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    # ------------------------------------------------------------------ defaults
    def resolved(self) -> "TrialConfig":
        """What the trial runs with: the one resolution step. Each ``None`` field of the table in
        :mod:`rethink_dist.defaults` takes its value there for this data set and architecture, and a
        ``None`` name the run name; a value the config gives is kept. Trials run the resolved config,
        and it is what is logged (``to_flat``) and hashed (``fingerprint``)."""
        sections: dict[str, Any] = {}
        for key, value in dependent_defaults(self.data.name, self.model.name).items():
            section, attr = key.split(".")
            current = sections.get(section, getattr(self, section))
            if getattr(current, attr) is None:
                sections[section] = dataclasses.replace(current, **{attr: value})
        cfg = dataclasses.replace(self, **sections)
        return cfg if cfg.name is not None else dataclasses.replace(cfg, name=run_name(cfg))

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise ConfigError for the first invalid value, naming it and what is valid."""
        info = dataset_facts(self.data.name)
        _choice("data.loader", self.data.loader, LOADERS)
        if self.data.loader not in info.loaders:
            raise ConfigError(
                f"dataset {self.data.name!r} cannot use data.loader={self.data.loader!r}; valid: {', '.join(info.loaders)}"
            )
        if self.data.loader == "ffcv" and not self.data.beton_dir:
            raise ConfigError("data.loader='ffcv' needs data.beton_dir (the folder with train.beton and test.beton)")
        if self.data.image_size is not None and self.data.image_size < 1:
            raise ConfigError(f"data.image_size must be >= 1, got {self.data.image_size}")
        if self.data.image_size is not None and info.image_shape is not None:
            side = min(info.image_shape[:2])
            if self.data.image_size > side:
                raise ConfigError(f"data.image_size={self.data.image_size} is larger than the "
                                  f"{info.image_shape[0]}x{info.image_shape[1]} images of {self.data.name!r}; "
                                  f"valid: 1..{side}")
        if self.data.channels is not None:
            stored = info.stored_channels
            if self.data.channels < 1 or (stored != 1 and self.data.channels != stored):
                valid = "an integer >= 1 (the gray channel is repeated)" if stored == 1 else str(stored)
                raise ConfigError(f"data.channels={self.data.channels} is not valid for {self.data.name!r}; valid: {valid}")
        if self.data.max_train is not None and self.data.max_train < 1:
            raise ConfigError(f"data.max_train must be >= 1, got {self.data.max_train}")
        if self.data.subset is not None:
            _in_range("data.subset", self.data.subset, 0.0, 1.0, lo_open=True)
        if self.data.subset_seed < 0:
            raise ConfigError(f"data.subset_seed must be >= 0, got {self.data.subset_seed}")

        c = self.corruption
        _choice("corruption.kind", c.kind, CORRUPTION_KINDS)
        _in_range("corruption.level", c.level, 0.0, 1.0)
        if c.kind != "labels" and c.level != 0.0:
            raise ConfigError(f"corruption.level={c.level} only applies to corruption.kind='labels', not {c.kind!r}")
        if c.seed < 0:
            raise ConfigError(f"corruption.seed must be >= 0, got {c.seed}")

        # An outside model (torchvision:, timm:, module:callable) takes any keyword arguments, and says
        # what it can express (dropout, no BatchNorm) when it is built: rethink_dist.train.preflight.
        caps = MODELS[self.model.name] if check_model_name(self.model.name) == "builtin" else None
        bad_kw = set(self.model.kwargs) - set(caps.kwargs) if caps else set()
        if bad_kw:
            raise ConfigError(
                f"model.kwargs {sorted(bad_kw)} not accepted by {self.model.name!r}; valid: {', '.join(caps.kwargs) or 'none'}"
            )

        o = self.optim
        if o.lr is not None:
            _positive("optim.lr", o.lr)
        _in_range("optim.momentum", o.momentum, 0.0, 1.0, hi_open=True)
        if o.lr_decay is not None:
            _in_range("optim.lr_decay", o.lr_decay, 0.0, 1.0, lo_open=True)
        if o.batch_size < 1:
            raise ConfigError(f"optim.batch_size must be >= 1, got {o.batch_size}")
        if o.epochs is not None and o.epochs < 1:
            raise ConfigError(f"optim.epochs must be >= 1, got {o.epochs}")

        r = self.reg
        if r.weight_decay < 0 or not math.isfinite(r.weight_decay):
            raise ConfigError(f"reg.weight_decay must be >= 0, got {r.weight_decay}")
        _in_range("reg.dropout", r.dropout, 0.0, 1.0, hi_open=True)
        if r.dropout > 0 and caps and not caps.dropout:
            raise ConfigError(f"reg.dropout is not supported by {self.model.name!r}")
        if not r.batch_norm and caps and not caps.batch_norm_switch:
            valid = ", ".join(n for n in sorted(MODELS) if MODELS[n].batch_norm_switch)
            raise ConfigError(f"reg.batch_norm=False is not supported by {self.model.name!r}; valid: {valid}")

        _in_range("stop.fit_threshold", self.stop.fit_threshold, 0.0, 1.0, lo_open=True)
        res = self.resources
        _positive("resources.cpus", res.cpus)
        if res.gpus < 0:
            raise ConfigError(f"resources.gpus must be >= 0, got {res.gpus}")
        if res.ddp_workers < 0:
            raise ConfigError(f"resources.ddp_workers must be >= 0, got {res.ddp_workers}")
        _positive("resources.ddp_resize_check_s", res.ddp_resize_check_s)
        if res.ddp_min_workers is not None and not res.ddp_workers:
            raise ConfigError(f"resources.ddp_min_workers={res.ddp_min_workers} needs a data-parallel trial; valid: "
                              "resources.ddp_workers >= 1, or resources.ddp_min_workers=None")
        if res.ddp_workers:  # a data-parallel trial (rethink_dist.sweep.ddp)
            if self.data.loader != "ffcv":
                raise ConfigError(f"resources.ddp_workers={res.ddp_workers} needs data.loader='ffcv' (each rank reads "
                                  f"its shard through FFCV), got {self.data.loader!r}")
            if not float(res.gpus).is_integer():
                raise ConfigError(f"resources.gpus={res.gpus} with resources.ddp_workers={res.ddp_workers}: each "
                                  "data-parallel worker needs whole GPUs (NCCL refuses two ranks on one GPU); "
                                  "valid: 0, 1, 2, ...")
            # The backend follows the device (rethink_dist.sweep.ddp): NCCL where the workers hold
            # GPUs, gloo where they do not; a device that contradicts the resources is refused.
            if self.device == "cpu" and res.gpus > 0:
                raise ConfigError(f"device='cpu' with resources.gpus={res.gpus} and resources.ddp_workers="
                                  f"{res.ddp_workers}: each worker would hold GPUs it does not use; valid: "
                                  "resources.gpus=0 (gloo on CPUs), or device='auto' / 'cuda' (NCCL on the GPUs)")
            if self.device == "cuda" and res.gpus == 0:
                raise ConfigError(f"device='cuda' with resources.gpus=0 and resources.ddp_workers={res.ddp_workers}: "
                                  "Ray gives a worker only the GPUs it asks for; valid: resources.gpus=1 (or more), "
                                  "or device='auto' / 'cpu'")
            if self.optim.batch_size % res.ddp_workers:
                raise ConfigError(f"optim.batch_size={self.optim.batch_size} (the global batch) must be a multiple of "
                                  f"resources.ddp_workers={res.ddp_workers}")
            low = res.ddp_min_workers
            if low is not None:
                if not 1 <= low <= res.ddp_workers:
                    raise ConfigError(f"resources.ddp_min_workers={low} is out of range; valid: 1..{res.ddp_workers} "
                                      f"(resources.ddp_workers={res.ddp_workers} is the most)")
                # The global batch stays optim.batch_size at every size the trial may run at.
                odd = [w for w in range(low, res.ddp_workers + 1) if self.optim.batch_size % w]
                if odd:
                    raise ConfigError(f"optim.batch_size={self.optim.batch_size} (the global batch) must be a multiple "
                                      f"of every world size from resources.ddp_min_workers={low} to "
                                      f"resources.ddp_workers={res.ddp_workers}, not of {odd[0]}")
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")
        if self.sample_records and res.ddp_workers:
            raise ConfigError(f"sample_records=True with resources.ddp_workers={res.ddp_workers}: per-sample records "
                              "are kept by single-process trials only (a data-parallel trial evaluates in shards); "
                              "valid: sample_records=False, or resources.ddp_workers=0")
        _choice("device", self.device, DEVICES)
        _choice("precision", self.precision, PRECISIONS)


# ---------------------------------------------------------------------------------- theory trials
THEORY_DTYPES = ("float32", "float64")
KERNELS = ("linear", "rbf", "laplacian")
KERNEL_FEATURES = ("raw", "random_conv")
EXPRESSIVITY_TARGETS = ("gaussian", "labels")
EXPRESSIVITY_A = ("auto", "spaced", "random")  # rethink_dist.theory.expressivity explains each


class _TheoryOptions:
    """A theory trial's options (the ``rethink-dist expressivity`` / ``kernel`` flags): read by the
    same strict reader as TrialConfig; a None value means the default."""

    KIND = ""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]):
        if not isinstance(d, Mapping):
            raise ConfigError(f"{cls.KIND} params must be a dict, got {type(d).__name__}")
        valid = sorted(f.name for f in fields(cls))
        unknown = sorted(set(d) - set(valid))
        if unknown:
            raise ConfigError(f"unknown {cls.KIND} option(s) {unknown}; valid: {', '.join(valid)}")
        cfg = _from_dict(cls, {k: v for k, v in d.items() if v is not None}, "")
        cfg.validate()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def _data_config(self, corruption: dict[str, Any] | None = None) -> TrialConfig:
        """The data (and corruption) checked by TrialConfig, the one place those rules live."""
        root = getattr(self, "data_root")
        if root and "://" not in root and not Path(root).exists():
            raise ConfigError(f"data_root {root!r} does not exist")
        d: dict[str, Any] = {"data": {"name": getattr(self, "dataset"), "root": root,
                                      "max_train": getattr(self, "max_train", None)}}
        if corruption:
            d["corruption"] = corruption
        return TrialConfig.from_dict(d)


@dataclass(frozen=True)
class ExpressivityConfig(_TheoryOptions):
    """Section 4's construction: a depth-2 ReLU network of 2n + d weights that fits n samples."""

    KIND = "expressivity"
    n: int | None = None  # samples (required without a dataset; with one: default all training samples)
    d: int | None = None  # dimension (required without a dataset; with one it is the image size)
    seed: int = 0  # the data, the targets and the random direction a
    dtype: str = "float64"  # of the samples, the targets and the network
    targets: str = "gaussian"  # gaussian: N(0, 1) | labels: class labels (2 classes: +-1; more: one-hot)
    num_classes: int | None = None  # labels without a dataset (default 2); with one: the dataset's
    dataset: str | None = None  # None: Gaussian samples N(0, I_d); else the first n training images / 255
    data_root: str | None = None
    a: str = "auto"  # auto | spaced | random

    def validate(self) -> None:
        _at_least("n", self.n, 1)
        _at_least("d", self.d, 1)
        _at_least("seed", self.seed, 0)
        _at_least("num_classes", self.num_classes, 2)
        _choice("dtype", self.dtype, THEORY_DTYPES)
        _choice("targets", self.targets, EXPRESSIVITY_TARGETS)
        _choice("a", self.a, EXPRESSIVITY_A)
        if self.dataset is None:
            for key in ("n", "d"):
                if getattr(self, key) is None:
                    raise ConfigError(f"{key} is required without a dataset (Gaussian samples in d dimensions)")
        else:
            self._data_config()


@dataclass(frozen=True)
class KernelConfig(_TheoryOptions):
    """Section 5: the minimum-norm (or ridge) kernel interpolant on a data set's pixels or features."""

    KIND = "kernel"
    dataset: str = "digits"
    data_root: str | None = None
    kernel: str = "rbf"  # linear | rbf (exp(-gamma |x - y|^2)) | laplacian (exp(-gamma |x - y|))
    # width; None: rbf 1 / (D * Var(features)) (scikit-learn's 'scale'), laplacian its square root
    gamma: float | None = None
    features: str = "raw"  # raw (pixels / 255) | random_conv
    num_filters: int = 256  # random_conv: filters of the random convolutional layer
    filter_size: int = 5
    pool: int = 2  # random_conv: average-pool each filter map to pool x pool
    ridge: float = 0.0  # l2 regularization lambda; 0: the minimum-norm interpolant
    max_train: int | None = None  # use only the first N training samples
    corruption: str = "none"  # the randomization tests' corruptions (rethink_dist.corruption)
    level: float = 0.0  # label-corruption probability (corruption=labels)
    corruption_seed: int = 0
    # More label-corruption levels solved with the same factorization of K (labels change Y, not K):
    # each adds a result under "also_levels" (train/test error, norm). Needs corruption none or labels.
    also_levels: tuple[float, ...] | None = None
    dtype: str = "float64"  # float32 | float64
    device: str = "auto"  # auto (cuda when present) | cpu | cuda
    memory_gb: float | None = None  # budget for K, features and blocks; None: 80% of the free memory
    block_size: int | None = None  # Gram rows per block; None: from the budget
    seed: int = 0  # the random filters
    # the interpolation solver (rethink_dist.theory.kernel): the largest |(K + ridge I) alpha - Y| it
    # may leave on the stored Gram matrix, and its most conjugate-gradient iterations
    tol: float = 1e-3
    max_iter: int = 200

    def validate(self) -> None:
        _choice("kernel", self.kernel, KERNELS)
        _choice("features", self.features, KERNEL_FEATURES)
        _choice("dtype", self.dtype, THEORY_DTYPES)
        _choice("device", self.device, DEVICES)
        for key in ("gamma", "memory_gb", "tol"):
            if getattr(self, key) is not None:
                _positive(key, getattr(self, key))
        for key in ("ridge", "level"):
            if not (math.isfinite(getattr(self, key)) and getattr(self, key) >= 0):
                raise ConfigError(f"{key} must be a finite number >= 0, got {getattr(self, key)!r}")
        for key, lo in (("num_filters", 1), ("filter_size", 1), ("pool", 1), ("max_train", 1), ("block_size", 1),
                        ("seed", 0), ("corruption_seed", 0), ("max_iter", 1)):
            _at_least(key, getattr(self, key), lo)
        levels = self.also_levels
        if levels is not None:
            if not levels or not all(0.0 <= v <= 1.0 for v in levels):
                raise ConfigError(f"also_levels={list(levels)!r} is not valid; valid: a list of label-corruption "
                                  "levels in [0, 1]")
            if self.corruption not in ("none", "labels"):
                raise ConfigError(f"also_levels needs corruption 'none' or 'labels' (a pixel corruption changes K), "
                                  f"not {self.corruption!r}")
        if self.gamma is not None and self.kernel == "linear":
            raise ConfigError(f"gamma={self.gamma} only applies to kernel='rbf' or 'laplacian', not {self.kernel!r}")
        self.data_config()

    def data_config(self) -> TrialConfig:
        """The data and corruption of the solve, as a checked TrialConfig."""
        return self._data_config({"kind": self.corruption, "level": self.level, "seed": self.corruption_seed})


def run_name(cfg: TrialConfig) -> str:
    """A readable name: ``digits_labels0.8_mlp_1x512_lr0.01_wd0_aug0_s0`` (the lr once resolved)."""
    optim = cfg.optim
    c = cfg.corruption
    corr = "true" if c.kind == "none" else (f"labels{c.level:g}" if c.kind == "labels" else c.kind)
    arch = _short(cfg.model.name) + ("" if cfg.reg.batch_norm else "_nobn")
    parts = [_short(cfg.data.name), corr, arch]
    if cfg.data.subset is not None:
        parts.append(f"sub{cfg.data.subset:g}-{cfg.data.subset_seed}")
    if optim.lr is not None:
        parts.append(f"lr{optim.lr:g}")
    parts += [f"wd{cfg.reg.weight_decay:g}", f"aug{int(cfg.reg.augment)}"]
    if cfg.reg.dropout:
        parts.append(f"do{cfg.reg.dropout:g}")
    parts.append(f"s{cfg.seed}")
    return "_".join(parts)


def _short(name: str) -> str:
    """A name for run names: ``torchvision:resnet18`` -> ``torchvision-resnet18``, ``pkg.mod:fn`` -> ``fn``."""
    if ":" not in name:
        return name
    prefix, target = name.split(":", 1)
    return f"{prefix}-{target}" if prefix in ("torchvision", "timm") else target.rsplit(".", 1)[-1]


# ---------------------------------------------------------------------------------- helpers
def _choice(name: str, value: Any, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ConfigError(f"{name}={value!r} is not valid; valid: {', '.join(valid)}")


def _in_range(name: str, v: float, lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> None:
    ok = math.isfinite(v) and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    if not ok:
        interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        raise ConfigError(f"{name}={v} is out of range; valid: {interval}")


def _at_least(name: str, v: int | None, lo: int) -> None:
    if v is not None and v < lo:
        raise ConfigError(f"{name} must be an integer >= {lo}, got {v!r}")


def _positive(name: str, v: float) -> None:
    if not (math.isfinite(v) and v > 0):
        raise ConfigError(f"{name} must be > 0, got {v}")


def _type_ok(value: Any, annotation: str) -> tuple[bool, Any]:
    """Check a JSON-ish value against a dataclass field annotation (given as a string)."""
    ann = annotation.replace(" ", "")
    optional = ann.endswith("|None")
    base = ann[: -len("|None")] if optional else ann
    if value is None:
        return optional, None
    if base == "bool":
        return isinstance(value, bool), value
    if base == "int":
        return isinstance(value, int) and not isinstance(value, bool), value
    if base == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False, value
        return True, float(value)
    if base == "str":
        return isinstance(value, str), value
    if base.startswith("Mapping"):
        return isinstance(value, Mapping), dict(value) if isinstance(value, Mapping) else value
    if base == "tuple[float,...]":
        ok = isinstance(value, (list, tuple)) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        return ok, tuple(float(v) for v in value) if ok else value
    raise AssertionError(f"unhandled annotation {annotation}")


def _from_dict(cls: type, d: Any, prefix: str) -> Any:
    if not isinstance(d, Mapping):
        raise ConfigError(f"config section {prefix.rstrip('.') or '<root>'} must be a mapping, got {type(d).__name__}")
    valid = {f.name: f for f in fields(cls)}
    unknown = [k for k in d if k not in valid]
    if unknown:
        raise ConfigError(
            f"unknown config key {prefix + unknown[0]!r}; valid: {', '.join(prefix + k for k in valid)}"
        )
    kwargs: dict[str, Any] = {}
    for key, value in d.items():
        f = valid[key]
        sub = _SECTIONS.get(f.name) if cls is TrialConfig else None
        if sub is not None:
            kwargs[key] = _from_dict(sub, value, prefix + key + ".")
            continue
        ok, converted = _type_ok(value, str(f.type))
        if not ok:
            raise ConfigError(f"config key {prefix + key!r} must be {f.type}, got {value!r} ({type(value).__name__})")
        kwargs[key] = converted
    return cls(**kwargs)


_SECTIONS = {
    "data": DataConfig,
    "corruption": CorruptionConfig,
    "model": ModelConfig,
    "optim": OptimConfig,
    "reg": RegConfig,
    "stop": StopConfig,
    "resources": ResourceConfig,
}


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, prefix + k + "."))
        else:
            out[prefix + k] = v
    return out


def imagenet_trial(beton_dir: str, *, augment: bool, dropout: bool, weight_decay: bool, random_labels: bool = False,
                   seed: int = 0, image_size: int = protocol.IMAGENET_IMAGE_SIZE,
                   resources: dict[str, Any] | None = None, **changes: Any) -> TrialConfig:
    """One Inception V3 trial of Table 2 / Figure 2a with the ImageNet recipe (protocol.IMAGENET_RECIPE);
    ``changes`` are dotted overrides."""
    cfg = TrialConfig.from_dict({
        "data": {"name": "imagenet", "loader": "ffcv", "beton_dir": str(beton_dir), "image_size": image_size},
        "corruption": {"kind": "labels" if random_labels else "none", "level": 1.0 if random_labels else 0.0,
                       "seed": seed},
        "model": {"name": "inception_v3"},
        "reg": {"augment": augment, "dropout": protocol.IMAGENET_DROPOUT if dropout else 0.0,
                "weight_decay": protocol.IMAGENET_WEIGHT_DECAY if weight_decay else 0.0},
        "resources": dict(resources or protocol.IMAGENET_RESOURCES),
        "seed": seed,
    })
    return cfg.replace(**{**protocol.IMAGENET_RECIPE, **changes})
