"""The protocol: every choice a trial's numbers depend on besides its own config, in one place.

- the data sets: shape, classes, crop, padding of the random crop, and the default learning-rate
  decay per epoch and epoch cap of the trials that run on them;
- the paper's optimiser choices (initial learning rates; weight-decay coefficients where the
  paper is [open]): the defaults here, an architecture's own beside its builder (its
  ``@register_model`` in rethink_dist/models/, read by :mod:`rethink_dist.architectures`, which
  also holds what each can express);
- the ImageNet recipe of the data-parallel Inception V3 trials (docs/imagenet.md says why).

Choices the paper leaves [open] are documented in docs/protocol.md and logged with every run
(the resolved config is logged, so a default taken from here is in each run's parameters).
Which of these a trial's ``None`` fields take is in one table: :mod:`rethink_dist.defaults`.
This module is plain data: it imports nothing of the project but the architectures' declarations.
"""

from __future__ import annotations

from dataclasses import dataclass

from rethink_dist.architectures import MODELS

# ------------------------------------------------------------------------------ optimiser
# The paper's initial learning rates: 0.1 for Inception (declared by inception_small and
# inception_v3: lr=0.1), 0.01 for the small AlexNet and MLPs (the default).
PAPER_LR_DEFAULT = 0.01
# [open] Weight-decay coefficient when a sweep switches weight decay on (common reproductions):
# 5e-4, the MLPs 1e-4 (declared by mlp_1x512 and mlp_3x512: weight_decay=1e-4).
PAPER_WEIGHT_DECAY_DEFAULT = 5e-4
PAPER_DECAY_PER_IMAGES = (0.95, 50_000)  # the paper's decay: x0.95 per 50,000 images (one CIFAR-10 epoch)


def paper_lr(arch: str) -> float:
    """The paper's initial learning rate of ``arch`` (an outside model: the default)."""
    return _declared(arch, "lr", PAPER_LR_DEFAULT)


def paper_weight_decay(arch: str) -> float:
    """The weight-decay coefficient of ``arch`` when weight decay is on (an outside model: the default)."""
    return _declared(arch, "weight_decay", PAPER_WEIGHT_DECAY_DEFAULT)


def _declared(arch: str, fact: str, default: float) -> float:
    value = getattr(MODELS[arch], fact) if arch in MODELS else None
    return default if value is None else value


def paper_decay_per_epoch(num_train: int) -> float:
    """The paper's decay (0.95 per 50,000 images) for an epoch of ``num_train`` images."""
    factor, images = PAPER_DECAY_PER_IMAGES
    return float(factor ** (num_train / images))


# ------------------------------------------------------------------------------ ImageNet recipe
RECIPE_NAME = "imagenet-sync-sgd-v1"
IMAGENET_EPOCHS = 90
IMAGENET_LR_DECAY = float(0.94 ** 0.5)  # 0.94 every two epochs (Inception V3's schedule), applied per epoch
IMAGENET_RECIPE = {
    "optim.batch_size": 256,  # global: 8 workers x 32, the per-replica batch of Inception V3's training
    "optim.lr": 0.1,  # the paper's Inception learning rate; the usual SGD rate at batch 256
    "optim.momentum": 0.9,  # the paper's CIFAR-10 optimiser
    "optim.lr_decay": IMAGENET_LR_DECAY,
    "optim.epochs": IMAGENET_EPOCHS,
}
IMAGENET_WEIGHT_DECAY = 4e-5  # Inception V3's coefficient, when weight decay is on
IMAGENET_DROPOUT = 0.2  # Inception V3's keep probability 0.8 before the classifier, when dropout is on
IMAGENET_IMAGE_SIZE = 299
IMAGENET_RESOURCES = {"ddp_workers": 8, "cpus": 10.0, "gpus": 1.0}  # one 8-GPU node per trial

# ------------------------------------------------------------------------------ Fashion-MNIST
# [open] The schedule of the Fashion-MNIST sweeps (docs/protocol.md: why; docs/results/fashion-mnist.md:
# what it reaches, and what the paper's own schedule reaches).
# Measured (docs/protocol.md, with the commands): at lr 0.005 x 0.995 per epoch, MLP 1x512 fits 99%
# of the random labels in 388 epochs; at the paper's lr 0.01 x 0.99 it stalls near 94% by epoch 200,
# and with the paper's own decay (0.95 per 50,000 images) near 51% by epoch 60.
FASHION_MLP_LR = 0.005
FASHION_LR_DECAY = 0.995  # per epoch of 60,000 images
FASHION_EPOCHS = 450
FASHION_FIT_THRESHOLD = 0.99  # "fitted": the paper's MLP 1x512 reaches 99.34% on random labels
DIGITS_TRAIN = 1437


# ------------------------------------------------------------------------------ data sets
@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    image_shape: tuple[int, int, int] | None  # stored H, W, C (None: variable, e.g. ImageNet)
    crop: int  # model input side: centre crop for evaluation, random crop with augmentation
    augment_pad: int  # zero padding around the stored image before a random crop
    lr_decay: float  # default learning-rate decay per epoch
    epochs: int  # default maximum epochs
    loaders: tuple[str, ...]
    needs_root: bool
    description: str
    input_channels: int | None = None  # channels the models see (a gray channel repeated); None: as stored
    lr: tuple[tuple[str, float], ...] = ()  # (architecture, initial lr) where this data set departs from the paper's

    def default_lr(self, arch: str) -> float:
        """The initial learning rate of ``arch`` on this data set: the paper's unless listed in ``lr``."""
        return dict(self.lr).get(arch, paper_lr(arch))

    @property
    def stored_channels(self) -> int:
        """The channels the data set stores (variable-size data sets, ImageNet, are RGB)."""
        return self.image_shape[2] if self.image_shape else 3

    @property
    def model_channels(self) -> int:
        """The channels its models see by default: ``input_channels``, else the stored ones."""
        return self.input_channels if self.input_channels is not None else self.stored_channels


DATASETS: dict[str, DatasetInfo] = {
    # The paper's protocol: 32x32 images cropped to 28x28, lr x0.95 per epoch of 50,000 images, 100 epochs [open].
    "cifar10": DatasetInfo("cifar10", 10, (32, 32, 3), 28, 0, paper_decay_per_epoch(50_000), 100, ("memory", "ffcv"),
                           True, "CIFAR-10 python batches (torchvision layout)"),
    # scikit-learn's 8x8 digits, a fixed split of 1,437 / 360. An epoch is 12 steps at batch 128, so
    # the decay is the paper's per image.
    "digits": DatasetInfo("digits", 10, (8, 8, 1), 8, 1, paper_decay_per_epoch(DIGITS_TRAIN), 800, ("memory", "ffcv"),
                          False, "scikit-learn's bundled 8x8 digits"),
    "synthetic": DatasetInfo("synthetic", 10, (8, 8, 1), 8, 1, paper_decay_per_epoch(512), 100, ("memory", "ffcv"),
                             False, "generated class blobs"),
    # 28x28 gray, repeated to the paper's 28x28x3 input by default (the paper's exact parameter
    # counts); random crop with 2 pixels of padding (CIFAR-10's 28-of-32 crop shifts by the same +-2).
    "fashion_mnist": DatasetInfo("fashion_mnist", 10, (28, 28, 1), 28, 2, FASHION_LR_DECAY, FASHION_EPOCHS,
                                 ("memory", "ffcv"), False, "Fashion-MNIST IDX files (Debian: dataset-fashion-mnist)",
                                 input_channels=3, lr=(("mlp_1x512", FASHION_MLP_LR), ("mlp_3x512", FASHION_MLP_LR))),
    "imagenet": DatasetInfo("imagenet", 1000, None, IMAGENET_IMAGE_SIZE, 0, IMAGENET_LR_DECAY, IMAGENET_EPOCHS,
                            ("ffcv",), True, "ILSVRC-2012 train/<wnid>/*.JPEG, val/<wnid>/*.JPEG"),
}
