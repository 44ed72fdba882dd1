"""``btd-jax bench --suite``: one JSON with every measurement, checked for its structure and for
positive, finite values (speed itself is a benchmark figure, never asserted)."""

import json
import math

import pytest

from btd_jax import cli
from btd_jax.benchmarks import devices, suite


def _leaves(tree, path=""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _leaves(v, f"{path}.{k}")
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from _leaves(v, f"{path}[{i}]")
    else:
        yield path, tree


def _positive(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def test_suite_writes_one_json_with_every_part(tmp_path):
    out = tmp_path / "suite.json"
    argv = ["bench", "--suite", "--config", "tiny", "--suite_batches", "8", "--dtypes", "float32", "--micro_batch",
            "none", "--min_time", "0", "--train_batch", "8", "--train_steps", "1", "--store_slices", "2",
            "--crop_steps", "2", "--screen_slices", "2", "--screen_size", "64", "--devices", "1", "--out", str(out)]
    with pytest.raises(SystemExit) as e:
        cli.main(["btd-jax", *argv])
    assert e.value.code == 0
    r = json.loads(out.read_text())
    assert r["benchmark"] == "suite" and r["command"].startswith("btd-jax bench --suite --config tiny")
    assert "--train_batch 8" in r["command"] and r["settings"]["train_batch"] == 8
    env = r["environment"]
    assert env["backend"] == "cpu" and env["device_kind"] and env["versions"]["jax"] and env["versions"]["btd_jax"]
    assert env["peak_bf16_flops_per_device"] is None  # a CPU is not in the peak table
    assert set(r["seconds"]) == set(suite.PARTS) | {"total"} and all(_positive(v) for v in r["seconds"].values())

    rows = r["scoring"]["rows"]
    assert [(x["dtype"], x["batch"], x["micro_batch"]) for x in rows] == [("float32", 8, None)]
    assert r["scoring"]["skipped_for_time"] == []
    for x in rows:
        assert all(_positive(x[k]) for k in ("patches_per_s", "gflop_per_patch", "gflop_per_s", "compile_s"))
        assert x["share_of_peak"] is None
    t = r["training"]
    assert t["images_per_step"] == 8 and t["dtype"] == "bfloat16" and t["devices"] == 1
    assert all(_positive(t[k]) for k in ("images_per_s", "median_step_s", "flops_per_step_per_device",
                                         "flops_per_s_per_device")) and math.isfinite(t["loss"])
    i = r["input"]
    assert i["prepare"]["slices"] == 2 and _positive(i["crops_per_s"]) and _positive(i["headroom_over_training"])
    s = r["screening"]
    assert s["slices"] == 2 and s["slice"] == [64, 64] and s["cascade"]["compilations_inside"] == 0
    assert all(_positive(s[k]) for k in ("seconds_per_slice", "volume_300_s", "speedup_vs_exhaustive"))
    assert _positive(s["exhaustive_stride16"]["seconds_per_slice"]) and s["cascade"]["work"]["exact_windows"] > 0
    for path, v in _leaves(r):  # nothing NaN or infinite anywhere
        assert not isinstance(v, float) or math.isfinite(v), path


def test_peak_flops_table():
    assert devices.peak_flops("NVIDIA H100 80GB HBM3") == devices.peak_flops("NVIDIA H200") == 989e12
    assert devices.peak_flops("NVIDIA H100 PCIe") == 756e12
    assert devices.peak_flops("NVIDIA A100-SXM4-40GB") == 312e12
    assert devices.peak_flops("TPU v5 lite") == 197e12 and devices.peak_flops("TPU v4") == 275e12
    assert devices.peak_flops("NVIDIA L40") is None and devices.peak_flops("cpu") is None


def test_suite_settings_are_checked():
    with pytest.raises(ValueError, match="parts"):
        suite.SuiteSettings(parts=("scoring", "nap"))
    with pytest.raises(ValueError, match="train_batch"):
        suite.SuiteSettings(train_batch=0)
