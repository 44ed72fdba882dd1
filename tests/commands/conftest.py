"""Fixtures of the command tests: the shared tiny model, loaded once for every command run in process."""

import os

import pytest

from btd_jax.score import Scorer


@pytest.fixture(scope="session")
def loaded_tiny_scorer(tiny_workdir):
    """``Scorer.load(tiny_workdir)``, once per session."""
    return Scorer.load(tiny_workdir)


@pytest.fixture
def load_tiny_once(monkeypatch, loaded_tiny_scorer, tiny_workdir):
    """Makes ``Scorer.load(tiny_workdir)`` return the session's scorer (other workdirs load as usual)."""
    real = Scorer.load

    def load(workdir, *a, **kw):
        same = os.path.isdir(workdir) and os.path.samefile(workdir, tiny_workdir)
        return loaded_tiny_scorer if same and not a and not kw else real(workdir, *a, **kw)

    monkeypatch.setattr(Scorer, "load", staticmethod(load))
