"""The theory experiments (sections 4 and 5 of Zhang et al.) as one sweep of theory trials.

- Expressivity (section 4): the 2n + d-weight ReLU network on n Gaussian samples in d dimensions,
  n = 1,000 ... 100,000, d = 256 and 3,072 (CIFAR-sized), Gaussian and label targets (10 classes,
  one-hot); logged: params, max fit error, the lemma's smallest eigenvalue, smallest gap, build time.
- Kernels (section 5): the minimum-norm interpolant K alpha = Y with the linear and RBF kernels,
  on raw pixels and on random-conv features (256 and 1,024 filters), with ridge 0 and 1e-2, RBF
  widths below and above the default, and
  the randomization test on kernels (labels at p = 0.5 and 1.0: still fitted, the norm grows).
  On CIFAR-10 when --data-root is given (float32, all 50,000 training images: K takes 10 GB;
  the random-conv trials use 10,000 images), otherwise on the embedded digits (float64).

Run:      python sweeps/theory.py [--data-root DIR]     (or: rethink-dist sweep sweeps/theory.py)
Expected: 16 expressivity trials (about 3 minutes on 2 CPU cores; n = 100,000 x 3,072 holds
          2.4 GB of samples) and 12 kernel trials (digits: seconds each; CIFAR-10: the 50,000-image
          solves take tens of minutes on a CPU, a few minutes on a GPU).
Smoke:    python sweeps/theory.py --smoke
"""

NAME = "theory"
EXPRESSIVITY_N = (1000, 3000, 10_000, 100_000)
EXPRESSIVITY_D = (256, 3072)
TARGETS = ("gaussian", "labels")
FILTERS = (256, 1024)
RIDGES = (0.0, 1e-2)
RANDOM_LABEL_LEVELS = (0.5, 1.0)
# RBF widths around scikit-learn's 'scale' default (1 / (D Var), about 0.11 on digits pixels / 255
# and 0.005 on CIFAR-10's), which every other RBF trial uses
GAMMAS = {"digits": (0.02, 0.5), "cifar10": (0.001, 0.03)}


def expressivity_trials():
    return [
        {"kind": "expressivity", "params": {"n": n, "d": d, "targets": t, "num_classes": 10 if t == "labels" else None}}
        for n in EXPRESSIVITY_N
        for d in EXPRESSIVITY_D
        for t in TARGETS
    ]


def kernel_trials(data_root=None):
    data = ({"dataset": "cifar10", "data_root": data_root, "dtype": "float32"} if data_root
            else {"dataset": "digits", "dtype": "float64"})
    conv_data = {**data, "max_train": 10_000} if data_root else data
    out = []
    for ridge in RIDGES:
        out.append({**data, "kernel": "linear", "features": "raw", "ridge": ridge})
        out.append({**data, "kernel": "rbf", "features": "raw", "ridge": ridge})
    for k in FILTERS:
        for ridge in RIDGES:
            out.append({**conv_data, "kernel": "rbf", "features": "random_conv", "num_filters": k, "ridge": ridge})
    for gamma in GAMMAS[data["dataset"]]:
        out.append({**data, "kernel": "rbf", "features": "raw", "gamma": gamma})
    for level in RANDOM_LABEL_LEVELS:
        out.append({**data, "kernel": "rbf", "features": "raw", "corruption": "labels", "level": level})
    # drop the Nones so the trial ids and names stay short
    return [{"kind": "kernel", "params": {k: v for k, v in p.items() if v is not None}} for p in out]


def trials(data_root=None):
    exp = [{"kind": t["kind"], "params": {k: v for k, v in t["params"].items() if v is not None}}
           for t in expressivity_trials()]
    return exp + kernel_trials(data_root)


if __name__ == "__main__":
    from rethink_dist.commands.sweep import main

    raise SystemExit(main(__file__))
