"""One optimiser step of ``btd_jax.train`` (clip + Adam + EMA, one jitted call) on every local device:
seconds per step, images/s, and FLOP/s by XLA's cost analysis of the compiled step."""

from __future__ import annotations

import statistics
import time
from typing import Any, Dict, Optional

import jax
import numpy as np

from btd_jax import parallel, train
from btd_jax.benchmarks.scoring import flops_of

__all__ = ["time_train_step"]


def time_train_step(cfg: Any, steps: int, warmup: int = 1, peak_flops: Optional[float] = None,
                    seed: int = 0, devices: Optional[int] = None) -> Dict[str, Any]:
    """Times ``steps`` optimiser steps of ``cfg`` (batch ``train.grad_accum x train.batch_size``) after
    ``warmup`` untimed ones; compilation is reported apart.

    ``flops_per_step_per_device`` is the cost analysis of the compiled step (one device's share);
    with ``peak_flops`` (one device's peak) ``share_of_peak`` is the achieved FLOP/s over it.
    ``devices``: the first this many local devices (None: all).
    """
    mesh = parallel.make_mesh(jax.local_devices()[:devices])
    tc = cfg.train
    state = train.create_train_state(cfg, jax.random.PRNGKey(seed), mesh)
    x = np.random.default_rng(seed).random((tc.grad_accum, tc.batch_size, cfg.image_size, cfg.image_size,
                                            cfg.model.channels), dtype=np.float32)
    batch = jax.device_put(x, train.batch_sharding(mesh))
    t0 = time.perf_counter()
    step = train.make_train_step(cfg, mesh).lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    flops = flops_of(step)
    t0 = time.perf_counter()
    state, m = step(state, batch)
    jax.block_until_ready(m["loss"])
    first = time.perf_counter() - t0
    for _ in range(max(0, warmup - 1)):
        state, m = step(state, batch)
    jax.block_until_ready(m["loss"])
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, m = step(state, batch)
        jax.block_until_ready(m["loss"])
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    images = tc.grad_accum * tc.batch_size
    out = {"jax": jax.__version__, "backend": jax.default_backend(), "devices": mesh.devices.size,
           "device_kind": jax.local_devices()[0].device_kind, "dtype": cfg.model.dtype,
           "images_per_step": images, "grad_accum": tc.grad_accum, "compile_s": compile_s, "first_step_s": first,
           "step_times_s": times, "median_step_s": med, "steps_per_s": 1.0 / med, "images_per_s": images / med,
           "loss": float(m["loss"]), "params": sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.params)),
           "flops_per_step_per_device": flops}
    if flops:
        out["flops_per_s_per_device"] = flops / med
        out["share_of_peak"] = flops / med / peak_flops if peak_flops else None
    return out
