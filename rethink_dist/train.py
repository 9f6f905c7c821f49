"""The training loop of one trial. It knows nothing of Ray or MLflow: results go to sinks.

A :class:`Trial` owns the data (with its corruption), the model and the optimiser, and runs one
epoch at a time; its whole state is a plain dict (``state_dict``), so a scheduler can checkpoint
after every epoch and resume exactly: the batch order, augmentation and dropout of epoch ``e``
depend only on (seed, e), and the corruption only on (corruption seed, sample index).

Each epoch records: the training loss; the accuracy over the whole training set on its
(corrupted) labels, and separately on the samples whose label was changed and on the others;
test accuracy (top-1, top-5) on true labels; the best test accuracy so far (early stopping);
learning rate, images/s, steps and seconds. ``steps_to_fit`` is the step count at the end of the
first epoch whose training accuracy reaches ``stop.fit_threshold``: the paper's "time to overfit",
measured at epoch granularity.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

from rethink_dist.config import TrialConfig
from rethink_dist.corruption import subset_indices
from rethink_dist.data import dataset_info, load
from rethink_dist.data.memory import MemoryLoader, corrupt_dataset
from rethink_dist.errors import ConfigError
from rethink_dist.external import is_external
from rethink_dist.metrics import Sink
from rethink_dist.models import count_params, create
from rethink_dist.records import HISTORY_FILE, SAMPLES_FILE, STATE_FILE, summarize

AUX_WEIGHT = 0.4  # weight of Inception V3's auxiliary-head loss (Szegedy et al.)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class Loader(Protocol):
    """What the training loop needs of a data loader (memory or FFCV)."""

    num_train: int
    input_shape: tuple[int, int, int]
    changed: torch.Tensor  # bool per training sample, on the device

    def train_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def eval_batches(self, split: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


def resolve_device(name: str) -> torch.device:
    """The device a trial's ``device`` setting names: ``auto`` is CUDA when a GPU is visible, else the
    CPU; ``cuda`` without a GPU raises ConfigError (one line naming the valid choices)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' was asked for but no CUDA device is available; valid here: auto, cpu")
    return torch.device(name)


def _derive_seed(*parts: int) -> int:
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (p & 0xFFFFFFFFFFFFFFFF)) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h & 0x7FFFFFFFFFFFFFFF


def build_loader(cfg: TrialConfig, device: torch.device) -> tuple[Loader, dict[str, Any]]:
    """The trial's data loader, with its corruption applied, and facts about the data to log."""
    info = dataset_info(cfg.data.name)
    if cfg.data.loader == "ffcv":
        from rethink_dist.data.ffcv_loader import build_ffcv_loader  # imports FFCV: only for FFCV trials

        return build_ffcv_loader(cfg, device)
    ds = load(cfg.data.name, cfg.data.root, cfg.data.download).subset_train(cfg.data.max_train)
    arrays = corrupt_dataset(ds, cfg.corruption)
    crop = cfg.data.image_size or info.crop
    subset = None if cfg.data.subset is None else subset_indices(len(ds.train_y), cfg.data.subset, cfg.data.subset_seed)
    loader = MemoryLoader(arrays, crop, cfg.reg.augment, info.augment_pad, device, channels=cfg.data.channels,
                          subset=subset)
    meta = {
        "dataset_fingerprint": ds.fingerprint,
        "dataset_source": ds.source,
        "num_train": len(ds.train_y),
        "num_test": len(ds.test_y),
        "num_classes": ds.num_classes,
        "labels_changed": int(arrays.changed.sum()),
        "labels_fingerprint": labels_fingerprint(arrays.train_y),
    }
    if subset is not None:
        meta["subset_size"] = len(subset)
    return loader, meta


def labels_fingerprint(labels) -> str:
    """sha256 (16 hex digits) of the (corrupted) training labels: proof a resume saw the same labels."""
    import hashlib

    import numpy as np

    arr = np.ascontiguousarray(labels.cpu().numpy() if isinstance(labels, torch.Tensor) else labels, dtype=np.int64)
    return hashlib.sha256(arr.data).hexdigest()[:16]


def check_input_fits(model: nn.Module, cfg: TrialConfig, input_shape: tuple[int, ...], device: torch.device) -> None:
    """One forward pass of a zero image, before training: data that does not fit the model (an image
    smaller than the network's receptive field, wrong channels) is bad input, said in one line."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=device))
    except (RuntimeError, ValueError, AssertionError, IndexError) as e:  # what libraries raise for a bad shape
        shape = "x".join(str(v) for v in input_shape)
        raise ConfigError(f"model {cfg.model.name!r} cannot take the {shape} inputs of dataset {cfg.data.name!r} "
                          f"(data.image_size={cfg.data.image_size}, data.channels={cfg.data.channels}): "
                          f"{str(e).splitlines()[0]}") from None
    finally:
        model.train(was_training)


_PREFLIGHT_DONE: set[str] = set()


def preflight(cfg: TrialConfig) -> None:
    """Before any trial starts: a model or data set from outside the package (torchvision:, timm:,
    module:callable) is loaded, built once on the CPU and given a zero image of the data's shape, so
    that a name that does not build, a builder without the asked regularizer, or arrays of the wrong
    shape are bad input said in one line, not a failed trial. The package's own models and data sets
    need no such check. Once per distinct model and input per process."""
    r = cfg.resolved()
    if not (is_external(r.model.name) or is_external(r.data.name)):
        return
    info = dataset_info(r.data.name)  # a user's data set is loaded (once per process) and checked here
    if not is_external(r.model.name):
        return
    input_shape = (int(r.data.channels), int(r.data.image_size), int(r.data.image_size))
    key = json.dumps([r.model.name, dict(r.model.kwargs), input_shape, info.num_classes, r.reg.dropout,
                      r.reg.batch_norm], sort_keys=True, default=str)
    if key in _PREFLIGHT_DONE:
        return
    model = create(r.model.name, input_shape, info.num_classes, dropout=r.reg.dropout, batch_norm=r.reg.batch_norm,
                   **dict(r.model.kwargs))
    check_input_fits(model, r, input_shape, torch.device("cpu"))
    _PREFLIGHT_DONE.add(key)


_FREED_MEMORY_KEPT = False


def keep_freed_memory() -> None:
    """Let glibc keep freed blocks of up to 32 MiB for reuse instead of returning them to the OS.

    Why our own call and not a library's: torch's CPU allocator has no caching option, and each
    training step allocates and frees activations of a few MiB that glibc would otherwise map and
    unmap every step, paying a page fault per 4 KiB (bench/results/NOTES.md has the measured cost). Raising the mmap
    and trim thresholds keeps the memory in the heap (the process keeps its peak footprint). A
    no-op where glibc is not the C library; once per process.
    """
    global _FREED_MEMORY_KEPT
    if _FREED_MEMORY_KEPT:
        return
    _FREED_MEMORY_KEPT = True
    import ctypes
    import ctypes.util
    import platform

    if platform.system() != "Linux" or not platform.libc_ver()[0] == "glibc":
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 32 * 1024 * 1024)  # glibc's largest allowed value on 64-bit
    libc.mallopt(m_trim_threshold, 1 << 30)


class Trial:
    """One training run of one config, stepped an epoch at a time."""

    # Extra parts of the dropout seed: a data-parallel rank sets (rank,) so that ranks draw
    # different dropout masks; empty for a single-process trial.
    seed_stream: tuple[int, ...] = ()

    def __init__(self, config: TrialConfig, loader: Loader | None = None, meta: dict[str, Any] | None = None,
                 device: str | None = None):
        """``device``: where the code that placed the trial put it (a Ray trial: a GPU only if it holds
        one); default: ``config.device`` resolved on this machine."""
        config.validate()
        self.config = cfg = config.resolved()
        self.device = resolve_device(device or cfg.device)
        on_cuda = self.device.type == "cuda"
        if on_cuda:
            # The input shape is fixed for a whole trial: let cuDNN pick its fastest convolutions once.
            # (Like CUDA's nondeterministic backward kernels, this makes a GPU resume equal to an
            # uninterrupted run within rounding, not bit for bit: docs/speed.md.)
            torch.backends.cudnn.benchmark = True
        self.bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and on_cuda)
        owns_loader = loader is None
        if loader is None:
            loader, meta = build_loader(cfg, self.device)
        self.loader = loader
        self.meta: dict[str, Any] = dict(meta or {})
        self.num_classes = int(self.meta.get("num_classes", 10))

        torch.manual_seed(_derive_seed(cfg.seed, 0xA11CE))
        self.model = create(
            cfg.model.name, loader.input_shape, self.num_classes,
            dropout=cfg.reg.dropout, batch_norm=cfg.reg.batch_norm, **dict(cfg.model.kwargs),
        ).to(self.device)
        # Convolutions in channels-last layout, on the CPU (oneDNN) as on the GPU: faster for the conv
        # nets (bench/train.py, docs/speed.md). Models without convolutions keep the plain layout
        # (their Flatten would copy).
        check_input_fits(self.model, cfg, loader.input_shape, self.device)
        has_conv = any(isinstance(m, nn.modules.conv._ConvNd) for m in self.model.modules())
        self.channels_last = has_conv and len(loader.input_shape) == 3
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
            if hasattr(loader, "use_channels_last"):  # the memory loader: batches channels-last without a copy
                loader.use_channels_last()
        if not has_conv and owns_loader and hasattr(loader, "eval_batch_size"):
            # Without convolutions activations are small: larger evaluation batches make larger,
            # faster matrix products (docs/speed.md).
            loader.eval_batch_size = max(loader.eval_batch_size, 4096)
        # Weight decay on weights only, not on biases or normalisation parameters.
        decay = [p for p in self.model.parameters() if p.ndim > 1]
        no_decay = [p for p in self.model.parameters() if p.ndim <= 1]
        # The fused update (one kernel over all parameters) where the device has one: a faster
        # optimiser step (bench/train.py, docs/speed.md).
        self.optimizer = torch.optim.SGD(
            [{"params": decay, "weight_decay": cfg.reg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.optim.lr, momentum=cfg.optim.momentum, fused=self.device.type in ("cpu", "cuda") or None,
        )
        if self.device.type == "cpu":
            keep_freed_memory()
        if getattr(self.model, "adapted", None) is not None:  # an outside model: what was changed for the data
            self.meta["model_adapted"] = "; ".join(self.model.adapted) or "nothing"
        self.meta.update({
            "params": count_params(self.model),
            "device": str(self.device),
            "precision": "bf16" if self.bf16 else "fp32",
            "torch_threads": torch.get_num_threads(),
        })
        self.epoch = 0
        self.step = 0
        self.steps_to_fit: int | None = None
        self.best_test_acc = 0.0
        self.history: list[dict[str, Any]] = []
        self.samples: SampleRecords | None = (
            SampleRecords(loader.num_train, self.device) if cfg.sample_records else None)
        self._train_correct: torch.Tensor | None = None  # the last evaluation's per-sample hits
        self._test_correct: torch.Tensor | None = None

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "steps_to_fit": self.steps_to_fit,
            "best_test_acc": self.best_test_acc,
            "history": list(self.history),
            "config_fingerprint": self.config.fingerprint(),
            "labels_fingerprint": self.meta.get("labels_fingerprint"),
            "samples": self.samples.state_dict() if self.samples is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("config_fingerprint") not in (None, self.config.fingerprint()):
            raise ValueError("checkpoint belongs to a different trial config; refusing to resume from it")
        if state.get("labels_fingerprint") not in (None, self.meta.get("labels_fingerprint")):
            raise ValueError("the corrupted training labels differ from the checkpoint's; refusing to resume "
                             "on different labels")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch = int(state["epoch"])
        self.step = int(state["step"])
        self.steps_to_fit = state["steps_to_fit"]
        self.best_test_acc = float(state["best_test_acc"])
        self.history = list(state["history"])
        if self.samples is not None:
            if state.get("samples") is None and self.epoch:
                raise ValueError("the checkpoint has no per-sample records; refusing to resume with sample_records=True")
            if state.get("samples") is not None:
                self.samples.load_state_dict(state["samples"])

    @property
    def done(self) -> bool:
        if self.epoch >= self.config.optim.epochs:
            return True
        return self.config.stop.stop_when_fitted and self.steps_to_fit is not None

    # ------------------------------------------------------------------ one epoch
    def lr_at(self, epoch: int) -> float:
        return self.config.optim.lr * self.config.optim.lr_decay ** epoch

    def model_input(self, x: torch.Tensor) -> torch.Tensor:
        """A batch as the model takes it: channels-last for a channels-last conv net (a batch that is
        channels-last already is returned as it is, without a copy), otherwise unchanged."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.ndim == 4 else x

    def train_step_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The forward pass of one training batch and its loss (the model must be in train mode)."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            out = self.model(self.model_input(x))
        return self._loss(out, y)

    def _loss(self, out: Any, y: torch.Tensor) -> torch.Tensor:
        if isinstance(out, tuple):  # main and auxiliary logits
            return F.cross_entropy(out[0].float(), y) + AUX_WEIGHT * F.cross_entropy(out[1].float(), y)
        return F.cross_entropy(out.float(), y)

    def run_epoch(self) -> dict[str, Any]:
        """Train one epoch, evaluate, append and return the epoch's record."""
        cfg = self.config
        epoch = self.epoch
        lr = self.lr_at(epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        gen = torch.Generator().manual_seed(_derive_seed(cfg.seed, epoch, 1))
        torch.manual_seed(_derive_seed(cfg.seed, epoch, 2, *self.seed_stream))  # dropout
        # ---------------------------------------------------------- train
        self.model.train()
        t0 = time.perf_counter()
        losses: list[torch.Tensor] = []
        seen = 0
        for x, y in self.loader.train_batches(cfg.optim.batch_size, gen):
            loss = self.train_step_loss(x, y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            losses.append(loss.detach())
            seen += y.shape[0]
        steps = len(losses)
        stacked = torch.stack(losses).float() if losses else torch.zeros(1)
        finite = torch.isfinite(stacked)
        if not bool(finite.all()):
            bad = int((~finite).nonzero()[0, 0])
            raise TrainingDiverged(
                f"loss became {float(stacked[bad])} at epoch {epoch + 1}, step {self.step + bad + 1} "
                f"(lr {lr:g}); lower --lr or check the data"
            )
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        train_seconds = time.perf_counter() - t0
        self.step += steps
        # ---------------------------------------------------------- evaluate
        t1 = time.perf_counter()
        ev = self.evaluate()
        eval_seconds = time.perf_counter() - t1
        self.epoch += 1
        if self.samples is not None:
            self.samples.update(self._train_correct, self.epoch, self._test_correct)
        if self.steps_to_fit is None and ev["train_acc"] >= cfg.stop.fit_threshold:
            self.steps_to_fit = self.step
        self.best_test_acc = max(self.best_test_acc, ev["test_acc"])
        prev_seconds = self.history[-1]["seconds"] if self.history else 0.0
        record = {
            "epoch": self.epoch,
            "step": self.step,
            "train_loss": float(stacked.mean()),
            **ev,
            "best_test_acc": self.best_test_acc,
            "lr": lr,
            "images_per_s": seen / train_seconds if train_seconds > 0 else float("nan"),
            "train_seconds": train_seconds,
            "eval_seconds": eval_seconds,
            "seconds": prev_seconds + train_seconds + eval_seconds,
            "steps_to_fit": self.steps_to_fit,
        }
        self.history.append(record)
        return record

    @torch.inference_mode()
    def evaluate(self) -> dict[str, Any]:
        """Accuracy on the training set (by corrupted/clean samples) and on the test set. A subset
        trial's training accuracies are over its subset, and ``heldout_acc`` is over the training
        samples outside it; every training sample is evaluated either way."""
        self.model.eval()
        changed = self.loader.changed
        member = getattr(self.loader, "in_subset", None)
        train1 = self.correct(self.loader.eval_batches("train"), topk=1)
        self._train_correct = train1  # in sample-index order: the per-sample records' input
        test1, test5 = self.correct(self.loader.eval_batches("test"), topk=5, both=True)
        self._test_correct = test1
        fit1, fit_changed = (train1, changed) if member is None else (train1[member], changed[member])

        def count(t: torch.Tensor) -> torch.Tensor:
            return torch.tensor(t.numel(), device=t.device)

        parts = [count(fit1), fit1.sum(), fit_changed.sum(), fit1[fit_changed].sum(), count(test1), test1.sum(),
                 test5.sum()]
        if member is not None:
            out1 = train1[~member]
            parts += [count(out1), out1.sum()]
        counts = self.reduce_counts(torch.stack(parts).to(torch.float64)).tolist()
        n_train, ok_train, n_changed, ok_changed, n_test, ok1, ok5 = counts[:7]
        n_clean = n_train - n_changed
        n_out, ok_out = counts[7:] if member is not None else (0, 0)
        return {
            "train_acc": ok_train / n_train,
            "train_acc_clean": (ok_train - ok_changed) / n_clean if n_clean else None,
            "train_acc_corrupted": ok_changed / n_changed if n_changed else None,
            "heldout_acc": ok_out / n_out if n_out else None,
            "test_acc": ok1 / n_test,
            "test_top5": ok5 / n_test,
        }

    def reduce_counts(self, counts: torch.Tensor) -> torch.Tensor:
        """The counts of the whole data set (a data-parallel trial sums its ranks' counts)."""
        return counts

    def correct(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], topk: int, both: bool = False):
        """Per sample of ``batches``, in their order: whether the model's top-1 prediction is the label
        (a bool tensor on the device), under the trial's autocast; with ``both``, also whether the label
        is among the top ``topk``. The caller sets eval mode and inference mode (``evaluate`` does)."""
        top1, topk_hits = [], []
        for x, y in batches:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                logits = self.model(self.model_input(x))
            if isinstance(logits, tuple):
                logits = logits[0]
            top1.append(logits.argmax(dim=1) == y)
            if both:
                k = min(topk, logits.shape[1])
                topk_hits.append((logits.topk(k, dim=1).indices == y[:, None]).any(dim=1))
        c1 = torch.cat(top1)
        return (c1, torch.cat(topk_hits)) if both else c1

    # ------------------------------------------------------------------ summary
    def summary(self) -> dict[str, Any]:
        return summarize(self.history)

    def sample_arrays(self) -> dict[str, Any]:
        """The per-sample records as numpy arrays (sample_records on)."""
        return self.samples.arrays(self.loader.changed, getattr(self.loader, "in_subset", None))


class SampleRecords:
    """Per training sample, from the evaluation of the whole training set after every epoch (no extra
    forward pass): the first epoch from which it is classified as its (possibly corrupted) label and
    stays so (-1: not classified so at the latest evaluation), and its forgetting events (classified
    so at one evaluation, not at the next; Toneva et al. 2019). Per test sample: whether the latest
    evaluation classified it as its label (with the training samples' outcomes and a subset trial's
    membership, what memorization and influence estimates need: rethink_dist.memorization)."""

    KEYS = ("first_fit", "forgettings")  # whether a sample was classified so at the latest evaluation is first_fit >= 0

    def __init__(self, n: int, device: torch.device):
        self.first_fit = torch.full((n,), -1, dtype=torch.int32, device=device)
        self.forgettings = torch.zeros(n, dtype=torch.int32, device=device)
        self.test_correct: torch.Tensor | None = None  # none before the first evaluation

    def update(self, correct: torch.Tensor, epoch: int, test_correct: torch.Tensor | None = None) -> None:
        if correct is None or correct.shape != self.first_fit.shape:
            raise RuntimeError(f"per-sample records need the whole training set in index order, got "
                               f"{None if correct is None else tuple(correct.shape)} for {tuple(self.first_fit.shape)}")
        before = self.first_fit >= 0
        learned, forgotten = correct & ~before, ~correct & before
        self.first_fit[learned] = epoch
        self.first_fit[forgotten] = -1
        self.forgettings += forgotten.to(torch.int32)
        if test_correct is not None:
            self.test_correct = test_correct.detach().clone()

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {k: getattr(self, k).detach().to("cpu", copy=True) for k in self.KEYS}
        if self.test_correct is not None:
            state["test_correct"] = self.test_correct.detach().to("cpu", copy=True)
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for k in self.KEYS:
            t = state[k].to(getattr(self, k).device)
            if t.shape != getattr(self, k).shape:
                raise ValueError(f"the checkpoint's per-sample records are for {t.shape[0]} samples, not "
                                 f"{getattr(self, k).shape[0]}")
            setattr(self, k, t)
        # A checkpoint of an earlier version has no test outcomes: none are written for it.
        test = state.get("test_correct")
        self.test_correct = None if test is None else test.to(self.first_fit.device)

    def arrays(self, changed: torch.Tensor, in_subset: torch.Tensor | None = None) -> dict[str, Any]:
        """The records as numpy arrays (rethink_dist.parquet.write_sample_records writes them)."""
        import numpy as np

        first = self.first_fit.cpu().numpy()
        out = {"sample": np.arange(len(first), dtype=np.int64), "label_changed": changed.cpu().numpy().astype(bool),
               "first_fit_epoch": first.astype(np.int64), "forgettings": self.forgettings.cpu().numpy().astype(np.int64),
               "in_subset": (np.ones(len(first), bool) if in_subset is None else in_subset.cpu().numpy().astype(bool))}
        if self.test_correct is not None:
            out["test_correct"] = self.test_correct.cpu().numpy().astype(bool)
        return out


# ---------------------------------------------------------------------- checkpoints


def save_checkpoint(trial: Trial, folder: str | os.PathLike, **extra_json: Any) -> None:
    """Write ``trial``'s checkpoint into ``folder``: its state, its history as JSON (readable without
    torch) and each ``extra_json`` as ``<name>.json``. Every checkpoint of every trial is written here."""
    folder = Path(folder)
    torch.save(trial.state_dict(), folder / STATE_FILE)
    (folder / HISTORY_FILE).write_text(json.dumps(trial.history, default=str))
    if trial.samples is not None:  # readable without torch (the driver writes them to Parquet)
        import numpy as np

        np.savez(folder / SAMPLES_FILE, **trial.sample_arrays())
    for name, obj in extra_json.items():
        (folder / f"{name}.json").write_text(json.dumps(obj, indent=1, default=str))


def load_checkpoint(trial: Trial, folder: str | os.PathLike) -> None:
    """Continue ``trial`` from the checkpoint in ``folder`` (refused if it is another config's)."""
    state = torch.load(Path(folder) / STATE_FILE, map_location=trial.device, weights_only=False)
    trial.load_state_dict(state)


# ---------------------------------------------------------------------- the loop
def run(trial: Trial, sinks: Iterable[Sink] = ()) -> dict[str, Any]:
    """Run ``trial`` to its end, handing each epoch's record to every sink; returns the summary.

    The one loop of the project: the command line, a Tune trial and each data-parallel rank run
    it with their own sinks (the console; Tune reports with checkpoints; Ray Train reports).
    """
    sinks = list(sinks)
    for s in sinks:
        s.start(trial.config, trial.meta)
    while not trial.done:
        record = trial.run_epoch()
        for s in sinks:
            s.log_epoch(record)
    summary = trial.summary()
    for s in sinks:
        s.finish(summary)
    return summary


def train(config: TrialConfig, sinks: Iterable[Sink] = (), state: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run one trial to the end; returns ``{"config", "meta", "history", "summary"}`` (and ``"samples"``,
    the per-sample records, with ``sample_records`` on)."""
    trial = Trial(config)
    if state is not None:
        trial.load_state_dict(state)
    summary = run(trial, sinks)
    out = {"config": trial.config.to_dict(), "meta": trial.meta, "history": trial.history, "summary": summary}
    if trial.samples is not None:  # numpy arrays (records.SAMPLE_KEYS without the trial id)
        out["samples"] = trial.sample_arrays()
    return out
