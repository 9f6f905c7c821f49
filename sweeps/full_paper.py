"""Every CIFAR-10 experiment of Zhang et al. (ICLR 2017), as one sweep.

- Table 1: Inception (with and without BatchNorm), small AlexNet, MLP 3x512 and MLP 1x512, each
  with random crop on/off x weight decay on/off (5e-4 for conv nets, 1e-4 for MLPs [open]),
  plus random labels with no regularizer.
- Figure 1a: Inception on true labels, random labels, shuffled pixels, random pixels, gaussian.
- Figures 1b and 1c: Inception, AlexNet and MLP 1x512 at label corruption 0.0, 0.1, ..., 1.0,
  each stopped once it fits its training set (time to overfit; test error at fit).
- Figure 2b: Inception with and without BatchNorm, accuracy over training (from Table 1's runs).
The paper's learning rates (0.1 Inception, 0.01 AlexNet and MLPs), decay 0.95 per epoch,
momentum 0.9, batch 128; 100 epochs at most [open]. Trials that serve several figures run once.

Run (on a cluster, after `ray up cluster/aws.yaml`; the variables are the head's, see docs/cluster.md):
    ray submit cluster/aws.yaml sweeps/full_paper.py --tmux -- \
        --data-root '$RETHINK_DATA/cifar10' --storage '$RETHINK_STORAGE' \
        --results-dir '$HOME/results' --tracking-uri '$MLFLOW_TRACKING_URI'
Locally: python sweeps/full_paper.py --data-root DIR   (DIR holds cifar-10-batches-py)
Expected compute: 61 CIFAR-10 trials x up to 100 epochs of 50,000 images, about 5 A10G
GPU-hours by the FLOP-count estimate in docs/cluster.md (four trials share a GPU).
Smoke: python sweeps/full_paper.py --smoke --data-root DIR (4 tiny trials, about a minute).

ImageNet (Table 2, Figure 2a; the section at the end, docs/imagenet.md): Inception V3 at 299x299,
each trial a data-parallel job on one 8-GPU node, added only when the ImageNet .beton folder is
there: $RETHINK_IMAGENET_BETON if set, else DIR/../imagenet (the cluster layout: ~/data/cifar10
next to ~/data/imagenet) when it holds meta.json. 6 trials x 90 epochs.
"""

from rethink_dist.config import TrialConfig
from rethink_dist.protocol import paper_weight_decay
from rethink_dist.protocol import IMAGENET_RESOURCES as IMAGENET_DEFAULT_RESOURCES

NAME = "full_paper"
SEEDS = (0,)
MAX_EPOCHS = 100
LEVELS = tuple(round(0.1 * i, 1) for i in range(11))
TABLE1_ARCHS = (("inception_small", True), ("inception_small", False), ("alexnet_small", True),
                ("mlp_3x512", True), ("mlp_1x512", True))
FIG1BC_ARCHS = ("inception_small", "alexnet_small", "mlp_1x512")
RESOURCES = {"cpus": 1.0, "gpus": 0.25}  # four CIFAR-10 trials share one GPU


def trial(data_root, arch, batch_norm=True, augment=False, weight_decay=0.0, corruption="none", level=0.0,
          stop_when_fitted=False, seed=0):
    return TrialConfig.from_dict({
        "data": {"name": "cifar10", "root": data_root},
        "corruption": {"kind": corruption, "level": level, "seed": seed},
        "model": {"name": arch},
        "optim": {"epochs": MAX_EPOCHS},
        "reg": {"augment": augment, "weight_decay": weight_decay, "batch_norm": batch_norm},
        "stop": {"stop_when_fitted": stop_when_fitted},
        "resources": RESOURCES,
        "seed": seed,
        "sample_records": True,  # which samples are fitted when (samples/<trial_id>.parquet)
    })


def trials(data_root=None):
    from rethink_dist.sweep import unique

    grid = []
    for seed in SEEDS:
        # Table 1 (and Figure 2b: the BatchNorm pair is in here)
        for arch, bn in TABLE1_ARCHS:
            for augment in (True, False):
                for wd in (paper_weight_decay(arch), 0.0):
                    grid.append(trial(data_root, arch, bn, augment, wd, seed=seed))
            grid.append(trial(data_root, arch, bn, corruption="labels", level=1.0, seed=seed))
        # Figure 1a
        for kind in ("none", "shuffled_pixels", "random_pixels", "gaussian"):
            grid.append(trial(data_root, "inception_small", corruption=kind, seed=seed))
        grid.append(trial(data_root, "inception_small", corruption="labels", level=1.0, seed=seed))
        # Figures 1b and 1c
        for arch in FIG1BC_ARCHS:
            for level in LEVELS:
                kind = "labels" if level > 0 else "none"
                grid.append(trial(data_root, arch, corruption=kind, level=level, stop_when_fitted=True, seed=seed))
    grid += imagenet_trials(data_root)
    return unique(grid)


# ---------------------------------------------------------------------------------------------
# ImageNet: Table 2 and Figure 2a (Inception V3; data-parallel trials, rethink_dist.sweep.ddp)
# ---------------------------------------------------------------------------------------------
# The recipe (SGD momentum 0.9, global batch 256, lr 0.1 x 0.94 every two epochs, 90 epochs,
# weight decay 4e-5 and dropout 0.2 when on, random-resized-crop + flip augmentation) is
# rethink_dist.protocol.IMAGENET_RECIPE; docs/imagenet.md says why. Figure 2a is drawn from the
# per-epoch test accuracy (and the best so far) of the Table 2 runs: it needs no trials of its own.
IMAGENET_ENV = "RETHINK_IMAGENET_BETON"  # the ImageNet .beton folder; when set it must exist
IMAGENET_SEEDS = (0,)
IMAGENET_SETTINGS = (  # Table 2's rows: (augmentation, dropout, weight decay)
    (True, True, True),
    (True, False, False),
    (False, False, True),
    (False, False, False),
)
# One 8-GPU node per trial: 8 Ray Train workers of 1 GPU and 10 CPUs each (FFCV's JPEG decoding).
# Change it here for other nodes, e.g. {"ddp_workers": 4, "cpus": 8.0, "gpus": 1.0}; the global
# batch (256) must stay a multiple of ddp_workers. --gpus-per-trial / --cpus-per-trial set the
# GPUs / CPUs of each worker of these trials.
IMAGENET_RESOURCES = dict(IMAGENET_DEFAULT_RESOURCES)


def imagenet_beton_dir(data_root):
    """The ImageNet .beton folder, or None when this sweep has no ImageNet trials."""
    import os
    from pathlib import Path

    if os.environ.get(IMAGENET_ENV):
        return os.environ[IMAGENET_ENV]  # the sweep checks that it exists before Ray starts
    if data_root:
        sibling = Path(data_root).resolve().parent / "imagenet"
        if (sibling / "meta.json").is_file():
            return str(sibling)
    return None


def imagenet_trials(data_root):
    from rethink_dist.config import imagenet_trial

    beton = imagenet_beton_dir(data_root)
    if beton is None:
        return []
    grid = []
    for seed in IMAGENET_SEEDS:
        for augment, dropout, weight_decay in IMAGENET_SETTINGS:
            grid.append(imagenet_trial(beton, augment=augment, dropout=dropout, weight_decay=weight_decay,
                                       seed=seed, resources=IMAGENET_RESOURCES))
        # Random labels: without regularizers (the paper's 95.20% top-1 train) and with all of them.
        for regularized in (False, True):
            grid.append(imagenet_trial(beton, augment=regularized, dropout=regularized, weight_decay=regularized,
                                       random_labels=True, seed=seed, resources=IMAGENET_RESOURCES))
    return grid


if __name__ == "__main__":
    from rethink_dist.commands.sweep import main

    raise SystemExit(main(__file__))
