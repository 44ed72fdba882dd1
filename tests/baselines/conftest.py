"""A tiny synthetic anomaly task shared by the baseline tests.

Normal patches: a smooth random texture (a few low-frequency sinusoids) plus Gaussian noise of
std 0.03. Anomalies: the same kind of patch whose central half carries a flat bright blob with a
much stronger noise (std 0.12), i.e. both a semantic and a forensic (noise-level) inconsistency.
"""

import numpy as np
import pytest

SIDE = 16


def smooth_texture(rng: np.random.Generator, n: int, side: int) -> np.ndarray:
    yy, xx = np.mgrid[0:side, 0:side] / side
    img = np.zeros((n, side, side))
    for _ in range(3):
        fy, fx = rng.uniform(0.3, 1.5, (2, n, 1, 1))
        ph = rng.uniform(0, 2 * np.pi, (n, 1, 1))
        img += np.sin(2 * np.pi * (fy * yy + fx * xx) + ph)
    return 0.5 + 0.08 * img + rng.uniform(-0.1, 0.1, (n, 1, 1))


def make_task(seed: int = 0, n_train: int = 256, n_test: int = 48, side: int = SIDE):
    rng = np.random.default_rng(seed)
    train = smooth_texture(rng, n_train, side) + rng.normal(0, 0.03, (n_train, side, side))
    test = smooth_texture(rng, 2 * n_test, side) + rng.normal(0, 0.03, (2 * n_test, side, side))
    lo, hi = side // 4, side - side // 4
    fake = test[n_test:]
    fake[:, lo:hi, lo:hi] = 0.75 + rng.normal(0, 0.12, (n_test, hi - lo, hi - lo))
    labels = np.r_[np.zeros(n_test), np.ones(n_test)].astype(np.int32)
    clip = lambda a: np.clip(a, 0, 1).astype(np.float32)  # noqa: E731
    return clip(train), clip(test), labels


@pytest.fixture(scope="session")
def task():
    return make_task()
