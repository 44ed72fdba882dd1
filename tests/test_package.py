"""The installed surface: the curated top level, lazy imports, typing marker."""

import importlib
import os
import subprocess
import sys

import btd_jax


def test_every_public_name_resolves():
    for name in btd_jax.__all__:
        assert getattr(btd_jax, name) is not None, name
    assert sorted(dir(btd_jax)) == sorted(btd_jax.__all__)


def test_curated_names_are_the_implementations():
    assert btd_jax.Scorer is importlib.import_module("btd_jax.score").Scorer
    assert btd_jax.get_config is importlib.import_module("btd_jax.configs").get
    assert btd_jax.override is importlib.import_module("btd_jax.configs").override
    assert btd_jax.load_params is importlib.import_module("btd_jax.checkpoints").load_params
    assert btd_jax.train_and_evaluate is importlib.import_module("btd_jax.train").train_and_evaluate
    assert btd_jax.Calibration is importlib.import_module("btd_jax.calibration").Calibration
    assert btd_jax.get_config("tiny").image_size == 16


def test_no_test_hooks_or_private_names_in_all():
    assert not [n for n in btd_jax.__all__ if n.startswith("_") and n != "__version__"]
    assert "trace_count" not in btd_jax.__all__


def test_unknown_attribute_raises():
    try:
        btd_jax.no_such_name
    except AttributeError as e:
        assert "no_such_name" in str(e)
    else:
        raise AssertionError("expected AttributeError")


def test_import_is_lazy():
    code = "import sys, btd_jax; print(sorted(m for m in ('jax', 'flax', 'matplotlib', 'sklearn') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_py_typed_is_shipped():
    assert os.path.isfile(os.path.join(os.path.dirname(btd_jax.__file__), "py.typed"))
