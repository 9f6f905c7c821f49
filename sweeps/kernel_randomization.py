"""The kernel's randomization test (Zhang et al. 2017, section 5, with the networks' Figure 1
corruptions): the minimum-norm interpolant of Fashion-MNIST's training images at every label
corruption level and under each pixel corruption, for the RBF and the Laplacian kernel.

Each kernel runs one trial with the true labels and ``also_levels`` 0.2, 0.4, ..., 1.0 (label
corruption changes Y, not K: one factorization answers every level) and one trial per pixel
corruption (shuffled pixels, random pixels, Gaussian images: each changes K). The corruption is the
networks' own module (a pure function of the seed and the sample index). Logged per level: train
error (0: every level is interpolated), test error, the norm sqrt(alpha^T K alpha), the conjugate-
gradient iterations to reach the tolerance (the kernel analog of Figure 1b), the residuals.

Run:      python sweeps/kernel_randomization.py        (or: rethink-dist sweep sweeps/kernel_randomization.py)
          RETHINK_KERNEL_N=10000 python sweeps/kernel_randomization.py   (fewer training images)
Expected: 8 trials; float32 (K takes 13.4 GiB at the default n = 60,000, so one trial at a time
          on a 24 GiB machine: --max-concurrent 1); n = 10,000: a few minutes each on 2 CPU cores.
Smoke:    python sweeps/kernel_randomization.py --smoke
"""

import os

NAME = "kernel_randomization"
KERNELS = ("rbf", "laplacian")
LEVELS = (0.2, 0.4, 0.6, 0.8, 1.0)
PIXEL_CORRUPTIONS = ("shuffled_pixels", "random_pixels", "gaussian")


def trials(data_root=None):
    n = int(os.environ.get("RETHINK_KERNEL_N", "60000"))
    base = {"dataset": "fashion_mnist", "dtype": "float32", "features": "raw", "max_train": n,
            **({"data_root": data_root} if data_root else {})}
    out = []
    for k in KERNELS:
        out.append({"kind": "kernel", "params": {**base, "kernel": k, "also_levels": list(LEVELS)}})
        for c in PIXEL_CORRUPTIONS:
            out.append({"kind": "kernel", "params": {**base, "kernel": k, "corruption": c}})
    return out


if __name__ == "__main__":
    from rethink_dist.commands.sweep import main

    raise SystemExit(main(__file__))
