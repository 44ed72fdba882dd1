"""Fresh crops: a pure function of (seed, step, position); the authors' clamp; per-host rows."""

import pickle

import numpy as np
import pytest

from btd_jax.data import DataError, preprocess as P
from btd_jax.data.crops import sampling as C
from btd_jax.data.store import slice_store as S, sources, writer as W
from _layouts import write_authors_ct


@pytest.fixture(scope="module")
def ct_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("crops")
    write_authors_ct(root / "ct", patients=3, slices=4, h=80, w=72)
    sources.prepare(root / "ct", root / "st", size=32, dtype="float32", progress=False)
    return S.SliceStore(root / "st")


def test_authors_clamp_numbers():
    # their CT trainer: 96 px crops of 512 px slices, centre moved into [50, 462]
    assert [C.clamp_centre(c, 512, 96) for c in (0, 10, 50, 300, 462, 470, 511)] == [
        50, 50, 50, 300, 462, 462, 462]
    assert C.clamp_centre(5, 96, 96) == 48       # a slice the size of the crop: the only place
    assert C.clamp_centre(0, 98, 96) == 49       # one pixel of room each side
    with pytest.raises(DataError, match="smaller than the crop"):
        C.clamp_centre(10, 90, 96)


def test_crops_are_a_pure_function_of_seed_step_position(ct_store):
    spec = C.CropSpec(32, hflip=True)
    rows = np.arange(len(ct_store))
    full = C.HostBatches(ct_store, rows, seed=3, accum=2, batch=8, cols=slice(0, 8), spec=spec)
    a, b = full(5), full(5)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (2, 8, 32, 32, 1) and a.dtype == np.float32
    assert not np.array_equal(full(5), full(6))                  # a fresh crop every step
    other_seed = C.HostBatches(ct_store, rows, 4, 2, 8, slice(0, 8), spec)
    assert not np.array_equal(other_seed(5), a)
    # a resumed feed (new object, steps from the middle) gives the same batches
    resumed = pickle.loads(pickle.dumps(full))
    np.testing.assert_array_equal(resumed(5), a)
    # each host computes only its own columns; together they are the global batch
    h0 = C.HostBatches(ct_store, rows, 3, 2, 8, slice(0, 4), spec)(5)
    h1 = C.HostBatches(ct_store, rows, 3, 2, 8, slice(4, 8), spec)(5)
    np.testing.assert_array_equal(np.concatenate([h0, h1], axis=1), a)


def test_crop_equals_the_authors_trainer_rule(ct_store):
    """Row, centre and window recomputed by hand from the uniforms: the location list, clamp, flip."""
    spec = C.CropSpec(32, hflip=True)
    rows = np.arange(len(ct_store))
    seed, step, count = 1, 7, 6
    got = C.HostBatches(ct_store, rows, seed, 1, count, slice(0, count), spec)(step)[0, ..., 0]
    idx = C.batch_rows(seed, step, len(rows), count)
    u = C.step_uniforms(seed, step, count)
    locs = ct_store.locations
    for p in range(count):
        img = ct_store.slice(int(rows[idx[p]]))
        y, x = locs[int(u[p, 0] * len(locs))]
        y, x = min(max(y, 18), 80 - 18), min(max(x, 18), 72 - 18)   # [16 + 2, n - 16 - 2]
        want = img[y - 16:y + 16, x - 16:x + 16]
        np.testing.assert_array_equal(got[p], want[:, ::-1] if u[p, 3] < 0.5 else want)


def test_epochs_cover_every_row_once(ct_store):
    n = 10
    seen = np.concatenate([C.batch_rows(0, s, n, 5) for s in range(4)])   # two epochs
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:]) == list(range(10))
    assert not np.array_equal(seen[:10], seen[10:])
    np.testing.assert_array_equal(C.batch_rows(0, 3, n, 5, positions=[4, 0]), seen[[19, 15]])


def test_tissue_store_crops_stay_inside_with_jitter(tmp_path):
    img = np.zeros((70, 90), np.float32)
    img[10:60, 20:80] = np.linspace(0.2, 0.8, 60)[None, :]
    batch = W.SliceBatch([img], [dict(patient="p", path="x")])
    W.write_store(tmp_path / "st", [W.Unit("u", 1, lambda: batch)], modality="MR", size=24,
                  dtype="float32", progress=False)
    st = S.SliceStore(tmp_path / "st")
    assert st.default_jitter() == 3
    hb = C.HostBatches(st, np.zeros(1, np.int64), 0, 1, 64, slice(0, 64), C.CropSpec(24))
    crops = np.concatenate([hb(s)[0, ..., 0] for s in range(4)])
    assert crops.shape == (256, 24, 24)
    assert (crops > 0).mean() > 0.6                  # mostly tissue
    assert len({c.tobytes() for c in crops}) > 100   # fresh positions, not a few fixed crops
    # every crop is a window of the slice
    for c in crops[:20]:
        hits = [(y, x) for y in range(70 - 23) for x in range(90 - 23)
                if np.array_equal(img[y:y + 24, x:x + 24], c)]
        assert hits


def test_ctfolder_source_equals_the_store(ct_store, tmp_path_factory):
    from btd_jax.data.crops import authors_ct as A

    folder = A.CTFolder(ct_store.path.parent / "ct", size=32)
    spec = C.CropSpec(32, hflip=True)
    rows = np.arange(len(folder))
    a = C.HostBatches(folder, rows, 2, 2, 4, slice(0, 4), spec)(9)
    b = C.HostBatches(ct_store, rows, 2, 2, 4, slice(0, 4), spec)(9)
    np.testing.assert_array_equal(a, b)   # float32 store: identical
    assert P.PATCH_SIZE["MR"] == 128
