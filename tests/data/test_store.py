"""Slice store: round trip of values and manifest, atomic shards, resume, corrupt files."""

import json

import numpy as np
import pytest

from btd_jax.data import DataError, preprocess as P
from btd_jax.data.records import Skipped
from btd_jax.data.store import slice_store as S, sources, writer as W
from _layouts import write_authors_ct


def _unit(key, imgs, calls=None, fail=False):
    def load():
        if calls is not None:
            calls.append(key)
        if fail:
            raise RuntimeError("interrupted")
        return W.SliceBatch([np.asarray(i, np.float32) for i in imgs],
                            [dict(patient=key, path=f"{key}/{k}", slice=k) for k in range(len(imgs))])
    return W.Unit(key, len(imgs), load)


def _imgs(n, h, w, seed):
    return list(np.random.default_rng(seed).random((n, h, w)).astype(np.float32))


def test_round_trip_values_manifest_and_shards(tmp_path):
    a, b = _imgs(3, 40, 48, 0), _imgs(2, 36, 36, 1)
    mixed = [b[0], a[0], b[1]]  # two shapes in one unit: two shards
    summary = W.write_store(tmp_path / "st", [_unit("A", a), _unit("B", mixed)], modality="CT",
                            size=16, dtype="float32", progress=False)
    assert summary["n_slices"] == 6 and summary["candidates"] == "tissue"
    assert [(s["rows"], s["height"], s["width"]) for s in summary["shards"]] == [
        (3, 40, 48), (2, 36, 36), (1, 40, 48)]
    st = S.SliceStore(tmp_path / "st")
    assert len(st) == 6
    recs = list(st.records())
    assert [r["path"] for r in recs] == ["A/0", "A/1", "A/2", "B/0", "B/2", "B/1"]
    assert [r["row"] for r in recs] == list(range(6))
    expect = a + [mixed[0], mixed[2], mixed[1]]
    for r in range(6):
        np.testing.assert_array_equal(st.slice(r), expect[r])  # float32: exact
    np.testing.assert_array_equal(st.window(1, 3, 5, 7, 9), a[1][3:10, 5:14])
    assert st.column("patient").tolist() == ["A"] * 3 + ["B"] * 3
    for r in range(6):
        c = st.centres(r)
        h, w = st.shape(r)
        assert c.ndim == 2 and len(c) >= 1
        assert c[:, 0].min() >= 8 and c[:, 0].max() <= h - 8
    # shards are plain .npy files, memory-mapped on read
    arr = np.load(tmp_path / "st" / summary["shards"][0]["file"], mmap_mode="r")
    assert isinstance(arr, np.memmap) and arr.shape == (3, 40, 48)
    assert not list((tmp_path / "st").rglob("*.tmp-*"))  # no temporary file left


def test_float16_store_is_within_half_precision(tmp_path):
    a = _imgs(2, 20, 20, 3)
    W.write_store(tmp_path / "st", [_unit("A", a)], modality="MR", size=8, progress=False)
    st = S.SliceStore(tmp_path / "st")
    assert st.dtype == "float16"
    np.testing.assert_allclose(st.slice(1), a[1], atol=2.5e-4, rtol=0)


def test_interrupted_prepare_resumes_and_equals_one_run(tmp_path):
    units_ok = [_unit(k, _imgs(2, 24, 24, i)) for i, k in enumerate("ABC")]
    calls = []
    broken = [_unit("A", _imgs(2, 24, 24, 0), calls), _unit("B", _imgs(2, 24, 24, 1), calls),
              _unit("C", _imgs(2, 24, 24, 2), calls, fail=True)]
    with pytest.raises(RuntimeError, match="interrupted"):
        W.write_store(tmp_path / "st", broken, modality="CT", size=8, progress=False)
    assert calls == ["A", "B", "C"]
    with pytest.raises(DataError, match="unfinished prepare"):
        S.SliceStore(tmp_path / "st")
    calls.clear()
    again = [_unit("A", _imgs(2, 24, 24, 0), calls), _unit("B", _imgs(2, 24, 24, 1), calls),
             _unit("C", _imgs(2, 24, 24, 2), calls)]
    W.write_store(tmp_path / "st", again, modality="CT", size=8, progress=False)
    assert calls == ["C"]  # A and B were finished: not read again
    W.write_store(tmp_path / "one", units_ok, modality="CT", size=8, progress=False)
    st, one = S.SliceStore(tmp_path / "st"), S.SliceStore(tmp_path / "one")
    assert list(st.records()) == list(one.records())
    for r in range(len(one)):
        np.testing.assert_array_equal(st.slice(r), one.slice(r))
        np.testing.assert_array_equal(st.centres(r), one.centres(r))
    # a rerun into the same folder with other input is refused
    with pytest.raises(DataError, match="other input or options"):
        W.write_store(tmp_path / "st", units_ok[:2], modality="CT", size=8, progress=False)


def test_prepare_from_authors_layout_resumes_after_a_killed_shard(tmp_path):
    write_authors_ct(tmp_path / "ct", patients=3, slices=3)
    sources.prepare(tmp_path / "ct", tmp_path / "st", shard_rows=4, progress=False)
    files = sorted((tmp_path / "st" / "shards").glob("*.npy"))
    # simulate a kill in the middle of the last unit: its record and shard are gone
    (tmp_path / "st" / "shards" / "000002.json").unlink()
    (tmp_path / "st" / "store.json").unlink()
    mtimes = {f: f.stat().st_mtime_ns for f in files}
    sources.prepare(tmp_path / "ct", tmp_path / "st", shard_rows=4, progress=False)
    assert [f for f in files if f.stat().st_mtime_ns != mtimes[f]] == [
        tmp_path / "st" / "shards" / "000002-00.npy"]
    assert len(S.SliceStore(tmp_path / "st")) == 9


def test_strict_bad_unit_raises_lenient_lists_it(tmp_path):
    bad = W.Unit("bad", 1, lambda: (_ for _ in ()).throw(DataError("scan.dcm: truncated")))
    nan = _imgs(1, 12, 12, 0)
    nan[0][3, 3] = np.nan
    with pytest.raises(DataError, match="truncated"):
        W.write_store(tmp_path / "a", [_unit("A", _imgs(1, 12, 12, 1)), bad], modality="CT",
                      size=8, progress=False)
    with pytest.raises(DataError, match="N/0.*NaN"):
        W.write_store(tmp_path / "b", [_unit("N", nan)], modality="CT", size=8, progress=False)
    s = W.write_store(tmp_path / "c", [_unit("A", _imgs(1, 12, 12, 1)), bad, _unit("N", nan)],
                      modality="CT", size=8, strict=False, progress=False,
                      skipped=[Skipped("series 1.2", "not an image: SR")])
    assert s["n_slices"] == 1
    assert [k["item"] for k in s["skipped"]] == ["series 1.2", "bad", "N"]
    assert "NaN" in s["skipped"][2]["reason"]
    assert json.loads((tmp_path / "c" / "store.json").read_text())["skipped"] == s["skipped"]


def test_corrupt_or_missing_shard_is_one_error_naming_the_file(tmp_path):
    W.write_store(tmp_path / "st", [_unit("A", _imgs(3, 30, 30, 0))], modality="CT", size=8,
                  progress=False)
    shard = tmp_path / "st" / "shards" / "000000-00.npy"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(DataError, match=r"000000-00\.npy: corrupt or truncated shard"):
        S.SliceStore(tmp_path / "st").slice(0)
    shard.write_bytes(b"not an npy file at all" * 10)
    with pytest.raises(DataError, match=r"000000-00\.npy: corrupt or truncated shard"):
        S.SliceStore(tmp_path / "st").slice(0)
    bad = np.load(tmp_path / "st" / "shards" / "000000-00.centres.npy")
    np.save(shard, np.full((3, 30, 30), np.nan, np.float16))
    with pytest.raises(DataError, match=r"000000-00\.npy: row 0 .*NaN"):
        S.SliceStore(tmp_path / "st").window(0, 0, 0, 8, 8)
    np.save(shard, np.zeros((2, 30, 30), np.float16))
    with pytest.raises(DataError, match=r"000000-00\.npy: shard holds \(2, 30, 30\)"):
        S.SliceStore(tmp_path / "st").slice(0)
    shard.unlink()
    with pytest.raises(DataError, match=r"000000-00\.npy: shard file missing"):
        S.SliceStore(tmp_path / "st").slice(0)
    assert bad.dtype == np.int16
    with pytest.raises(DataError, match="not a slice store"):
        S.SliceStore(tmp_path / "nowhere")


def test_store_pickles_by_path(tmp_path):
    import pickle

    W.write_store(tmp_path / "st", [_unit("A", _imgs(2, 16, 16, 0))], modality="CT", size=8,
                  progress=False)
    st = S.SliceStore(tmp_path / "st")
    st.slice(0)
    blob = pickle.dumps(st)
    assert len(blob) < 500  # no slice data, no open maps
    np.testing.assert_array_equal(pickle.loads(blob).slice(1), st.slice(1))


def test_tissue_centres_follow_the_body():
    from btd_jax.data.crops import sampling

    img = np.zeros((128, 128), np.float32)
    img[40:120, 60:124] = 0.4           # the body, lower right
    img[60:90, 80:100] = 0.0            # dark inside the body (a lung) still counts as body
    c = sampling.tissue_centres(img, 32, stride=8)
    assert len(c) > 0
    assert c[:, 0].min() >= 40 and c[:, 1].min() >= 60   # crops at least half inside the body
    assert c[:, 1].max() <= 128 - 16 - 2                    # the clamp (2 px like the authors)
    blank = sampling.tissue_centres(np.zeros((64, 64), np.float32), 32)
    assert blank.tolist() == [[32, 32]]                    # no tissue: the middle, never dropped
    assert P.PATCH_SIZE["CT"] == 96
