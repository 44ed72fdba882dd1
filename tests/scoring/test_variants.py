"""Tests for btd_jax.scoring.variants: pooling, multi-start-time maps, the two-sided calibrated score."""

import json

import jax
import numpy as np
import pytest
from scipy import ndimage as ndi

from btd_jax import configs, score
from btd_jax.scoring import variants as sv
from btd_jax.data.errors import DataError
from btd_jax.models.unet import init_params

CFG = configs.get("tiny")
SIZE = CFG.image_size


@pytest.fixture
def scorer(tiny_scorer):
    return tiny_scorer


def _images(n, seed=0):
    return np.random.default_rng(seed).uniform(size=(n, SIZE, SIZE)).astype(np.float32)


# ----------------------------------------------------------------------------- pure maths

def test_pool_maps_matches_numpy():
    maps = np.arange(2 * 4 * 4, dtype=np.float64).reshape(2, 4, 4) ** 1.5
    np.testing.assert_allclose(sv.pool_maps(maps), maps.mean(axis=(1, 2)))
    np.testing.assert_allclose(sv.pool_maps(maps, pool="max"), maps.max(axis=(1, 2)))
    win = maps[:, 1:3, 1:3].reshape(2, -1)
    np.testing.assert_allclose(sv.pool_maps(maps, center=2), win.mean(axis=1))
    np.testing.assert_allclose(sv.pool_maps(maps, center=2, pool="percentile:75"), np.percentile(win, 75, axis=1))
    # Hand value: window of sample 0 is rows/cols 1..2 -> indices 5, 6, 9, 10.
    assert sv.pool_maps(maps, center=2, pool="max")[0] == pytest.approx(10 ** 1.5)
    assert sv.pool_maps(maps, center=2, pool="percentile:0")[0] == pytest.approx(5 ** 1.5)


def test_pool_maps_agrees_with_score_reduce_residual():
    maps = np.random.default_rng(1).gamma(1.0, size=(3, 8, 8))
    for pool in ("mean", "max", "percentile:90"):
        for center in (None, 4):
            np.testing.assert_allclose(sv.pool_maps(maps, center, pool),
                                       np.asarray(score.reduce_residual(maps, center, pool)), rtol=1e-6)


def test_pool_maps_errors():
    with pytest.raises(ValueError, match="reduction"):
        sv.pool_maps(np.zeros((1, 4, 4)), pool="median")
    with pytest.raises(ValueError, match="center window"):
        sv.pool_maps(np.zeros((1, 4, 4)), center=5)
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        sv.pool_maps(np.zeros((4, 4)))


def test_average_maps():
    a, b = np.ones((1, 2, 2)), np.full((1, 2, 2), 4.0)
    np.testing.assert_allclose(sv.average_maps([a, b]), np.full((1, 2, 2), 2.5))
    np.testing.assert_allclose(sv.average_maps([a, b], weights=[3, 1]), np.full((1, 2, 2), 1.75))
    with pytest.raises(ValueError, match="weights"):
        sv.average_maps([a, b], weights=[1, -1])
    with pytest.raises(ValueError, match="at least one"):
        sv.average_maps([])


def test_fit_reference_and_two_sided_exact():
    e = np.exp([0.0, 1.0, 2.0])  # log energies 0, 1, 2: mean 1, std (ddof 1) 1
    ref = sv.fit_reference(e, eps=0.0, center=8, pool="mean", start_ts=(0, 1))
    assert (ref.mean, ref.std, ref.n) == (pytest.approx(1.0), pytest.approx(1.0), 3)
    assert (ref.score, ref.base, ref.start_ts) == ({"center": 8, "reduction": "mean"}, "btd", (0, 1))
    np.testing.assert_allclose(sv.two_sided(np.exp([1.0, 3.0, -1.0, 1.5]), ref), [0.0, 2.0, 2.0, 0.5], atol=1e-12)
    # NumPy reference for random data, eps included.
    r = np.random.default_rng(0).gamma(2.0, 1e-3, size=50)
    ref = sv.fit_reference(r, eps=1e-6)
    lg = np.log(r + 1e-6)
    x = np.array([1e-5, 1e-3, 1e-1])
    np.testing.assert_allclose(sv.two_sided(x, ref), np.abs(np.log(x + 1e-6) - lg.mean()) / lg.std(ddof=1))


def test_fit_reference_errors():
    with pytest.raises(DataError, match="at least 2"):
        sv.fit_reference([1.0])
    with pytest.raises(DataError, match="item 1"):
        sv.fit_reference([1.0, np.nan, 2.0])
    with pytest.raises(DataError, match="item 0"):
        sv.fit_reference([-1.0, 2.0])


def test_reference_json_round_trip(tmp_path):
    ref = sv.fit_reference([0.1, 0.2, 0.4], base="multi_t", start_ts=(0, 2), center=8, pool="max")
    path = ref.save(str(tmp_path))
    assert path.endswith(sv.REFERENCE_FILE)
    back = sv.Reference.load(str(tmp_path))
    assert back == ref
    saved = json.loads(open(path).read())
    assert saved["start_ts"] == [0, 2] and saved["score"] == {"center": 8, "reduction": "max"}
    # A reference written before the settings became a ScoreConfig dict still loads.
    (tmp_path / "old.json").write_text(json.dumps({"mean": 1.0, "std": 2.0, "n": 3, "settings": {
        "base": "multi_t", "start_ts": [0, 2], "center": 8, "pool": "max"}}))
    old = sv.Reference.load(str(tmp_path / "old.json"))
    assert (old.score, old.base, old.start_ts) == ({"center": 8, "reduction": "max"}, "multi_t", (0, 2))
    (tmp_path / "bad.json").write_text('{"mean": 1.0}')
    with pytest.raises(DataError, match="malformed"):
        sv.Reference.load(str(tmp_path / "bad.json"))
    (tmp_path / "zero.json").write_text('{"mean": 1.0, "std": 0.0, "n": 3}')
    with pytest.raises(DataError, match="positive std"):
        sv.Reference.load(str(tmp_path / "zero.json"))
    with pytest.raises(DataError, match="no score reference"):
        sv.Reference.load(str(tmp_path / "missing.json"))


def test_two_sided_flags_too_smooth_patch():
    """A patch whose native noise was removed has a *small* residual: BTD calls it the most real of all,
    the two-sided score flags it. The denoiser is a stand-in (Gaussian blur), as a trained DDPM at t = 0
    removes exactly the high-frequency scanner noise."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    anatomy = 0.5 + 0.2 * np.sin(xx / 3.0) * np.cos(yy / 4.0)
    real = np.clip(anatomy + rng.normal(0, 0.03, size=(40, SIZE, SIZE)), 0, 1)
    denoised = ndi.gaussian_filter(real[0], 1.5)  # the same patch, noise removed

    def maps(x):
        return np.stack([(p - ndi.gaussian_filter(p, 1.0)) ** 2 for p in x])

    energies = sv.pool_maps(maps(real[1:]))
    ref = sv.fit_reference(energies)
    test = np.stack([real[0], denoised])
    btd = sv.pool_maps(maps(test))
    both = sv.two_sided(btd, ref)
    assert btd[1] < btd[0] and btd[1] < energies.min()  # one-sided BTD: "more real than real"
    assert both[1] > 3.0 > both[0]  # two-sided: far outside the real distribution
    assert both[1] > sv.two_sided(energies, ref).max()


# ----------------------------------------------------------------------------- with a model (tiny, random)

def test_btd_variant_equals_score(scorer):
    x = _images(6)
    for pool, center in (("mean", None), ("max", 8), ("percentile:90", None)):
        got = sv.variant_scores(scorer, x, variant="btd", pool=pool, center=center)
        np.testing.assert_allclose(got, scorer.score(x, center=center, reduction=pool), rtol=1e-5)


def test_multi_t_is_average_of_start_times(scorer):
    x, key = _images(5, seed=3), jax.random.key(7)
    maps = [scorer.residual_map(x, start_t=t, key=jax.random.fold_in(key, t)) for t in (0, 1, 3)]
    got = sv.multi_t_maps(scorer, x, start_ts=(0, 1, 3), key=key)
    np.testing.assert_allclose(got, np.mean(maps, axis=0), rtol=1e-6)
    only0 = sv.multi_t_maps(scorer, x, start_ts=(0,))
    np.testing.assert_allclose(only0, scorer.residual_map(x), rtol=1e-6)
    # Adding a start time leaves the others' noise unchanged; the same key gives the same maps.
    np.testing.assert_array_equal(got, sv.multi_t_maps(scorer, x, start_ts=(0, 1, 3), key=key))
    s = sv.variant_scores(scorer, x, variant="multi_t", start_ts=(0, 1, 3), key=key, center=8, pool="max")
    np.testing.assert_allclose(s, sv.pool_maps(got, 8, "max"), rtol=1e-6)


def test_two_sided_variant_uses_reference_settings(scorer):
    real, test, key = _images(8, seed=4), _images(4, seed=5), jax.random.key(1)
    e_real = sv.pool_maps(sv.multi_t_maps(scorer, real, start_ts=(0, 2), key=key), 8, "mean")
    ref = sv.fit_reference(e_real, base="multi_t", start_ts=(0, 2), center=8, pool="mean")
    e_test = sv.pool_maps(sv.multi_t_maps(scorer, test, start_ts=(0, 2), key=key), 8, "mean")
    # Arguments that disagree with the reference are overridden by its settings.
    got = sv.variant_scores(scorer, test, variant="two_sided", reference=ref, key=key, center=None, pool="max")
    np.testing.assert_allclose(got, sv.two_sided(e_test, ref), rtol=1e-6)
    lg = np.log(e_real + ref.eps)
    np.testing.assert_allclose(got, np.abs(np.log(e_test + ref.eps) - lg.mean()) / lg.std(ddof=1), rtol=1e-5)


def test_variant_errors(scorer):
    x = _images(2)
    with pytest.raises(ValueError, match="unknown score variant"):
        sv.variant_scores(scorer, x, variant="median")
    with pytest.raises(ValueError, match="needs a reference"):
        sv.variant_scores(scorer, x, variant="two_sided")
    with pytest.raises(ValueError, match="pass key"):
        sv.multi_t_maps(scorer, x, start_ts=(0, 1))
    with pytest.raises(ValueError, match="start_ts must lie"):
        sv.multi_t_maps(scorer, x, start_ts=(0, CFG.diffusion.timesteps), key=jax.random.key(0))
    with pytest.raises(ValueError, match="distinct"):
        sv.multi_t_maps(scorer, x, start_ts=(1, 1), key=jax.random.key(0))
    with pytest.raises(ValueError, match="params together with cfg"):
        sv.multi_t_maps({"w": 1}, x)
    with pytest.raises(DataError, match="expects 16x16"):
        sv.variant_scores(scorer, np.zeros((2, 8, 8), np.float32))


# ----------------------------------------------------------------------------- btd_score / Scorer / CLI

def test_btd_score_and_scorer_variant_option(scorer):
    params, x, key = scorer.params, _images(5, seed=6), jax.random.key(3)
    expected = sv.pool_maps(sv.multi_t_maps(scorer, x, start_ts=(0, 2), key=key), 8, "max")
    np.testing.assert_allclose(scorer.score(x, center=8, key=key, variant="multi_t", start_ts=(0, 2), reduction="max"),
                               expected, rtol=1e-5)
    np.testing.assert_allclose(score.btd_score(params, x, CFG, center=8, key=key, variant="multi_t", start_ts=(0, 2),
                                               reduction="max"), expected, rtol=1e-5)
    ref = sv.fit_scorer_reference(scorer, _images(6, seed=7), center=8)
    assert ref.base == "btd" and ref.start_ts is None
    assert ref.score == dict(CFG.score.scoring_dict(), center=8, reduction="mean", steps=1, start_t=0)
    two = score.btd_score(params, x, CFG, variant="two_sided", reference=ref)
    np.testing.assert_allclose(two, sv.two_sided(scorer.score(x, center=8), ref), rtol=1e-5)
    with pytest.raises(ValueError, match="needs reference="):
        scorer.score(x, variant="two_sided")
    with pytest.raises(ValueError, match="unknown score variant"):
        score.btd_score(params, x, CFG, variant="nope")


def test_cli_fit_reference_then_two_sided(tmp_path):
    import csv

    from btd_jax import checkpoints, cli

    wd = str(tmp_path / "model")
    checkpoints.save_params_checkpoint(wd, init_params(CFG.model, SIZE, jax.random.key(0)), CFG)
    real, test = _images(6, seed=8), _images(4, seed=9)
    np.save(tmp_path / "real.npy", real)
    np.save(tmp_path / "test.npy", test)

    def run(*argv):
        return cli._main(cli.build_parser().parse_args(["score", "--workdir", wd, *map(str, argv)]))

    ref_path = tmp_path / "model" / sv.REFERENCE_FILE
    assert run("--input", tmp_path / "real.npy", "--out", tmp_path / "r.csv", "--variant", "multi_t",
               "--start_ts", 0, 1, "--center", 8, "--fit_reference", ref_path) == 0
    ref = sv.Reference.load(wd)  # saved beside the checkpoints, found by default
    assert ref.base == "multi_t" and ref.start_ts == (0, 1) and ref.n == 6 and ref.score["center"] == 8
    assert run("--input", tmp_path / "test.npy", "--out", tmp_path / "t.csv", "--variant", "two_sided") == 0
    with open(tmp_path / "t.csv", newline="") as f:
        got = [float(r["score"]) for r in csv.DictReader(f)]
    s = score.Scorer.load(wd)
    e = sv.pool_maps(sv.multi_t_maps(s, test, start_ts=(0, 1), key=jax.random.key(0)), 8)
    np.testing.assert_allclose(got, sv.two_sided(e, ref), rtol=1e-5)
    # Bad option combinations fail with one message (exit code 2).
    assert run("--input", tmp_path / "test.npy", "--out", tmp_path / "u.csv", "--variant", "multi_t",
               "--maps", tmp_path / "m.npz") == 2
