"""The randomization tests at the paper's scale: Fashion-MNIST, 60,000 real training images.

Sections (RETHINK_FASHION_SECTIONS=a,b,... picks them, or all; default: figure1,table1):
- figure1: MLP 1x512 x {true labels, labels p = 0.2, 0.4, 0.6, 0.8, 1.0, shuffled pixels, random
  pixels, gaussian}, each stopped once fitted: Figures 1a-1c at n = 60,000.
- table1: the paper's Table 1 MLP rows: MLP 1x512 and MLP 3x512, weight decay on and off (1e-4),
  true labels, and random labels without regularizers (with figure1's trials that serve both).
- mlp3_levels (when asked): MLP 3x512 at p = 0.2, 0.4, 0.6, 0.8 (the default sweep has its p = 0
  and p = 1 from table1, the two ends of its Figures 1b and 1c).
- mlp3_pixels (when asked): MLP 3x512 on shuffled pixels, random pixels, gaussian.
- convnets (when asked; sized for a GPU, a quarter GPU per trial): small AlexNet and small
  Inception with and without BatchNorm x {true labels, random labels, shuffled pixels, random
  pixels, gaussian} and Inception at p = 0.2 ... 0.8, random crop off, no weight decay.
- paper_schedule (when asked): MLP 1x512 on random labels with the paper's own decay, 0.95 per
  50,000 images (0.95 ** 1.2 per epoch of 60,000), 60 epochs, to show where it stalls
  (docs/results/fashion_mnist_paper_schedule.sh runs the same trial with rethink-dist train).

The protocol ([open] choices: docs/protocol.md, rethink_dist/protocol.py; all logged with every run):
SGD momentum 0.9, batch 128, lr 0.005 (MLPs; the paper's 0.01 for AlexNet, 0.1 for Inception)
multiplied by 0.995 after every epoch (one schedule for every corruption of a figure); at most 450
epochs; "fitted" = 99% training accuracy (the paper's MLP 1x512 reaches 99.34% on random labels).
Why (rethink_dist.protocol, docs/protocol.md): random labels on 60,000 gray images are slow to fit
for an MLP; with the paper's 0.01 x 0.99 MLP 1x512 stalls near 94% by epoch 200, with 0.005 x
0.995 it reaches 99% at epoch 388 (measured with `rethink-dist train`). The CPU sections feed
the MLPs the gray 28x28 image (data.channels = 1, 784 inputs): repeating the gray channel three
times gives the paper's parameter counts but the same functions (the three copies of a weight see
the same pixel) at 3x the cost of the first layer; the conv nets get the paper's 28x28x3 input.

Run:      python sweeps/fashion.py --storage results     (or: rethink-dist sweep sweeps/fashion.py)
          RETHINK_FASHION_SECTIONS=convnets python sweeps/fashion.py --gpus-per-trial 0.25
Expected: the default sections are 13 trials. Measured on a 2-core AMD EPYC VM (2026-12-02,
          one thread per trial, two trials at a time): an MLP 1x512 epoch over 60,000 images takes
          about 3.9 s (training 2.9 s, evaluating both splits 1.0 s), MLP 3x512 about 7.5 s; the
          per-epoch seconds of every trial are in the Parquet table (train_seconds, eval_seconds),
          and the whole default sweep's wall time is in docs/results/fashion-mnist.md. The conv
          nets on the CPU: bench/train.py measured whole-epoch throughputs of 477 (small AlexNet)
          and 43 (small Inception) images/s on these 2 cores (docs/speed.md), so one 60,000-image
          epoch is about 2 and 23 minutes, a 200-epoch trial 7 and 78 hours: run them on a GPU.
Smoke:    python sweeps/fashion.py --smoke                (4 tiny trials)
"""

import os

from rethink_dist.config import TrialConfig
from rethink_dist.protocol import FASHION_EPOCHS, FASHION_FIT_THRESHOLD, FASHION_LR_DECAY, paper_lr, paper_weight_decay

NAME = "fashion"
SECTIONS_ENV = "RETHINK_FASHION_SECTIONS"
DEFAULT_SECTIONS = ("figure1", "table1")
ALL_SECTIONS = DEFAULT_SECTIONS + ("mlp3_levels", "mlp3_pixels", "convnets", "paper_schedule")
SEEDS = (0,)
LR_DECAY = FASHION_LR_DECAY  # per epoch of 60,000 images, every corruption level alike
MAX_EPOCHS = FASHION_EPOCHS
FIT_THRESHOLD = FASHION_FIT_THRESHOLD
LEVELS = (0.2, 0.4, 0.6, 0.8, 1.0)
PIXEL_KINDS = ("shuffled_pixels", "random_pixels", "gaussian")
PAPER_DECAY = 0.95 ** (60000 / 50000)  # the paper's 0.95 per 50,000 images, per epoch of 60,000
PAPER_EPOCHS = 60  # the lr is then 2.5% of its start: the curve has flattened
GPU = {"cpus": 1.0, "gpus": 0.25}


def trial(arch, corruption="none", level=0.0, weight_decay=0.0, batch_norm=True, channels=None, seed=0,
          lr=None, lr_decay=LR_DECAY, epochs=MAX_EPOCHS, resources=None, data_root=None):
    if channels is None:
        channels = 1 if arch.startswith("mlp") else 3
    return TrialConfig.from_dict({
        "data": {"name": "fashion_mnist", "root": data_root, "channels": channels},
        "corruption": {"kind": corruption, "level": level, "seed": seed},
        "model": {"name": arch},
        "optim": {"lr": lr, "lr_decay": lr_decay, "epochs": epochs},
        "reg": {"weight_decay": weight_decay, "batch_norm": batch_norm},
        "stop": {"stop_when_fitted": True, "fit_threshold": FIT_THRESHOLD},
        "resources": resources or {"cpus": 1.0},
        "seed": seed,
        "sample_records": True,  # which samples are fitted when (samples/<trial_id>.parquet)
    })


def sections():
    raw = os.environ.get(SECTIONS_ENV, "").strip()
    if not raw:
        return DEFAULT_SECTIONS
    names = tuple(s.strip() for s in raw.split(",") if s.strip())
    if names == ("all",):
        return ALL_SECTIONS
    bad = [s for s in names if s not in ALL_SECTIONS]
    if bad:
        raise ValueError(f"{SECTIONS_ENV}={raw!r}: unknown section {bad[0]!r}; valid: all, {', '.join(ALL_SECTIONS)}")
    return names


def label_grid(arch, levels, seed, **kw):
    return [trial(arch, "labels" if p > 0 else "none", p, seed=seed, **kw) for p in levels]


def trials(data_root=None):
    from rethink_dist.sweep import unique

    chosen = sections()
    grid = []
    for seed in SEEDS:
        kw = {"seed": seed, "data_root": data_root}
        if "table1" in chosen:  # random labels first: the longest trials start first
            grid.append(trial("mlp_3x512", "labels", 1.0, **kw))
        if "figure1" in chosen:
            grid += label_grid("mlp_1x512", (1.0,), **kw)
            grid += [trial("mlp_1x512", kind, **kw) for kind in ("gaussian", "random_pixels")]
            grid += label_grid("mlp_1x512", (0.8, 0.6), **kw)
        if "mlp3_levels" in chosen:
            grid += label_grid("mlp_3x512", (0.8, 0.6), **kw)
        if "figure1" in chosen:
            grid += label_grid("mlp_1x512", (0.4, 0.2, 0.0), **kw)
            grid.append(trial("mlp_1x512", "shuffled_pixels", **kw))
        if "mlp3_levels" in chosen:
            grid += label_grid("mlp_3x512", (0.4, 0.2), **kw)
        if "table1" in chosen:
            for arch in ("mlp_1x512", "mlp_3x512"):
                for wd in (0.0, paper_weight_decay(arch)):
                    grid.append(trial(arch, weight_decay=wd, **kw))
            grid.append(trial("mlp_1x512", "labels", 1.0, **kw))
        if "mlp3_pixels" in chosen:
            grid += [trial("mlp_3x512", kind, **kw) for kind in PIXEL_KINDS]
        if "paper_schedule" in chosen:
            grid.append(trial("mlp_1x512", "labels", 1.0, lr=paper_lr("mlp_1x512"), lr_decay=PAPER_DECAY,
                              epochs=PAPER_EPOCHS, **kw))
        if "convnets" in chosen:
            for arch, bn in (("inception_small", True), ("inception_small", False), ("alexnet_small", True)):
                gkw = {**kw, "batch_norm": bn, "resources": GPU}
                grid += [trial(arch, "labels", 1.0, **gkw), trial(arch, **gkw)]
                grid += [trial(arch, kind, **gkw) for kind in PIXEL_KINDS]
            grid += label_grid("inception_small", (0.2, 0.4, 0.6, 0.8), **kw, resources=GPU)
    return unique(grid)


if __name__ == "__main__":
    from rethink_dist.commands.sweep import main

    raise SystemExit(main(__file__))
