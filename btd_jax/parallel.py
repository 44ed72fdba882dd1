"""Device meshes, batch sharding and ragged-batch padding (single- and multi-host).

Everything here is data-parallel over one mesh axis (``"data"`` by default): the batch axis of every
input is split over the devices, parameters are replicated. A typical step::

    mesh = parallel.make_mesh()
    x, n = parallel.pad_to_multiple(batch, parallel.local_batch_multiple(mesh))
    y = jitted_fn(params, parallel.shard_batch(x, mesh))
    y = parallel.unpad(np.asarray(y), n)

Multi-host runs call :func:`initialize_distributed` first; every process then feeds its own shard of
the global batch to :func:`shard_batch` (``jax.make_array_from_process_local_data``).
"""

from __future__ import annotations

import os
from typing import Optional, Sequence, Tuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = [
    "DATA_AXIS", "make_mesh", "data_sharding", "replicated", "pad_to_multiple", "unpad",
    "shard_batch", "local_batch_multiple", "initialize_distributed", "CPU_CONV_FLAG", "prefer_cpu_convolution_kernels",
]

DATA_AXIS = "data"


def make_mesh(devices: Optional[Sequence[jax.Device]] = None, axis: str = DATA_AXIS) -> Mesh:
    """A 1-D mesh named ``axis`` over ``devices`` (default: every device of every process).

    In a single process that is every local device; in a multi-host run it is the global device
    list, which is what ``jit`` needs to treat per-process shards as one global batch.
    Pass e.g. ``jax.devices()[:1]`` for a one-device mesh.
    """
    devs = list(jax.devices() if devices is None else devices)
    if not devs:
        raise ValueError("make_mesh: no devices given")
    return Mesh(np.asarray(devs, dtype=object), (axis,))


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Shards axis 0 (the batch) over the mesh's first axis; the other axes stay whole."""
    return NamedSharding(mesh, PartitionSpec(mesh.axis_names[0]))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array (used for parameters and schedules)."""
    return NamedSharding(mesh, PartitionSpec())


def local_batch_multiple(mesh: Mesh) -> int:
    """How many rows this process's batch must divide by: its number of devices in ``mesh``."""
    pid = jax.process_index()
    return max(1, sum(1 for d in mesh.devices.flat if d.process_index == pid))


def pad_to_multiple(x: np.ndarray, multiple: int) -> Tuple[np.ndarray, int]:
    """Pads axis 0 of ``x`` up to a multiple of ``multiple`` by repeating the last row.

    Repeating a real row (rather than zeros) keeps the padding inside the valid input range, so it
    cannot produce NaNs or trip range checks. Returns ``(x_padded, n_valid)``; ``x`` itself is
    returned (no copy) when nothing needs padding.

    Args:
      x: (N, ...) array with N >= 1.
      multiple: positive int.
    Returns:
      (ceil(N / multiple) * multiple, ...) array, and N.
    """
    if multiple < 1:
        raise ValueError(f"pad_to_multiple: multiple must be >= 1, got {multiple}")
    x = np.asarray(x)
    n = x.shape[0]
    if n == 0:
        raise ValueError("pad_to_multiple: empty batch (N = 0)")
    extra = (-n) % multiple
    if extra == 0:
        return x, n
    pad = np.broadcast_to(x[-1:], (extra,) + x.shape[1:])
    return np.concatenate([x, pad], axis=0), n


def unpad(y, n_valid: int):
    """Drops the padding rows added by :func:`pad_to_multiple`: ``y[:n_valid]``."""
    return y[:n_valid]


def shard_batch(x, mesh: Mesh) -> jax.Array:
    """Builds a global ``jax.Array`` sharded along axis 0 from this process's rows ``x``.

    Single process: ``x`` is the whole batch and its length must divide by the device count (use
    :func:`pad_to_multiple`). Multi-host: ``x`` is this process's part; the global batch is the
    concatenation over processes in process order.
    """
    sharding = data_sharding(mesh)
    if jax.process_count() == 1:
        n_dev = mesh.devices.size
        if np.shape(x)[0] % n_dev:
            raise ValueError(f"shard_batch: batch of {np.shape(x)[0]} rows does not divide by {n_dev} devices; "
                             "pad it with parallel.pad_to_multiple first")
        return jax.device_put(x, sharding)
    return jax.make_array_from_process_local_data(sharding, np.asarray(x))


def initialize_distributed(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
                           process_id: Optional[int] = None, auto: bool = False) -> bool:
    """Starts multi-host JAX when asked to; a no-op (returns False) for a plain single-process run.

    Arguments default to the environment variables ``BTD_COORDINATOR``, ``BTD_NUM_PROCESSES`` and
    ``BTD_PROCESS_ID``; on managed clusters (TPU pods, SLURM) ``JAX``'s auto-detection is used with
    ``auto`` (or ``BTD_DISTRIBUTED=1``) and no address. Must run before any other JAX call.
    """
    coordinator_address = coordinator_address or os.environ.get("BTD_COORDINATOR")
    if num_processes is None and os.environ.get("BTD_NUM_PROCESSES"):
        num_processes = int(os.environ["BTD_NUM_PROCESSES"])
    if process_id is None and os.environ.get("BTD_PROCESS_ID"):
        process_id = int(os.environ["BTD_PROCESS_ID"])
    if coordinator_address is None and not auto and os.environ.get("BTD_DISTRIBUTED") != "1":
        return False
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)
    return True


# XLA:CPU trains this U-Net ~1.5x faster with its own convolution kernels than through the YNN library
# fusion that jaxlib 0.10 enables by default (experiments/bench_train.py); CPU-only, GPUs ignore it.
CPU_CONV_FLAG = "--xla_cpu_experimental_ynn_fusion_type=dot"


def prefer_cpu_convolution_kernels() -> None:
    """Adds :data:`CPU_CONV_FLAG` to ``XLA_FLAGS`` unless a YNN fusion type is set there already. XLA reads
    the variable when its backend starts: this helps only before the first JAX computation."""
    if "ynn_fusion_type" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + CPU_CONV_FLAG).strip()
