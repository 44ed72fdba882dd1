"""Tests for btd_jax.parallel: meshes, shardings, padding (8 fake CPU devices from conftest)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from btd_jax import parallel


def test_make_mesh_uses_all_devices():
    mesh = parallel.make_mesh()
    assert mesh.axis_names == ("data",)
    assert mesh.devices.size == jax.device_count() == 8
    one = parallel.make_mesh(jax.devices()[:1])
    assert one.devices.size == 1
    assert parallel.local_batch_multiple(mesh) == 8
    assert parallel.local_batch_multiple(one) == 1


@pytest.mark.parametrize("n,multiple,expected", [(1, 8, 8), (7, 8, 8), (8, 8, 8), (37, 8, 40), (5, 1, 5)])
def test_pad_to_multiple(n, multiple, expected):
    x = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    xp, nv = parallel.pad_to_multiple(x, multiple)
    assert xp.shape == (expected, 3) and nv == n
    np.testing.assert_array_equal(xp[:n], x)
    np.testing.assert_array_equal(xp[n:], np.broadcast_to(x[-1], (expected - n, 3)))
    np.testing.assert_array_equal(parallel.unpad(xp, nv), x)


def test_pad_rejects_bad_input():
    with pytest.raises(ValueError, match="empty"):
        parallel.pad_to_multiple(np.zeros((0, 2)), 8)
    with pytest.raises(ValueError, match="multiple"):
        parallel.pad_to_multiple(np.zeros((3, 2)), 0)


def test_shard_batch_and_jit_roundtrip():
    mesh = parallel.make_mesh()
    x = np.arange(37 * 4, dtype=np.float32).reshape(37, 4)
    xp, n = parallel.pad_to_multiple(x, parallel.local_batch_multiple(mesh))
    xs = parallel.shard_batch(xp, mesh)
    assert xs.shape == (40, 4)
    assert xs.sharding == parallel.data_sharding(mesh)
    assert len(xs.addressable_shards) == 8
    assert {s.data.shape for s in xs.addressable_shards} == {(5, 4)}

    w = jax.device_put(jnp.ones((4,)), parallel.replicated(mesh))
    f = jax.jit(lambda w, x: (x * w).sum(-1), out_shardings=parallel.data_sharding(mesh))
    y = parallel.unpad(np.asarray(f(w, xs)), n)
    np.testing.assert_allclose(y, x.sum(-1))


def test_shard_batch_refuses_ragged():
    with pytest.raises(ValueError, match="pad_to_multiple"):
        parallel.shard_batch(np.zeros((7, 2), np.float32), parallel.make_mesh())


def test_initialize_distributed_is_noop_without_env(monkeypatch):
    for k in ("BTD_COORDINATOR", "BTD_NUM_PROCESSES", "BTD_PROCESS_ID", "BTD_DISTRIBUTED"):
        monkeypatch.delenv(k, raising=False)
    assert parallel.initialize_distributed() is False
