"""Test set-up: 8 fake CPU devices and full float32 matmul precision, before JAX is imported."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

from btd_jax import configs  # noqa: E402
from btd_jax.checkpoints import save_params_checkpoint  # noqa: E402
from btd_jax.models.unet import init_params  # noqa: E402
from btd_jax.score import Scorer  # noqa: E402

TINY = configs.get("tiny")  # 16 px patches, the fast test model


@pytest.fixture(scope="session")
def tiny_params():
    """Random (seed 0) weights of the ``tiny`` preset's U-Net."""
    return init_params(TINY.model, TINY.image_size, jax.random.key(0))


@pytest.fixture(scope="session")
def tiny_scorer(tiny_params):
    """A :class:`Scorer` of :func:`tiny_params` with the ``tiny`` preset, on every test device."""
    return Scorer.from_params(tiny_params, TINY)


@pytest.fixture(scope="session")
def tiny_workdir(tmp_path_factory, tiny_params):
    """A workdir holding :func:`tiny_params` (config.json + checkpoint). Shared: copy it before writing."""
    return save_params_checkpoint(str(tmp_path_factory.mktemp("tiny_workdir")), tiny_params, TINY)
