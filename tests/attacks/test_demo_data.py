"""Demo datasets from pydicom's shipped slices: layout, values, and no train/test overlap."""

import numpy as np
import pytest

from btd_jax.attacks import demo_data
from btd_jax.data import datasets, preprocess
from btd_jax.data.errors import DataError

SIZE = 32


@pytest.fixture(scope="module", params=["CT", "MRI"])
def built(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"demo_{request.param}")
    return request.param, demo_data.build(out, request.param, size=SIZE, n_train=96, n_test=12, seed=3)


def _footprints_overlap(a, b):
    """Do SIZE x SIZE windows centred on a=(y, x) and b=(y, x) share a pixel?"""
    return abs(int(a[0]) - int(b[0])) < SIZE and abs(int(a[1]) - int(b[1])) < SIZE


def test_train_patches(built):
    mod, d = built
    patches = datasets.load_patches(d.train_path)
    assert patches.shape == (96, SIZE, SIZE)
    assert 0.0 <= patches.min() and patches.max() <= 1.0 and patches.std() > 0.01
    with np.load(d.train_path) as z:
        assert set(z.files) >= {"patches", "source", "frame", "y", "x", "aug"}
        shipped = {f.removesuffix(".dcm") for f, _ in demo_data.SOURCES[mod]}
        assert len(shipped) >= set(np.unique(z["source"])).__len__() >= 2
        assert set(np.unique(z["source"])) <= shipped
        assert len(np.unique(z["aug"])) > 1


@pytest.mark.parametrize("attack", ["Inject", "Remove"])
def test_testset_layout_labels_and_masks(built, attack):
    mod, d = built
    ts = datasets.load_testset(d.testset_root, mod, attack, size=SIZE)
    methods = list(demo_data.METHODS[attack])
    assert len(ts) == 12 * (1 + len(methods))
    assert d.csv_paths[attack] == datasets.testset_csv_path(d.testset_root, mod, attack)
    for m in methods:
        assert (ts.columns["method"] == m).sum() == 12
        assert (ts.labels[ts.columns["method"] == m] == 1).all()
    assert (ts.labels[ts.columns["method"] == "real"] == 0).all()
    assert ts.patches.min() >= 0.0 and ts.patches.max() <= 1.0
    assert set(ts.columns["type"]) == ({"TM", "FM"} if attack == "Inject" else {"TB", "FB"})
    # masks: empty for real rows, non-empty and inside the scored patch for fakes
    for i in range(len(ts)):
        mask = np.load(ts.columns["path"][i].replace(".npy", "_mask.npy"))
        inside = preprocess.extract_patch(mask.astype(np.uint8), ts.columns["x"][i], ts.columns["y"][i], SIZE)
        assert mask.sum() == inside.sum()
        assert (mask.sum() > 0) == bool(ts.labels[i])
    # the tampered pixels actually differ from the real slice there
    fake = np.nonzero(ts.labels == 1)[0][0]
    assert float(ts.columns["radius"][fake]) > 0


def test_no_test_patch_overlaps_a_training_patch(built):
    mod, d = built
    with np.load(d.train_path) as z:
        train = list(zip(z["source"], z["frame"], z["y"], z["x"]))
    for attack in ("Inject", "Remove"):
        ts = datasets.load_testset(d.testset_root, mod, attack, size=SIZE)
        for src, fr, y, x in zip(ts.columns["source"], ts.columns["frame"], ts.columns["src_y"], ts.columns["src_x"]):
            for s2, f2, y2, x2 in train:
                if s2 == src and int(f2) == int(fr):
                    assert not _footprints_overlap((y, x), (y2, x2)), (src, fr, y, x, y2, x2)


def test_deterministic_for_a_seed(tmp_path):
    a = demo_data.build(tmp_path / "a", "CT", size=SIZE, n_train=16, n_test=2, seed=1)
    b = demo_data.build(tmp_path / "b", "CT", size=SIZE, n_train=16, n_test=2, seed=1)
    np.testing.assert_array_equal(datasets.load_patches(a.train_path), datasets.load_patches(b.train_path))
    ta = datasets.load_testset(a.testset_root, "CT", "Inject", size=SIZE)
    tb = datasets.load_testset(b.testset_root, "CT", "Inject", size=SIZE)
    np.testing.assert_array_equal(ta.patches, tb.patches)


def test_split_columns():
    tr, te = demo_data.split_columns((10, 100), 0.35)
    assert not (tr & te).any() and (tr | te).all()
    assert tr[:, :65].all() and te[:, 65:].all()
    tr, te = demo_data.split_columns((64, 64), 0.35, min_width=32)  # small slice: room for a patch each
    assert tr.sum(1)[0] == 32 and te.sum(1)[0] == 32
    with pytest.raises(DataError, match="test_frac"):
        demo_data.split_columns((4, 4), 1.0)


def test_box_sums_match_brute_force():
    rng = np.random.default_rng(0)
    mask = rng.random((13, 11)) > 0.3
    size = 4
    got = demo_data._box_sums(mask, size)
    for y in range(13):
        for x in range(11):
            r0, c0 = y - size // 2, x - size // 2
            want = mask[r0:r0 + size, c0:c0 + size].sum() if r0 >= 0 and c0 >= 0 and r0 + size <= 13 \
                and c0 + size <= 11 else 0
            assert got[y, x] == want


def test_sources_are_real_dicom_through_the_reader():
    srcs = demo_data.load_sources("CT")
    head = [s for s in srcs if s.name == "693_UNCR"][0]
    assert head.image.shape == (512, 512)
    assert -1100 < float(np.median(head.image[head.body])) < 200  # HU, not raw stored values
    np.testing.assert_allclose(head.unit, preprocess.window_ct(head.image))
    assert not (head.train & head.test).any()


def test_missing_source_names_the_file(monkeypatch):
    monkeypatch.setitem(demo_data.SOURCES, "CT", (("no_such_file.dcm", "x"),))
    with pytest.raises(DataError, match="no_such_file.dcm"):
        demo_data.load_sources("CT")


def test_patch_too_large_is_one_clear_error(tmp_path):
    with pytest.raises(DataError, match="patch of size 600"):
        demo_data.build(tmp_path, "CT", size=600, n_train=4, n_test=1)
