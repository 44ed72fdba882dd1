"""Shared fixtures: a tiny (16 px) DDPM, in memory and as a workdir, and small HU slices."""

import numpy as np
import pytest

from btd_jax import configs


@pytest.fixture(scope="session")
def tiny(tiny_params):
    return tiny_params, configs.get("tiny")


@pytest.fixture(scope="session")
def ddpm_workdir(tiny_workdir):
    return tiny_workdir


@pytest.fixture(scope="session")
def hu_slices(tmp_path_factory):
    """(2, 40, 40) soft-tissue slices in HU (40 +- 20) with an air strip: a .npy input."""
    rng = np.random.default_rng(0)
    hu = rng.normal(40.0, 20.0, (2, 40, 40)).astype(np.float32)
    hu[:, :3] = -1000.0
    path = tmp_path_factory.mktemp("slices") / "slices.npy"
    np.save(path, hu)
    return path, hu


@pytest.fixture
def patches():
    """(5, 16, 16) patches in [0, 1] and centre-square masks."""
    rng = np.random.default_rng(1)
    x = rng.uniform(0.25, 0.45, (5, 16, 16)).astype(np.float32)
    m = np.zeros(x.shape, bool)
    m[:, 5:11, 4:12] = True
    return x, m
