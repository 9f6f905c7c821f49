"""The FFCV loader: a trial's data read from .beton files, corrupted on the fly.

Pipelines (one per field; ``rethink_dist.data.ffcv_ops`` holds the corruption operations):

- image, fixed-size datasets (cifar10, digits, synthetic): decode the stored image -> pixel
  corruption (at the stored resolution, as the memory loader does) -> tensor -> device; then, on
  whole batches with the functions of :mod:`rethink_dist.data.preprocess`: /255 -> centre crop
  (random crop with the per-epoch generator when augmenting) -> per-image whitening. The
  corrupted, whitened batches equal the memory loader's bit for bit.
- image, ImageNet: decode with a random resized crop + horizontal flip when augmenting, a centre
  crop otherwise, at ``data.image_size`` -> pixel corruption at that size -> tensor -> device ->
  /255 -> per-image whitening. FFCV draws the crops and flips from numba's own generator, which
  is not seeded: ImageNet augmentation is not reproducible run to run (the corruption is).
- label: decode -> label corruption (training split; the test split too with
  ``corruption.corrupt_test``) -> tensor.

The training order is FFCV's (``OrderOption.RANDOM`` with ``seed=cfg.seed``); the epoch number FFCV
sees is drawn from the trial's per-epoch generator, so a resumed trial replays the same order.
``distributed=True`` gives each data-parallel rank its own shard of the training set (FFCV's
DistributedSampler emulation; needs an initialised ``torch.distributed`` process group): the ranks'
shards are disjoint and cover the epoch, except that when the training set does not divide by
the number of ranks the first few samples of the epoch's order are repeated so every rank takes
the same number of steps. Evaluation covers the whole split in sample-index order, or with
``eval_shard=(rank, world)`` this rank's share of it (indices ``rank::world``; ``eval_indices``
says which), for the caller to add up across ranks. After each training epoch ``last_epoch``
holds the sample indices and (corrupted) labels that epoch delivered, in order, and ``train_y``
the corrupted labels of the whole training set in index order.

FFCV changes torch's thread count as a side effect (when imported, when a Loader is created and
when each epoch starts); this module puts it back each time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from rethink_dist import corruption as C
from rethink_dist.config import ConfigError, TrialConfig
from rethink_dist.data import DataError, dataset_info
from rethink_dist.data.ffcv_writer import BETON_FILES, import_ffcv, keep_torch_threads, read_meta
from rethink_dist.data.preprocess import preprocess, to_unit, whiten

CENTER_CROP_RATIO = 0.875  # ImageNet evaluation: centre crop of 87.5% of the shorter side, resized
EVAL_BATCH = {"fixed": 1024, "imagenet": 128}
SPLIT_IDS = {"train": C.SPLIT_TRAIN, "test": C.SPLIT_TEST}


@dataclass(frozen=True)
class _Spec:
    """What the pipelines of one trial need to know."""

    name: str
    fixed_size: bool
    image_field: str  # rgb | ndarray
    size: int  # model input side
    pad: int
    augment: bool
    kind: str
    level: float
    seed: int
    corrupt_test: bool
    num_classes: int
    stats: tuple[np.ndarray, np.ndarray] | None
    channels: int | None  # model input channels (a gray channel repeated); None: as stored


class FFCVLoader:
    """Training and evaluation batches from ``train.beton`` / ``test.beton`` (the ``Loader`` protocol)."""

    def __init__(self, cfg: TrialConfig, device: torch.device, meta: dict[str, Any], beton_dir: Path,
                 distributed: bool = False, workers: int | None = None,
                 eval_shard: tuple[int, int] | None = None):
        import_ffcv()
        from ffcv.loader import Loader, OrderOption

        self.device = device
        self.threads = torch.get_num_threads()
        self.workers = workers or self.threads
        self.batch_size = cfg.optim.batch_size
        self.distributed = distributed
        self.paths = {split: str(beton_dir / fname) for split, fname in BETON_FILES.items()}
        info = dataset_info(cfg.data.name)
        fixed = info.image_shape is not None
        counts = {split: int(meta["splits"][split]["num_samples"]) for split in BETON_FILES}
        n_train = min(counts["train"], cfg.data.max_train or counts["train"])
        every = np.arange(n_train, dtype=np.uint64)
        # A subset trial trains on its subset (indices into the file: the corruption, keyed by them,
        # is the same as in the whole set) and evaluates every training sample.
        subset = None if cfg.data.subset is None else C.subset_indices(n_train, cfg.data.subset, cfg.data.subset_seed)
        self.train_indices = every if subset is None else subset.astype(np.uint64)
        self.eval_indices = {"train": every, "test": np.arange(counts["test"], dtype=np.uint64)}
        self.eval_indices_all = every  # every training sample, before a rank's shard is taken
        if eval_shard is not None:
            rank, world = eval_shard
            if world > min(n_train, counts["test"]):
                raise ConfigError(f"{world} data-parallel ranks need at least {world} training and test samples; "
                                  f"got {n_train} and {counts['test']}")
            self.eval_indices = {split: idx[rank::world] for split, idx in self.eval_indices.items()}
        self.last_epoch: tuple[np.ndarray, np.ndarray] | None = None
        size = cfg.data.image_size or info.crop
        if fixed and size > min(info.image_shape[:2]):
            raise ConfigError(f"data.image_size={size} is larger than {cfg.data.name}'s stored "
                              f"{info.image_shape[0]}x{info.image_shape[1]} images; valid: 1..{min(info.image_shape[:2])}")
        stats = None
        if cfg.corruption.kind == "gaussian":
            stats = (np.asarray(meta["channel_mean"], np.float64), np.asarray(meta["channel_std"], np.float64))
        self.spec = _Spec(cfg.data.name, fixed, meta.get("image_field", "rgb"), size, info.augment_pad,
                          cfg.reg.augment, cfg.corruption.kind, cfg.corruption.level, cfg.corruption.seed,
                          cfg.corruption.corrupt_test, int(meta["num_classes"]), stats, cfg.resolved().data.channels)
        with keep_torch_threads(self.threads):
            if stats is not None and fixed and n_train < counts["train"]:
                # The memory loader takes the stats of the training subset it uses: so do we.
                raw = np.concatenate([x.numpy() for x, _ in self._raw_loader("train", corrupt=False, batch=4096)])
                self.spec = _replace_stats(self.spec, C.channel_stats(raw))
            self._train = Loader(self.paths["train"], batch_size=self.batch_size, num_workers=self.workers,
                                 order=OrderOption.RANDOM, seed=cfg.seed, distributed=distributed,
                                 indices=self.train_indices, drop_last=False,
                                 pipelines=self._pipelines("train", augment=cfg.reg.augment, with_index=True))
            self._eval = {split: self._sequential(split, indices=self.eval_indices[split]) for split in BETON_FILES}
            true_y, corrupted_y = self._labels()
        self.num_train = n_train
        self.num_test = counts["test"]
        self.true_train_y = true_y
        self.train_y = corrupted_y
        # The samples whose label the corruption changed, over what eval_batches("train") covers.
        self.changed = torch.from_numpy((corrupted_y != true_y)[self.eval_indices["train"].astype(np.int64)]).to(device)
        # Per sample of eval_batches("train"): trained on? (None: every sample is)
        self.in_subset = None
        if subset is not None:
            member = np.zeros(n_train, dtype=bool)
            member[subset] = True
            self.in_subset = torch.from_numpy(member[self.eval_indices["train"].astype(np.int64)]).to(device)
        x0, _ = next(iter(self.eval_batches("test")))
        self.input_shape = tuple(x0.shape[1:])

    # ------------------------------------------------------------------ pipelines
    def _pipelines(self, split: str, augment: bool, corrupt: bool = True, prep: bool = True,
                   with_index: bool = False) -> dict[str, Any]:
        from ffcv.fields.basics import IntDecoder
        from ffcv.fields.decoders import (CenterCropRGBImageDecoder, NDArrayDecoder,
                                          RandomResizedCropRGBImageDecoder, SimpleRGBImageDecoder)
        from ffcv.transforms import RandomHorizontalFlip, ToDevice, ToTensor

        from rethink_dist.data.ffcv_ops import LabelCorruption, PixelCorruption

        s = self.spec
        if s.fixed_size:
            image: list[Any] = [SimpleRGBImageDecoder() if s.image_field == "rgb" else NDArrayDecoder()]
        elif augment:
            image = [RandomResizedCropRGBImageDecoder((s.size, s.size)), RandomHorizontalFlip()]
        else:
            image = [CenterCropRGBImageDecoder((s.size, s.size), ratio=CENTER_CROP_RATIO)]
        if corrupt and s.kind in C.PIXEL_KINDS:
            image.append(PixelCorruption(s.kind, s.seed, SPLIT_IDS[split], s.stats))
        image.append(ToTensor())
        if prep and self.device.type != "cpu":
            image.append(ToDevice(self.device, non_blocking=True))
        label: list[Any] = [IntDecoder()]
        if corrupt and s.kind == "labels" and (split == "train" or s.corrupt_test):
            label.append(LabelCorruption(s.seed, s.level, s.num_classes, SPLIT_IDS[split]))
        label.append(ToTensor())
        return {"image": image, "label": label, "index": [IntDecoder(), ToTensor()] if with_index else None}

    def _sequential(self, split: str, corrupt: bool = True, prep: bool = True, batch: int | None = None,
                    indices: np.ndarray | None = None):
        from ffcv.loader import Loader, OrderOption

        return Loader(self.paths[split], batch_size=batch or EVAL_BATCH["fixed" if self.spec.fixed_size else "imagenet"],
                      num_workers=self.workers, order=OrderOption.SEQUENTIAL, drop_last=False,
                      indices=indices if indices is not None else (self.train_indices if split == "train" else None),
                      pipelines=self._pipelines(split, augment=False, corrupt=corrupt, prep=prep))

    def _raw_loader(self, split: str, corrupt: bool, batch: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self._epoch(self._sequential(split, corrupt=corrupt, prep=False, batch=batch))

    def _labels(self) -> tuple[np.ndarray, np.ndarray]:
        """True and (possibly) corrupted training labels, in index order, checking the index field."""
        from ffcv.fields.basics import IntDecoder
        from ffcv.loader import Loader, OrderOption
        from ffcv.pipeline import PipelineSpec
        from ffcv.transforms import ToTensor

        label_ops = self._pipelines("train", augment=False)["label"]
        loader = Loader(self.paths["train"], batch_size=65536, num_workers=self.workers,
                        order=OrderOption.SEQUENTIAL, drop_last=False, indices=self.eval_indices_all,
                        pipelines={"image": None, "index": [IntDecoder(), ToTensor()],
                                   "label": [IntDecoder(), ToTensor()],
                                   "corrupted": PipelineSpec("label", label_ops[0], label_ops[1:])})
        idx, true_y, corrupted_y = [], [], []
        for label, index, corrupted in self._epoch(loader):  # FFCV yields the file's field order, then extras
            idx.append(index.numpy().ravel().copy())
            true_y.append(label.numpy().ravel().copy())
            corrupted_y.append(corrupted.numpy().ravel().copy())
        index = np.concatenate(idx)
        if not np.array_equal(index, np.arange(len(index))):
            raise DataError(f"{self.paths['train']!r}: the index field does not match the sample positions; "
                            "re-run rethink-dist prepare")
        return np.concatenate(true_y), np.concatenate(corrupted_y)

    # ------------------------------------------------------------------ iteration
    def _epoch(self, loader: Any) -> Iterator[Any]:
        """Iterate one epoch of an FFCV loader, restoring torch's thread count as FFCV changes it."""
        with keep_torch_threads(self.threads):
            it = iter(loader)  # sets torch's threads to the loader's workers
        finished = False
        try:
            first = True
            for batch in it:
                if first:  # the epoch's thread has set them again before its first batch
                    torch.set_num_threads(self.threads)
                    first = False
                yield batch
            finished = True
        finally:
            if not finished:  # abandoned mid-epoch: stop FFCV's thread
                it.close()
            if torch.get_num_threads() != self.threads:
                torch.set_num_threads(self.threads)

    def _labels_on_device(self, y: torch.Tensor) -> torch.Tensor:
        """A batch's labels on the device, in memory of their own (FFCV reuses its batch buffers). On a
        GPU through a pinned copy, sent asynchronously: a copy from pageable memory would make the
        host wait for the GPU at every batch."""
        y = y.reshape(-1)
        if self.device.type == "cuda":
            return y.pin_memory().to(self.device, non_blocking=True)
        return y.to(self.device, copy=True)

    def _prep(self, x: torch.Tensor, augment: bool, generator: torch.Generator | None) -> torch.Tensor:
        """N x H x W x C decoded (and corrupted) images -> whitened float32 N x C x H x W model inputs."""
        x = x.to(self.device, non_blocking=True).permute(0, 3, 1, 2).contiguous()
        s = self.spec
        if s.fixed_size:
            return preprocess(x, s.size, augment=augment, pad=s.pad, generator=generator, channels=s.channels)
        return whiten(to_unit(x))

    def train_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of shuffled training batches (this rank's shard when distributed)."""
        if batch_size != self.batch_size:
            raise ValueError(f"this FFCV loader was built for batch size {self.batch_size}, not {batch_size}")
        # FFCV's order for epoch e is a function of (seed, e): take e from the trial's generator.
        self._train.next_epoch = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        seen_idx: list[np.ndarray] = []
        seen_y: list[np.ndarray] = []
        self.last_epoch = None
        for x, y, idx in self._epoch(self._train):  # FFCV yields the file's field order: image, label, index
            seen_idx.append(idx.numpy().ravel().copy())
            seen_y.append(y.numpy().ravel().copy())
            yield self._prep(x, self.spec.augment, generator), self._labels_on_device(y)
        self.last_epoch = (np.concatenate(seen_idx) if seen_idx else np.zeros(0, np.int64),
                           np.concatenate(seen_y) if seen_y else np.zeros(0, np.int64))

    def pipeline_batches(self) -> Iterator[Any]:
        """One epoch of the training pipeline's own batches, (image, label, index) as FFCV yields them:
        decode and corruption operations only, before the torch preprocessing (crop, whitening) that
        ``train_batches`` adds. bench/loaders.py times it to isolate the FFCV operations' cost."""
        return self._epoch(self._train)

    def eval_batches(self, split: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The split (or this rank's ``eval_shard`` of it) in sample-index order, without augmentation."""
        for x, y in self._epoch(self._eval[split]):
            yield self._prep(x, False, None), self._labels_on_device(y)

    def corrupted_arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """The whole split after the corruption, before cropping and whitening (N x H x W x C, labels)."""
        xs, ys = [], []
        with keep_torch_threads(self.threads):
            for x, y in self._raw_loader(split, corrupt=True):
                xs.append(x.numpy().copy())
                ys.append(y.numpy().ravel().copy())
        return np.concatenate(xs), np.concatenate(ys)


def _replace_stats(spec: _Spec, stats: tuple[np.ndarray, np.ndarray]) -> _Spec:
    from dataclasses import replace

    return replace(spec, stats=stats)


def build_ffcv_loader(cfg: TrialConfig, device: torch.device, distributed: bool = False,
                      eval_shard: tuple[int, int] | None = None) -> tuple[FFCVLoader, dict[str, Any]]:
    """The trial's FFCV loader and the facts about its data to log (like the memory loader's)."""
    if not cfg.data.beton_dir:
        raise ConfigError("data.loader='ffcv' needs data.beton_dir (the folder with train.beton and test.beton)")
    beton_dir = Path(cfg.data.beton_dir)
    meta = read_meta(beton_dir, cfg.data.name)
    loader = FFCVLoader(cfg, device, meta, beton_dir, distributed=distributed, eval_shard=eval_shard)
    fingerprint = meta["fingerprint"]
    if loader.num_train < int(meta["splits"]["train"]["num_samples"]):
        fingerprint += f":first{loader.num_train}"
    info = {
        "dataset_fingerprint": fingerprint,
        "dataset_source": f"ffcv:{beton_dir.resolve()} ({meta.get('source', '')})",
        "num_train": loader.num_train,
        "num_test": loader.num_test,
        "num_classes": int(meta["num_classes"]),
        "labels_changed": int(loader.changed.sum()),
        "ffcv_workers": loader.workers,
    }
    if cfg.data.subset is not None:
        info["subset_size"] = len(loader.train_indices)
    return loader, info
