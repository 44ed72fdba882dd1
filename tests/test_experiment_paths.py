"""Result files record paths relative to the repository (experiments.paths), never a machine path."""

import os
import pathlib

from experiments.paths import ROOT, recorded, recorded_path


def test_paths_inside_the_repository_are_relative_to_it():
    assert recorded_path(ROOT / "experiments" / "results" / "x.json") == "experiments/results/x.json"
    assert recorded_path("experiments/out/demo_data") == "experiments/out/demo_data"  # relative: as given


def test_paths_outside_the_repository_become_work_placeholders(tmp_path):
    scratch = tmp_path / "run" / "detector"
    assert recorded_path(scratch) == "WORK/detector"
    assert not recorded_path(pathlib.Path(os.sep, "elsewhere", "a.npz")).startswith(os.sep)


def test_commands_args_and_outputs_are_rewritten_word_by_word(tmp_path):
    out = tmp_path / "bench.json"
    record = {"command": f"python -m experiments.bench_input --out {out} --tmp={tmp_path} --slices 300",
              "args": {"dataset": str(ROOT / "data" / "testset"), "steps": 300, "methods": [str(tmp_path), "ae"]},
              "outputs": (str(out), None)}
    got = recorded(record)
    assert got["command"] == f"python -m experiments.bench_input --out WORK/bench.json --tmp=WORK/{tmp_path.name} --slices 300"
    assert got["args"] == {"dataset": "data/testset", "steps": 300, "methods": [f"WORK/{tmp_path.name}", "ae"]}
    assert got["outputs"] == ("WORK/bench.json", None)
