"""Every registered baseline learns the tiny synthetic task and round-trips through save/load."""

import dataclasses

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from btd_jax import baselines
from btd_jax.data.errors import DataError

_FITTED = {}


def fitted(name, task):
    """One fit per baseline per session (the expensive part), shared by the tests below."""
    if name not in _FITTED:
        b = baselines.get(name)
        train, _, _ = task
        _FITTED[name] = b.fit(train, b.tiny, 0)
    return _FITTED[name]


def test_registry_lists_the_papers_eight_baselines():
    assert baselines.NAMES == ("ae", "inpaint_ae", "ocvae", "unet_ae", "splicebuster", "spliceradar",
                               "satellite_vit", "ood_ddpm")
    assert [baselines.get(n).display_name for n in baselines.NAMES] == [
        "AE", "In-Paint AE", "OC-VAE", "Unet-AE", "Splice Buster", "Splice Radar", "Satellite ViT", "OOD DDPM"]
    assert {n: baselines.get(n).needs for n in baselines.NAMES if baselines.get(n).needs} == {
        "inpaint_ae": ("window",), "ood_ddpm": ("window", "ddpm")}
    with pytest.raises(KeyError, match="unknown baseline 'nope'.*ae"):
        baselines.get("nope")


@pytest.mark.parametrize("name", baselines.NAMES)
def test_learns_tiny_task(name, task):
    _, test, labels = task
    state = fitted(name, task)
    assert state.name == name
    scores = baselines.get(name).score(state, test)
    assert scores.shape == (len(test),) and scores.dtype == np.float64
    assert np.all(np.isfinite(scores))
    auc = roc_auc_score(labels, scores)
    assert auc > 0.8, f"{name}: AUC {auc:.3f}"
    # Module docstring cites the original and says what differs.
    doc = __import__(f"btd_jax.baselines.{name}", fromlist=["x"]).__doc__
    assert "differ" in doc and any(str(y) in doc for y in range(2012, 2025))


@pytest.mark.parametrize("name", baselines.NAMES)
def test_save_load_round_trip(name, task, tmp_path):
    b = baselines.get(name)
    _, test, _ = task
    state = fitted(name, task)
    path = b.save(state, tmp_path / name)
    assert path.endswith(".npz")
    loaded = b.load(path)
    assert loaded.config == state.config
    some = test[::5]
    np.testing.assert_array_equal(b.score(loaded, some), b.score(state, some))
    # Scores of one patch do not depend on the batch it is scored in.
    np.testing.assert_allclose(b.score(state, some[:3], batch_size=2), b.score(state, some)[:3], rtol=1e-5, atol=1e-6)


def test_load_refuses_another_baselines_checkpoint(task, tmp_path):
    path = baselines.get("ae").save(fitted("ae", task), tmp_path / "ae.npz")
    with pytest.raises(DataError, match="checkpoint of baseline 'ae', not 'ocvae'"):
        baselines.get("ocvae").load(path)
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        baselines.get("ae").load(tmp_path / "missing.npz")


@pytest.mark.parametrize("name", ["ae", "splicebuster"])
def test_bad_patches_raise_one_clear_error(name, task):
    b = baselines.get(name)
    _, test, _ = task
    state = fitted(name, task)
    with pytest.raises(DataError, match=r"values in .* are outside \[0, 1\]"):
        b.score(state, test * 300)
    with pytest.raises(DataError, match="32x32 but the fitted baseline expects 16x16"):
        b.score(state, np.zeros((2, 32, 32), np.float32))
    with pytest.raises(DataError, match=r"expected patches of shape \(N, H, W\)"):
        b.score(state, np.zeros((16, 16), np.float32))


def test_center_window_changes_reconstruction_scores(task):
    b = baselines.get("ae")
    _, test, labels = task
    state = fitted("ae", task)
    whole, centre = b.score(state, test), b.score(state, test, center=8)
    assert not np.allclose(whole, centre)
    assert roc_auc_score(labels, centre) > 0.8  # the anomaly sits in the centre
    with pytest.raises(ValueError, match="center window 40"):
        b.score(state, test, center=40)


def test_tiny_configs_are_frozen_dataclasses():
    for name in baselines.NAMES:
        b = baselines.get(name)
        assert isinstance(b.tiny, b.config)
        with pytest.raises(dataclasses.FrozenInstanceError):
            b.tiny.seed = 3  # noqa  (any attribute: frozen refuses all)
