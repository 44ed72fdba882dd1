"""A store on a (fake, local) ``gs://`` bucket: written through etils.epath, read by byte range."""

import numpy as np
import pytest

from btd_jax.data.crops import sampling as C
from btd_jax.data.store import slice_store as S, sources
from _layouts import write_authors_ct


@pytest.fixture
def fake_gcs(tmp_path, monkeypatch):
    """``gs://`` served by fsspec from a local folder: what gcsfs does, without a network."""
    import importlib

    from etils.epath import backend
    from fsspec.implementations.dirfs import DirFileSystem
    from fsspec.implementations.local import LocalFileSystem

    root = tmp_path / "bucket_root"
    root.mkdir()

    class FakeGCS(DirFileSystem):
        protocol = ("gs", "gcs")

        def __init__(self, *args, **kwargs):
            super().__init__(path=str(root), fs=LocalFileSystem())

        def _join(self, path):
            if isinstance(path, str):
                path = path.removeprefix("gs://").removeprefix("gcs://")
            elif isinstance(path, list):
                return [self._join(p) for p in path]
            return super()._join(path)

    for name in ("gs", "gcs"):
        monkeypatch.setitem(importlib.import_module("fsspec.registry")._registry, name, FakeGCS)
    backend.fsspec_backend._get_filesystem.cache_clear()
    yield root
    backend.fsspec_backend._get_filesystem.cache_clear()


def test_prepare_to_gs_and_train_crops_from_it(tmp_path, fake_gcs):
    write_authors_ct(tmp_path / "ct", patients=2, slices=3)
    sources.prepare(tmp_path / "ct", "gs://bucket/stores/ct", size=32, progress=False)
    assert (fake_gcs / "bucket" / "stores" / "ct" / "store.json").is_file()
    remote = S.SliceStore("gs://bucket/stores/ct")
    sources.prepare(tmp_path / "ct", tmp_path / "local", size=32, progress=False)
    local = S.SliceStore(tmp_path / "local")
    assert isinstance(remote._shard(0), S._RangedShard)     # no memory map on a bucket
    assert isinstance(local._shard(0), np.ndarray)           # a view of the memory map
    for r in range(len(local)):
        np.testing.assert_array_equal(remote.slice(r), local.slice(r))
    spec = C.CropSpec(32, hflip=True)
    rows = np.arange(len(local))
    np.testing.assert_array_equal(C.HostBatches(remote, rows, 0, 2, 4, slice(0, 4), spec)(3),
                                  C.HostBatches(local, rows, 0, 2, 4, slice(0, 4), spec)(3))
    assert S.is_store("gs://bucket/stores/ct") and not S.is_store("gs://bucket/none")
