"""Optional TensorBoard events beside metrics.jsonl hold the same numbers."""

import glob
import json
import os
import struct

import numpy as np
import pytest

from btd_jax import configs, train

CFG = configs.override(configs.get("tiny"), {"train.num_steps": 4, "train.log_every": 2,
                                             "train.eval_every": 10 ** 9, "train.checkpoint_every": 10 ** 9})


def _scalars(logdir):
    """{tag: {step: value}} from the event files (TFRecord framing of Event protos)."""
    from tensorboardX.proto import event_pb2

    out = {}
    for path in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
        data = open(path, "rb").read()
        i = 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            ev = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
            i += 12 + n + 4
            for v in ev.summary.value:
                out.setdefault(v.tag, {})[ev.step] = v.simple_value
    return out


def test_tensorboard_events_match_metrics(tmp_path):
    pytest.importorskip("tensorboardX")
    x = np.random.default_rng(0).uniform(size=(32, 16, 16)).astype(np.float32)
    wd = str(tmp_path / "run")
    train.train_and_evaluate(CFG, wd, x, progress=False, async_checkpoints=False, tensorboard=True)
    records = [json.loads(line) for line in open(os.path.join(wd, "metrics.jsonl"))]
    losses = {r["step"]: r["loss"] for r in records if "loss" in r}
    assert sorted(losses) == [2, 4]
    tb = _scalars(os.path.join(wd, "tensorboard"))
    assert sorted(tb["train/loss"]) == [2, 4]
    for step, v in losses.items():
        assert tb["train/loss"][step] == pytest.approx(v, rel=1e-6)
    assert "train/steps_per_s" in tb
