"""Training from a slice store: fresh crops every step, resume equality, patient split, the CLI,
memory-mapped ``.npy`` input."""

import json

import jax
import numpy as np
import pytest

from btd_jax import configs, parallel, train
from btd_jax.data.crops import sampling as C
from btd_jax.data.store import slice_store as S, sources
from btd_jax.train import feed as F
from _layouts import write_authors_ct

CFG = configs.override(configs.get("tiny"), {
    "train.batch_size": 8, "train.grad_accum": 2, "train.num_steps": 4, "train.log_every": 2,
    "train.eval_every": 2, "train.checkpoint_every": 2, "train.hflip": True,
    "train.ema_update_every": 1})


def _leaves(tree):
    return [np.asarray(v) for v in jax.tree_util.tree_leaves(jax.device_get(tree))]


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("storetrain")
    write_authors_ct(root / "ct", patients=4, slices=3, h=40, w=36)
    sources.prepare(root / "ct", root / "st", size=16, progress=False)
    return root


def test_store_feed_is_fresh_every_step_and_casts_on_device(store_path):
    st = S.SliceStore(store_path / "st")
    mesh = parallel.make_mesh(jax.devices()[:4])
    sset = C.SliceSet(st, np.arange(len(st)))
    feed = F.CropFeed(sset, CFG, mesh)
    a, b = feed(0), feed(1)
    assert a.shape == (2, 8, 16, 16, 1) and a.dtype == np.float32
    assert not np.array_equal(np.asarray(a), np.asarray(b))
    host = C.HostBatches(st, sset.rows, CFG.train.seed, 2, 8, slice(0, 8), C.CropSpec(16, hflip=True))(0)
    assert host.dtype == np.float16
    np.testing.assert_array_equal(np.asarray(a), host.astype(np.float32))  # the cast is exact
    got = [np.asarray(x) for x in feed.batches(range(3, 6))]
    for s, x in zip(range(3, 6), got):
        np.testing.assert_array_equal(x, np.asarray(feed(s)))


def test_resumed_store_run_equals_uninterrupted(store_path, tmp_path):
    st = S.SliceStore(store_path / "st")
    tr, va = C.split_slices(st, 0.25, seed=0)
    # the default mesh (8 devices), as the command line uses: one compilation for this file
    full = train.train_and_evaluate(CFG, str(tmp_path / "full"), tr, va, progress=False)
    first = train.train_and_evaluate(CFG, str(tmp_path / "res"), tr, va, stop_at=2, progress=False)
    assert int(first.step) == 2
    resumed = train.train_and_evaluate(CFG, str(tmp_path / "res"), tr, va, progress=False)
    assert int(resumed.step) == 4
    for x, y in zip(_leaves((full.params, full.ema_params)), _leaves((resumed.params, resumed.ema_params))):
        np.testing.assert_array_equal(x, y)
    val = lambda d: [r["val_loss"] for r in map(json.loads, (tmp_path / d / "metrics.jsonl").read_text()  # noqa: E731
                                                 .splitlines()) if "val_loss" in r]
    assert val("full")[-1] == val("res")[-1] and np.isfinite(val("full")[-1])


def test_patient_level_split_and_weights(store_path):
    st = S.SliceStore(store_path / "st")
    tr, va = C.split_slices(st, 0.25, seed=0)
    pat = st.column("patient")
    assert set(pat[tr.rows]).isdisjoint(set(pat[va.rows]))
    assert len(set(pat[va.rows])) == 1 and len(set(pat[tr.rows])) == 3
    assert len(tr) + len(va) == len(st)
    crops = C.fixed_crops(va, C.CropSpec(16, hflip=True), seed=0, max_images=2)
    assert crops.shape == (2, 16, 16) and crops.dtype == np.float32
    np.testing.assert_array_equal(crops, C.fixed_crops(va, C.CropSpec(16), seed=0, max_images=2))
    # the authors' CSV lists a slice twice: it is drawn twice as often
    write_authors_ct(store_path / "ct2", patients=1, slices=2, h=40, w=36,
                     extra_rows=[["new_dataset/P0/s1.npy", 3, 3, 0]])
    folder = sources.open_slices(store_path / "ct2", 16)
    tr2, va2 = C.split_slices(folder, 0.0)
    assert va2 is None and tr2.rows.tolist() == [0, 1, 1]


def test_train_command_from_a_store_and_from_the_authors_folder(store_path, tmp_path, capsys):
    from btd_jax import cli

    cfg_json = tmp_path / "cfg.json"
    cfg_json.write_text(configs.to_json(configs.override(CFG, {"train.num_steps": 2})))
    for name, data in (("s", store_path / "st"), ("f", store_path / "ct")):
        with pytest.raises(SystemExit) as e:
            cli.main(["btd-jax", "train", "--config", str(cfg_json), "--data", str(data),
                      "--workdir", str(tmp_path / name), "--no_progress", "--val_fraction", "0.25"])
        assert e.value.code == 0, capsys.readouterr().err
        ema, cfg = train.load_params(str(tmp_path / name))
        assert cfg.train.num_steps == 2
    err = capsys.readouterr().err
    assert "fresh crops" in err and "patients" in err


def test_memory_mapped_npy_is_not_copied(tmp_path):
    x = np.random.default_rng(0).random((64, 16, 16), dtype=np.float32)
    np.save(tmp_path / "p.npy", x)
    mm = np.load(tmp_path / "p.npy", mmap_mode="r")
    checked = F.check_patches(mm, CFG, "p.npy")
    assert np.shares_memory(checked, mm)            # validated in chunks, not copied
    mesh = parallel.make_mesh()
    rows = np.arange(5, 60)
    by_rows = F.TrainFeed(checked, CFG, mesh, rows=rows)
    copied = F.TrainFeed(F.check_patches(np.asarray(x[5:60]), CFG, "copy"), CFG, mesh)
    for s in (0, 3, 7):                             # a row subset feeds like the copied subset
        np.testing.assert_array_equal(by_rows.host_batch(s), copied.host_batch(s))
    bad = np.array(x)
    bad[40, 3, 3] = np.nan
    np.save(tmp_path / "bad.npy", bad)
    from btd_jax.data import DataError

    with pytest.raises(DataError, match=r"bad\.npy.*index 40"):
        F.check_patches(np.load(tmp_path / "bad.npy", mmap_mode="r"), CFG, "bad.npy")
