"""The embedded sweep: the randomization tests on scikit-learn's digits, on any laptop.

Three architectures (MLP 1x512, MLP 3x512, small AlexNet) x nine corruptions (labels at
p = 0, 0.2, 0.4, 0.6, 0.8, 1.0; shuffled pixels; random pixels; gaussian), each trained until it
fits its training set (the paper's "time to overfit") or 800 epochs. No explicit regularizers,
as in the paper's randomization tests.

Run:      python sweeps/quick.py            (or: rethink-dist sweep sweeps/quick.py; make demo)
Expected: 27 trials, about 7 minutes on 2 CPU cores (each until fitted); seconds per trial on a GPU.
Smoke:    python sweeps/quick.py --smoke    (4 tiny trials, about a minute)
"""

from rethink_dist.config import TrialConfig

NAME = "quick"
ARCHS = ("alexnet_small", "mlp_3x512", "mlp_1x512")  # the longest trials first: no lone long trial at the end
LABEL_LEVELS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
PIXEL_KINDS = ("shuffled_pixels", "random_pixels", "gaussian")
SEEDS = (0,)
MAX_EPOCHS = 800  # MLP 1x512 needs about 600 epochs to memorise random digits labels


def corruptions():
    for level in LABEL_LEVELS:
        yield {"kind": "labels" if level > 0 else "none", "level": level}
    for kind in PIXEL_KINDS:
        yield {"kind": kind, "level": 0.0}


def trials(data_root=None):
    return [
        TrialConfig.from_dict({
            "data": {"name": "digits"},
            "corruption": {**corruption, "seed": seed},
            "model": {"name": arch},
            "optim": {"epochs": MAX_EPOCHS},
            "stop": {"stop_when_fitted": True},
            "seed": seed,
            "sample_records": True,  # which samples are fitted when (samples/<trial_id>.parquet)
        })
        for arch in ARCHS
        for corruption in corruptions()
        for seed in SEEDS
    ]


if __name__ == "__main__":
    from rethink_dist.commands.sweep import main

    raise SystemExit(main(__file__))
