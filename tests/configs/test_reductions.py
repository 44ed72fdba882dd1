"""btd_jax.configs.reductions: one registry entry is all a new pooling needs."""

import argparse

import numpy as np
import pytest

from btd_jax import configs, evaluate, score
from btd_jax.commands import _flags
from btd_jax.configs import reductions
from btd_jax.scoring import pooling


@pytest.fixture
def median():
    """A pooling added for the duration of one test, the way a user would add one."""
    entry = reductions.register(reductions.Reduction("median", lambda xp, flat, _: xp.median(flat, axis=-1),
                                                     "their median"))
    yield entry
    del reductions.REDUCTIONS["median"]


def test_every_entry_agrees_between_numpy_and_jax():
    flat = np.random.default_rng(0).uniform(size=(4, 37)).astype(np.float32)
    for r in reductions.REDUCTIONS.values():
        name = f"{r.name}:75" if r.arg_range else r.name
        np.testing.assert_allclose(reductions.apply(flat, name), np.asarray(score.reduce_residual(
            flat.reshape(4, 1, 37), None, name)), rtol=1e-6)


def test_reference_values_of_the_builtin_entries():
    flat = np.array([[1.0, 2.0, 3.0, 10.0]])
    assert reductions.apply(flat, "mean")[0] == 4.0
    assert reductions.apply(flat, "max")[0] == 10.0
    assert reductions.apply(flat, "percentile:50")[0] == np.percentile(flat[0], 50) == 2.5


def test_grammar_and_labels():
    assert reductions.grammar() == "'mean', 'max' or 'percentile:Q' (0 <= Q <= 100)"
    assert [reductions.label(n) for n in ("mean", "max", "percentile:99", "percentile:99.5")] == \
        ["", "max", "p99", "p99.5"]


def test_a_new_entry_reaches_config_scoring_evaluation_and_the_command_line(median):
    cfg = configs.ScoreConfig(reduction="median")  # validation reads the registry
    assert cfg.reduction == "median"
    maps = np.random.default_rng(1).uniform(size=(3, 8, 8))
    want = np.median(maps[:, 2:6, 2:6].reshape(3, -1), axis=1)
    np.testing.assert_allclose(pooling.pool_window(maps, 4, "median"), want)
    np.testing.assert_allclose(np.asarray(score.reduce_residual(maps, 4, "median")), want, rtol=1e-6)
    assert evaluate.reduction_name(4, "median") == "center4_median"
    assert "'median'" in reductions.grammar() and "`median`" in reductions.markdown_table()
    assert _flags.reduction("median") == "median"


def test_unknown_names_are_refused_everywhere():
    with pytest.raises(ValueError, match="score.reduction must be 'mean', 'max' or 'percentile:Q'"):
        configs.ScoreConfig(reduction="median")
    with pytest.raises(argparse.ArgumentTypeError, match="expected 'mean', 'max'"):
        _flags.reduction("percentile:101")
    with pytest.raises(ValueError, match="is taken"):
        reductions.register(reductions.Reduction("mean", lambda xp, f, q: f.mean(-1), "again"))
