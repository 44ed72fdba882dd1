"""The shared interface pieces: patch validation, windows, config and checkpoint serialisation."""

import numpy as np
import pytest

from btd_jax.baselines import base, ood_ddpm
from btd_jax.data.errors import DataError


def test_check_patches_accepts_nhwc_and_refuses_bad_input():
    x = np.full((2, 4, 4, 1), 0.5, np.float64)
    out = base.check_patches(x)
    assert out.shape == (2, 4, 4) and out.dtype == np.float32
    with pytest.raises(DataError, match="train_patches: contains NaN"):
        base.check_patches(np.full((1, 4, 4), np.nan), "train_patches")
    with pytest.raises(DataError, match="no patches"):
        base.check_patches(np.zeros((0, 4, 4)))
    with pytest.raises(DataError, match="square"):
        base.check_patches(np.zeros((1, 4, 6)))


def test_window_mean():
    err = np.arange(2 * 4 * 4, dtype=np.float64).reshape(2, 4, 4)
    np.testing.assert_allclose(base.window_mean(err, None), err.mean(axis=(1, 2)))
    np.testing.assert_allclose(base.window_mean(err, 2), err[:, 1:3, 1:3].mean(axis=(1, 2)))


def test_nested_config_round_trip():
    cfg = ood_ddpm.TINY
    back = base.config_from_dict(ood_ddpm.Config, base.config_to_dict(cfg))
    assert back == cfg and isinstance(back.model.dim_mults, tuple)
    with pytest.raises(ValueError, match="unknown config keys"):
        base.config_from_dict(ood_ddpm.Config, {"nope": 1})


def test_state_round_trip_keeps_nested_arrays(tmp_path):
    arrays = {"params": {"a": {"kernel": np.ones((2, 3), np.float32)}, "b": np.arange(3)}, "q": np.float64(0.5)}
    state = base.State("ood_ddpm", ood_ddpm.TINY, arrays)
    path = base.save_state(state, tmp_path / "s")
    back = base.load_state(path, "ood_ddpm", ood_ddpm.Config)
    np.testing.assert_array_equal(back.arrays["params"]["a"]["kernel"], arrays["params"]["a"]["kernel"])
    np.testing.assert_array_equal(back.arrays["params"]["b"], np.arange(3))
    assert float(back.arrays["q"]) == 0.5 and back.config == ood_ddpm.TINY
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="bad.npz: not a baseline checkpoint"):
        base.load_state(tmp_path / "bad.npz", "ae", ood_ddpm.Config)
