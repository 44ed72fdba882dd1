"""The one-class score variant: features against NumPy, real-only fitting, two-sidedness, the saved
reference and device-count independence."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage as ndi
from scipy import stats

from btd_jax import configs, parallel
from btd_jax.data.errors import DataError
from btd_jax.score import Scorer
from btd_jax.scoring import variants as sv
from btd_jax.scoring.variants import density
from btd_jax.scoring.variants import oneclass as oc

CFG = configs.get("tiny")
SIZE = CFG.image_size


def _reference_features(maps, names, center, inner):
    """Loop-by-loop NumPy reference of oneclass.features."""
    out = np.zeros((len(maps["r"]), len(names)))
    for i in range(len(maps["r"])):
        for j, name in enumerate(names):
            src = "hp" if name.startswith("hp_") else (name.split("_")[0] if name.startswith("t") else "r")
            m = maps[src][i]
            r0, r1 = (SIZE - center) // 2, (SIZE - inner) // 2
            cen = m[r0:r0 + center, r0:r0 + center]
            mask = np.ones(m.shape, bool)
            mask[r0:r0 + center, r0:r0 + center] = False
            sur = np.log(m[mask].mean() + oc.EPS)
            kind = name.split("log_")[-1]
            value = {"energy": np.log(cen.mean() + oc.EPS), "ratio": np.log(cen.mean() + oc.EPS) - sur,
                     "max_ratio": np.log(cen.max() + oc.EPS) - sur,
                     "inner_ratio": np.log(m[r1:r1 + inner, r1:r1 + inner].mean() + oc.EPS) - sur}[kind]
            out[i, j] = value
    return out


def _textures(n, seed, noise=0.05):
    """Real-like patches: smooth anatomy plus scanner-like noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    base = 0.5 + 0.15 * np.sin(xx / 3.0 + rng.uniform(0, 6, (n, 1, 1))) * np.cos(yy / 4.0)
    return np.clip(base + rng.normal(0, noise, (n, SIZE, SIZE)), 0, 1).astype(np.float32)


def test_features_match_a_numpy_reference_in_numpy_and_jax():
    rng = np.random.default_rng(0)
    maps = {k: rng.gamma(1.0, 1e-3, (3, SIZE, SIZE)) for k in ("r", "hp", "t5")}
    names = oc.DEFAULT_FEATURES + ("t5_log_ratio", "t5_log_max_ratio")
    want = _reference_features(maps, names, 8, 4)
    np.testing.assert_allclose(oc.features(maps, names, 8, 4), want, rtol=1e-12)
    got = jax.jit(lambda m: oc.features(m, names, 8, 4, jnp))({k: jnp.asarray(v, jnp.float32) for k, v in maps.items()})
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5, atol=2e-5)


def test_highpass_energy_and_windows():
    x = np.random.default_rng(1).uniform(size=(2, SIZE, SIZE))
    np.testing.assert_allclose(oc.highpass_energy(x)[1], (x[1] - ndi.gaussian_filter(x[1], 1.0)) ** 2)
    assert oc.windows(32, None) == (16, 8) and oc.windows(96, 32) == (32, 16)
    with pytest.raises(DataError, match="central window"):
        oc.windows(16, 16)


def test_score_is_fishers_combination_of_the_gaussian_and_the_one_sided_tails():
    rng = np.random.default_rng(2)
    names = ("log_energy", "hp_log_ratio")
    real = rng.normal([0.0, 1.0], [1.0, 0.5], (200, 2))
    ref = oc.fit_features(real, names, 8, 4, null="gaussian", components=1)  # the paper's tail alone
    f = np.array([[0.0, 1.0], [3.0, 1.0], [-3.0, 1.0], [0.0, -0.5]])
    d = f - np.asarray(ref.mean)
    d2 = np.einsum("nf,fg,ng->n", d, np.asarray(ref.precision), d)
    z = (f[:, 0] - real[:, 0].mean()) / real[:, 0].std(ddof=1)
    want = -np.log(stats.chi2.sf(d2, 2)) - np.log(stats.norm.sf(z))
    np.testing.assert_allclose(oc.score_features(f, ref), want, rtol=1e-9)
    s = oc.score_features(f, ref)
    assert s[1] > s[0] and s[2] > s[0]  # too large and too small energies both score high
    assert s[1] > s[2]  # and the paper's one-sided tail keeps large residuals first
    # a '-' tail reads its feature downwards: a too-smooth centre adds its own one-sided p-value
    both = oc.fit_features(real, names, 8, 4, tails=("+log_energy", "-hp_log_ratio"), null="gaussian", components=1)
    zs = -(f[:, 1] - real[:, 1].mean()) / real[:, 1].std(ddof=1)
    np.testing.assert_allclose(oc.score_features(f, both), want - np.log(stats.norm.sf(zs)), rtol=1e-9)
    assert oc.score_features(f, both)[3] > oc.score_features(f, ref)[3]
    for bad, match in (((("-log_energy",)), "must include '\\+log_energy'"),
                       (("+log_energy", "*hp_log_ratio"), "expected '\\+' or '-'"),
                       (("+log_energy", "-log_ratio"), "one of the features")):
        with pytest.raises(DataError, match=match):
            oc.fit_features(real, names, 8, 4, tails=bad)
    assert oc.DEFAULT_TAILS == ("+log_energy", "-hp_log_ratio", "-hp_log_inner_ratio")


def _empirical_reference(x, null):
    """Loop-by-loop -log p of x against sorted null values (the k-th smallest has p = (M - k) / (M + 1))."""
    m = len(null)
    p_at = [(m - k) / (m + 1) for k in range(m)]
    out = []
    for v in x:
        if v <= null[0]:
            lp = np.log(p_at[0])
        elif v > null[-1]:
            lp = -np.log(m + 1) - (v - null[-1])
        else:
            k = max(i for i in range(m) if null[i] <= v)
            k = min(k, m - 2)
            w = (v - null[k]) / (null[k + 1] - null[k])
            lp = (1 - w) * np.log(p_at[k]) + w * np.log(p_at[k + 1])
        out.append(-lp)
    return np.array(out)


def test_the_empirical_null_reads_each_p_value_from_the_real_patches():
    rng = np.random.default_rng(5)
    names = ("log_energy", "hp_log_ratio")
    # heavy-tailed real features: the Gaussian model's p-values are far too small for their outliers
    real = np.stack([rng.standard_t(3, 300), rng.standard_t(3, 300)], 1)
    tails = ("+log_energy", "-hp_log_ratio")
    emp = oc.fit_features(real, names, 8, 4, tails=tails, components=1)
    gauss = oc.fit_features(real, names, 8, 4, tails=tails, null="gaussian", components=1)
    assert emp.null == "empirical" and gauss.null == "gaussian" and len(emp.null_sorted) == 3
    # each real patch's null value comes from a Gaussian fitted without its fold (rows interleaved)
    fold = np.arange(len(real)) % oc.NULL_FOLDS
    c_real = np.empty((3, len(real)))
    for k in range(oc.NULL_FOLDS):
        without = oc.fit_features(real[fold != k], names, 8, 4, tails=tails, null="gaussian", components=1)
        c_real[:, fold == k] = oc.gaussian_components(real[fold == k], without)
    np.testing.assert_allclose(np.asarray(emp.null_sorted), np.sort(c_real, axis=1), rtol=1e-12)
    assert not np.allclose(np.asarray(emp.null_sorted), np.sort(oc.gaussian_components(real, emp), axis=1))
    f = np.array([[0.0, 0.0], [2.0, 0.0], [8.0, 0.0], [0.0, -8.0], [30.0, 0.0]])
    c = oc.gaussian_components(f, emp)
    want = sum(_empirical_reference(ci, np.asarray(ni)) for ci, ni in zip(c, emp.null_sorted))
    np.testing.assert_allclose(oc.score_features(f, emp), want, rtol=1e-9)
    np.testing.assert_allclose(oc.score_features(f, gauss), c.sum(axis=0), rtol=1e-9)
    s = oc.score_features(f, emp)
    assert s[0] < s[1] < s[2] < s[4] and s[3] > s[0]  # monotone beyond the largest real value too
    # every real patch's p-value is at least 1 / (M + 1) in each component: the sum is bounded
    assert oc.score_features(real, emp).max() <= 3 * np.log(301) + 1e-9
    assert oc.score_features(real, gauss).max() > oc.score_features(real, emp).max()
    back = oc.OneClassReference.from_dict(json.loads(json.dumps(emp.to_dict())))
    np.testing.assert_array_equal(oc.score_features(f, back), s)
    for change, match in (({"null": "bootstrap"}, "null 'bootstrap'"),
                          ({"null_sorted": emp.to_dict()["null_sorted"][:2]}, "sorted, finite rows"),
                          ({"null_sorted": [r[::-1] for r in emp.to_dict()["null_sorted"]]}, "sorted, finite rows")):
        with pytest.raises(DataError, match=match):
            oc.OneClassReference.from_dict({**emp.to_dict(), **change})
    with pytest.raises(DataError, match="null 'median'"):
        oc.fit_features(real, names, 8, 4, null="median")
    with pytest.raises(DataError, match="at least 4 real patches outside each of its 5 folds"):
        oc.fit_features(real[:4], names, 8, 4, components=1)
    assert oc.fit_features(real[:4], names, 8, 4, null="gaussian", components=1).n == 4


def test_a_patch_with_its_centre_smoothed_scores_higher_than_its_original(tiny_scorer):
    real = _textures(64, 3)
    ref = sv.fit_variant_reference(tiny_scorer, real, "oneclass", tiny_scorer.settings(center=8))
    test = _textures(8, 4)
    smoothed = test.copy()
    smoothed[:, 4:12, 4:12] = ndi.gaussian_filter(test, (0, 2, 2))[:, 4:12, 4:12]
    s_orig = tiny_scorer.score(test, variant="oneclass", reference=ref)
    s_smooth = tiny_scorer.score(smoothed, variant="oneclass", reference=ref)
    assert np.all(s_smooth > s_orig)


def test_fitting_refuses_fakes_and_too_few_patches(tiny_scorer):
    real = _textures(12, 5)
    with pytest.raises(DataError, match="REAL patches only; the input holds 2 patch"):
        sv.fit_variant_reference(tiny_scorer, real, "oneclass", tiny_scorer.settings(center=8),
                                 labels=np.r_[np.zeros(10), np.ones(2)])
    with pytest.raises(DataError, match="at least 8 real patches"):
        sv.fit_variant_reference(tiny_scorer, real[:5], "oneclass", tiny_scorer.settings(center=8))
    with pytest.raises(DataError, match="must include 'log_energy'"):
        sv.fit_variant_reference(tiny_scorer, real, "oneclass", tiny_scorer.settings(center=8),
                                 features=("log_ratio",))
    with pytest.raises(DataError, match="unknown oneclass feature 'hp_log_energy'"):
        sv.fit_variant_reference(tiny_scorer, real, "oneclass", tiny_scorer.settings(center=8),
                                 features=("log_energy", "hp_log_energy"))


def test_saved_reference_round_trips_and_refuses_another_model(tiny_scorer, tiny_params, tmp_path):
    real, test = _textures(32, 6), _textures(4, 7)
    ref = sv.fit_variant_reference(tiny_scorer, real, "oneclass", tiny_scorer.settings(center=8))
    path = ref.save(str(tmp_path))
    assert path.endswith(oc.REFERENCE_FILE)
    back = sv.load_reference(path)
    assert back == ref and back.model == sv.model_fingerprint(tiny_scorer) and back.score["center"] == 8
    want = tiny_scorer.score(test, variant="oneclass", reference=ref)
    np.testing.assert_allclose(tiny_scorer.score(test, variant="oneclass", reference=path), want, rtol=1e-6)
    # The reference's settings are used: a call with another centre scores as the reference was fitted.
    np.testing.assert_allclose(tiny_scorer.score(test, variant="oneclass", reference=ref, center=4), want, rtol=1e-6)
    other = Scorer.from_params(jax.tree_util.tree_map(lambda x: x * 1.01, tiny_params), CFG)
    with pytest.raises(DataError, match="fitted with the model"):
        other.score(test, variant="oneclass", reference=ref)
    two = sv.fit_scorer_reference(tiny_scorer, real, center=8)
    with pytest.raises(ValueError, match="cannot use a 'two_sided' reference"):
        tiny_scorer.score(test, variant="oneclass", reference=two)


def test_scores_do_not_depend_on_the_device_count(tiny_params):
    real, test = _textures(40, 8), _textures(6, 9)
    one = Scorer.from_params(tiny_params, CFG, mesh=parallel.make_mesh(jax.local_devices()[:1]))
    eight = Scorer.from_params(tiny_params, CFG)
    assert eight.mesh.devices.size == 8
    ref = sv.fit_variant_reference(one, real, "oneclass", one.settings(center=8))
    np.testing.assert_allclose(eight.score(test, variant="oneclass", reference=ref, batch_size=3),
                               one.score(test, variant="oneclass", reference=ref), rtol=1e-5)


def test_a_mixture_of_real_modes_flags_what_lies_between_them_and_round_trips():
    rng = np.random.default_rng(10)
    names = ("log_energy", "log_ratio", "hp_log_ratio")
    # two kinds of real patch (e.g. soft tissue and the body's edge); a fake between them
    real = np.concatenate([rng.normal([0.0, 0.0, 0.0], 0.3, (150, 3)), rng.normal([3.0, 2.0, -2.0], 0.3, (150, 3))])
    tails = ("+log_energy",)
    mix = oc.fit_features(real, names, 8, 4, tails=tails)
    one = oc.fit_features(real, names, 8, 4, tails=tails, components=1)
    assert mix.components == oc.DEFAULT_COMPONENTS == 3 and one.components == 1 and not one.mixture
    between, typical = np.array([[1.5, 1.0, -1.0]]), real[:1]
    assert oc.score_features(between, mix)[0] > oc.score_features(typical, mix)[0] + 5
    assert oc.score_features(between, one)[0] < oc.score_features(typical, one)[0] + 2
    # the density term is the negative log-density; its null is cross-fitted fold by fold
    np.testing.assert_allclose(oc.gaussian_components(between, mix)[0], density.mixture_nll(between, mix.mixture))
    fold = np.arange(len(real)) % oc.NULL_FOLDS
    term = np.empty(len(real))
    for k in range(oc.NULL_FOLDS):
        term[fold == k] = density.mixture_nll(real[fold == k], density.fit_mixture(real[fold != k], 3))
    np.testing.assert_allclose(mix.null_sorted[0], np.sort(term), rtol=1e-9)
    d = json.loads(json.dumps(mix.to_dict()))
    back = oc.OneClassReference.from_dict(d)
    assert back == mix
    np.testing.assert_array_equal(oc.score_features(real[:7], back), oc.score_features(real[:7], mix))
    # a reference written before mixtures (no 'components') is one Gaussian
    old = {k: v for k, v in one.to_dict().items() if k not in ("components", "mixture")}
    assert oc.OneClassReference.from_dict(old) == one
    for change, match in (({"components": 2}, "2 components but a mixture of 3"),
                          ({"mixture": {**d["mixture"], "weights": [0.5, 0.5, 0.5]}}, "summing to 1"),
                          ({"mixture": {}}, "malformed mixture"),
                          ({"null": "gaussian"}, "a mixture of 3 has no law")):
        with pytest.raises(DataError, match=match):
            oc.OneClassReference.from_dict({**d, **change})
    with pytest.raises(DataError, match="a mixture of 3 has no law"):
        oc.fit_features(real, names, 8, 4, tails=tails, null="gaussian")
    with pytest.raises(DataError, match="components must be at least 1"):
        oc.fit_features(real, names, 8, 4, tails=tails, components=0)
    with pytest.raises(DataError, match="needs at least 15 real patches to fit, got 12"):
        oc.fit_features(real[:12], names, 8, 4, tails=tails)
    with pytest.raises(DataError, match="at least 15 real patches outside each of its 5 folds .got 18 patches.; "
                                        "fit more, or components=1"):
        oc.fit_features(real[:18], names, 8, 4, tails=tails)
    assert oc.fit_features(real[:19], names, 8, 4, tails=tails).n == 19
