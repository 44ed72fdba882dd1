"""The score-variant registry: one entry reaches Scorer, btd_score, the command line and the reference file."""

import jax
import numpy as np
import pytest

from btd_jax import configs, score
from btd_jax.cli import build_parser
from btd_jax.data.errors import DataError
from btd_jax.scoring import variants as sv

CFG = configs.get("tiny")


def _images(n, seed=0):
    return np.random.default_rng(seed).uniform(size=(n, CFG.image_size, CFG.image_size)).astype(np.float32)


class _Shift:
    """A toy reference: the mean real energy; scores are energies minus it."""
    variant = "shift"

    def __init__(self, mean, n, model=None):
        self.mean, self.n, self.model = mean, n, model

    def to_dict(self):
        return {"variant": self.variant, "mean": self.mean, "n": self.n, "model": self.model}

    @classmethod
    def from_dict(cls, d):
        return cls(float(d["mean"]), int(d["n"]), d.get("model"))

    def save(self, path):
        return sv.reference_file.save(self.to_dict(), path)


@pytest.fixture
def shift_variant():
    def fit(model, real, s, call):
        e = sv.btd.score(model, real, s, call)
        return _Shift(float(np.mean(e)), len(e), sv.model_fingerprint(model))

    def score_fn(model, images, s, call):
        return sv.btd.score(model, images, s, call) - call.reference.mean

    entry = sv.register(sv.Variant("shift", "energy minus the real mean", score_fn, fit=fit, decode=_Shift.from_dict))
    yield entry
    del sv.VARIANTS["shift"]


def test_builtin_entries():
    assert sv.names() == ("btd", "multi_t", "oneclass", "two_sided")
    assert [v.needs_reference for v in sv.VARIANTS.values()] == [False, False, True, True]
    assert "`two_sided`" in sv.markdown_table()
    with pytest.raises(ValueError, match="already registered"):
        sv.register(sv.Variant("btd", "again", sv.btd.score))
    with pytest.raises(ValueError, match="both fit and decode"):
        sv.register(sv.Variant("half", "no decoder", sv.btd.score, fit=lambda *a: None))


def test_a_new_entry_reaches_the_scorer_the_file_and_the_command_line(shift_variant, tiny_scorer, tmp_path):
    real, test = _images(6, 1), _images(4, 2)
    s = tiny_scorer.settings(center=8)
    ref = sv.fit_variant_reference(tiny_scorer, real, "shift", s)
    want = tiny_scorer.score(test, center=8) - ref.mean
    np.testing.assert_allclose(tiny_scorer.score(test, center=8, variant="shift", reference=ref), want, rtol=1e-5)
    np.testing.assert_allclose(score.btd_score(tiny_scorer.params, test, CFG, center=8, variant="shift",
                                               reference=ref), want, rtol=1e-5)
    path = ref.save(str(tmp_path))  # one file format: read back through the registry by its variant
    back = sv.load_reference(path)
    assert isinstance(back, _Shift) and back.mean == ref.mean
    np.testing.assert_allclose(tiny_scorer.score(test, center=8, variant="shift", reference=path), want, rtol=1e-5)
    sub = build_parser(only="score")._subparsers._group_actions[0].choices["score"]
    variant_flag = next(a for a in sub._actions if a.dest == "variant")
    assert "shift" in variant_flag.choices and "energy minus the real mean" in variant_flag.help


def test_a_reference_of_another_model_is_refused(tiny_scorer, tiny_params):
    real, test = _images(6, 3), _images(2, 4)
    ref = sv.fit_scorer_reference(tiny_scorer, real, center=8)
    assert ref.model == sv.model_fingerprint(tiny_scorer) and ref.model.startswith("tiny/")
    same = score.Scorer.from_params(tiny_params, CFG)  # the same weights in another Scorer: accepted
    assert np.isfinite(same.score(test, variant="two_sided", reference=ref)).all()
    changed = score.Scorer.from_params(jax.tree_util.tree_map(lambda x: x * 1.01, tiny_params), CFG)
    with pytest.raises(DataError, match="fitted with the model tiny/"):
        changed.score(test, variant="two_sided", reference=ref)


def test_no_reference_variant_refuses_fitting(tiny_scorer):
    with pytest.raises(ValueError, match="needs no reference"):
        sv.fit_variant_reference(tiny_scorer, _images(3), "btd", tiny_scorer.settings())
