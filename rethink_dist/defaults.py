"""What a trial runs with: the one table of the defaults that depend on its data set and model.

Every field of a :class:`rethink_dist.config.TrialConfig` has its default in the dataclasses of
rethink_dist/config.py (momentum 0.9, batch 128, weight decay 0, seed 0, ...), except the fields
below: they are ``None`` there and take, in :meth:`TrialConfig.resolved` (the one resolution step,
applied before a trial runs and to what is logged of it), the value of this table for the
config's data set and architecture. ``rethink-dist train --print-config`` prints a command
line's resolved config (every field) without training.

===================  ====================================================================
field                default
===================  ====================================================================
``optim.lr``         the data set's rate for the architecture where it has one
                     (``DatasetInfo.lr``: Fashion-MNIST's MLPs, 0.005), else the paper's:
                     the architecture's ``lr`` (its ``@register_model``: 0.1 for
                     Inception), else ``protocol.PAPER_LR_DEFAULT`` (0.01)
``optim.lr_decay``   the data set's ``DatasetInfo.lr_decay`` (the paper's x0.95 per 50,000
                     images, per epoch of its training set; Fashion-MNIST 0.995; ImageNet
                     the recipe's)
``optim.epochs``     the data set's ``DatasetInfo.epochs`` (CIFAR-10 100, digits 800,
                     Fashion-MNIST 450, ImageNet 90; a user's data set 100)
``data.image_size``  the data set's ``DatasetInfo.crop`` (CIFAR-10 28, digits 8, ImageNet 299;
                     a user's data set: its shorter side)
``data.channels``    the data set's ``DatasetInfo.model_channels`` (Fashion-MNIST 3, the gray
                     channel repeated to the paper's input; otherwise the stored channels)
``name``             :func:`rethink_dist.config.run_name` of the config, lr resolved
===================  ====================================================================

The data sets' facts are in :data:`rethink_dist.protocol.DATASETS` (a user's ``module:callable``
data set: :func:`rethink_dist.external.user_dataset_info`), the architectures' in their
declarations (:mod:`rethink_dist.architectures`); docs/protocol.md argues the [open] ones.
"""

from __future__ import annotations

from typing import Any, Callable

from rethink_dist.external import dataset_facts
from rethink_dist.protocol import DatasetInfo

# dotted config key -> its default, from the data set's facts and the architecture's name
DEPENDENT: dict[str, Callable[[DatasetInfo, str], Any]] = {
    "optim.lr": lambda info, arch: info.default_lr(arch),
    "optim.lr_decay": lambda info, arch: info.lr_decay,
    "optim.epochs": lambda info, arch: info.epochs,
    "data.image_size": lambda info, arch: info.crop,
    "data.channels": lambda info, arch: info.model_channels,
}


def dependent_defaults(dataset: str, arch: str) -> dict[str, Any]:
    """The defaults of :data:`DEPENDENT` for a trial of ``arch`` on ``dataset`` (``name`` aside)."""
    info = dataset_facts(dataset)
    return {key: default(info, arch) for key, default in DEPENDENT.items()}
