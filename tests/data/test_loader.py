"""Host batches made ahead: a thread or grain worker processes, same batches in the same order."""

import numpy as np
import pytest

from btd_jax.data.crops import loader, sampling as C
from btd_jax.data.store import slice_store as S, sources
from btd_jax.runtime.prefetch import thread_prefetch
from _layouts import write_authors_ct


@pytest.fixture(scope="module")
def make(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader")
    write_authors_ct(root / "ct", patients=2, slices=3, h=48, w=48)
    sources.prepare(root / "ct", root / "st", size=16, progress=False)
    st = S.SliceStore(root / "st")
    return C.HostBatches(st, np.arange(len(st)), 0, 2, 4, slice(0, 4), C.CropSpec(16, hflip=True))


def test_thread_prefetch_in_order_and_errors_surface(make):
    want = [make(s) for s in range(3, 9)]
    got = list(loader.host_batches(make, range(3, 9), workers=0))
    assert all(np.array_equal(a, b) for a, b in zip(want, got)) and len(got) == 6

    def bad(s):
        if s == 2:
            raise ValueError("broken batch 2")
        return s
    with pytest.raises(ValueError, match="broken batch 2"):
        list(thread_prefetch(bad, range(5)))


def test_grain_workers_give_the_same_stream(make):
    pytest.importorskip("grain")
    want = [make(s) for s in range(5, 11)]
    got = list(loader.host_batches(make, range(5, 11), workers=2, depth=2))
    assert len(got) == 6 and all(type(g) is np.ndarray for g in got)
    assert all(np.array_equal(a, b) for a, b in zip(want, got))
