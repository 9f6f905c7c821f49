"""A data set of your own: a function of no arguments returning
``(train_images, train_labels, test_images, test_labels)``: N x H x W x C uint8 images and N
integer labels, as numpy arrays.

Here, generated so that the example runs anywhere: sinusoidal gratings of 10 orientations
(the class), each with a random phase, spatial frequency, colour and pixel noise, 16 x 16 RGB.
Real code would read files instead (np.load, PIL, torchvision's readers, ...).
"""

from __future__ import annotations

import numpy as np

SIDE, CLASSES = 16, 10


def _make(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    labels = np.arange(n) % CLASSES
    rng.shuffle(labels)
    theta = labels * (np.pi / CLASSES) + rng.normal(0.0, 0.05, n)
    freq = rng.uniform(0.25, 0.6, n)
    phase = rng.uniform(0.0, 2 * np.pi, n)
    yy, xx = np.mgrid[0:SIDE, 0:SIDE].astype(np.float64)
    proj = np.cos(theta)[:, None, None] * xx + np.sin(theta)[:, None, None] * yy
    wave = np.sin(freq[:, None, None] * proj * 2.0 + phase[:, None, None])  # n x H x W in [-1, 1]
    colour = rng.uniform(0.3, 1.0, (n, 1, 1, 3))
    images = 127.5 + 100.0 * wave[..., None] * colour + rng.normal(0.0, 20.0, (n, SIDE, SIDE, 3))
    return np.clip(np.rint(images), 0, 255).astype(np.uint8), labels.astype(np.int64)


def gratings(n_train: int = 2000, n_test: int = 500, seed: int = 0):
    """The train and test splits, the same on every call and every machine (a fixed seed)."""
    rng = np.random.default_rng(seed)
    train_x, train_y = _make(n_train, rng)
    test_x, test_y = _make(n_test, rng)
    return train_x, train_y, test_x, test_y
