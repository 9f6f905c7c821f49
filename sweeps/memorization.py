"""Beyond the paper: which training samples a network memorizes (Feldman and Zhang, NeurIPS 2020).

K trials per setting, each on its own seeded random 70% of the training set (data.subset = 0.7,
data.subset_seed = k, seed = k), with per-sample records on: every trial records, for every
training sample (held or not) and every test sample, whether its final model classifies it as its
label. `rethink-dist memorization <storage>/memorization` then estimates each training sample's
memorization score mem(i) = Pr[right | i held] - Pr[right | i not held] with its standard error,
its consistency score, and the largest train-to-test influences (rethink_dist/memorization.py).
With labels corrupted at p = 0.2 the corrupted samples are the ones to be memorized: the command
prints the AUC of mem for telling them from the clean ones, and the fraction of them among the
top-mem samples.

Sections (RETHINK_MEMORIZATION_SECTIONS=a,b; default: digits):
- digits: MLP 1x512 on scikit-learn's digits (1,437 training images), true labels and labels at
  p = 0.2, trained until fitted (at most 800 epochs): RETHINK_MEMORIZATION_K trials per setting
  (default 100). With K = 100 a sample is held by about 70 trials and left out by about 30, so the
  standard error of mem is at most sqrt(0.25/70 + 0.25/30) = 0.11, and near 0.05 for a sample whose
  held-out outcome is mostly wrong (the memorized ones): small beside the gap of about 1 between a
  memorized corrupted sample and a clean one that generalizes.
- fashion (when asked): MLP 1x512 on Fashion-MNIST's 60,000 images (gray input, data.channels = 1),
  the same two settings, at most RETHINK_MEMORIZATION_FASHION_EPOCHS epochs (default 60; the
  fraction fitted is in each trial's rows): RETHINK_MEMORIZATION_FASHION_K trials per setting
  (default 8: 65 minutes on a 2-core machine, other work beside it, for 16 trials on 42,000 images
  each; too few for single-sample scores, docs/results/memorization.md; a GPU cluster runs hundreds).

Each choice of sections is its own sweep: "memorization" (digits, the default),
"memorization-fashion" (RETHINK_MEMORIZATION_SECTIONS=fashion), "memorization-digits-fashion" (both).

Run:      python sweeps/memorization.py --storage results
          rethink-dist memorization results/memorization
          RETHINK_MEMORIZATION_SECTIONS=fashion python sweeps/memorization.py --storage results
          rethink-dist memorization results/memorization-fashion
Smoke:    python sweeps/memorization.py --smoke   (4 subset trials of 2 epochs on 256 digits)
"""

import os

from rethink_dist.config import TrialConfig

SECTIONS_ENV = "RETHINK_MEMORIZATION_SECTIONS"
ALL_SECTIONS = ("digits", "fashion")
FRACTION = 0.7  # Feldman and Zhang's subset size
LEVELS = (0.0, 0.2)
MAX_EPOCHS = 800


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, str(default))
    if not value.isdigit() or int(value) < 2:
        raise ValueError(f"{name}={value!r} must be an integer >= 2 (trials per setting)")
    return int(value)


def _trial(data: dict, level: float, k: int, epochs: int) -> TrialConfig:
    return TrialConfig.from_dict({
        "data": {**data, "subset": FRACTION, "subset_seed": k},
        "corruption": {"kind": "labels" if level > 0 else "none", "level": level, "seed": 0},
        "model": {"name": "mlp_1x512"},
        "optim": {"epochs": epochs},
        "stop": {"stop_when_fitted": True},
        "seed": k,
        "sample_records": True,
    })


def sections() -> list[str]:
    asked = [s.strip() for s in os.environ.get(SECTIONS_ENV, "digits").split(",") if s.strip()]
    bad = [s for s in asked if s not in ALL_SECTIONS]
    if bad or not asked:
        raise ValueError(f"{SECTIONS_ENV}={os.environ.get(SECTIONS_ENV)!r}: unknown {bad}; valid: {', '.join(ALL_SECTIONS)}")
    return asked


def _name() -> str:
    """The sweep's name: its own folder for each choice of sections (a sweep's trials are fixed)."""
    try:
        chosen = sections()
    except ValueError:
        return "memorization"  # trials() says what is wrong with the variable
    return "memorization" if chosen == ["digits"] else "-".join(["memorization", *chosen])


NAME = _name()


def trials(data_root=None):
    out = []
    chosen = sections()
    if "digits" in chosen:
        k = _env_int("RETHINK_MEMORIZATION_K", 100)
        out += [_trial({"name": "digits"}, level, i, MAX_EPOCHS) for level in LEVELS for i in range(k)]
    if "fashion" in chosen:
        k = _env_int("RETHINK_MEMORIZATION_FASHION_K", 8)
        epochs = _env_int("RETHINK_MEMORIZATION_FASHION_EPOCHS", 60)
        data = {"name": "fashion_mnist", "root": data_root, "channels": 1}
        out += [_trial(data, level, i, epochs) for level in LEVELS for i in range(k)]
    return out


def smoke_trials(data_root=None):
    """Four subset trials of one setting (digits, p = 0.2): 2 epochs on the first 256 images."""
    return [_trial({"name": "digits", "max_train": 256}, 0.2, i, 2) for i in range(4)]


if __name__ == "__main__":
    from rethink_dist.commands.sweep import main

    raise SystemExit(main(__file__))
