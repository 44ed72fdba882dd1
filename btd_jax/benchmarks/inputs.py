"""The input pipeline: a slice store prepared from synthetic 512 x 512 HU slices in the authors' CT
layout, and training crops/s from it (background thread or grain worker processes)."""

from __future__ import annotations

import os
import time
from typing import Any, Dict, Sequence

import numpy as np

from btd_jax.data.crops import loader, sampling
from btd_jax.data.store import slice_store, sources

__all__ = ["write_authors_ct", "prepare_store", "crops_per_s"]


def write_authors_ct(root: str, n: int, side: int = 512, seed: int = 0) -> None:
    """``n`` HU slices ``root/P<p>/s<k>.npy`` and ``train_csv.csv`` (the authors' layout; one row
    names a missing file, which prepare drops)."""
    rng = np.random.default_rng(seed)
    base = rng.normal(0, 400, (side, side)).astype(np.int16)
    rows = []
    for i in range(n):
        p, k = divmod(i, 100)
        os.makedirs(os.path.join(root, f"P{p}"), exist_ok=True)
        np.save(os.path.join(root, f"P{p}", f"s{k}.npy"), np.roll(base, i, axis=0))
        rows.append(f"P{p}/s{k}.npy,{100 + i % 300},{120 + (7 * i) % 280},0")
    rows.append("dropped.npy,1,1,0")
    with open(os.path.join(root, "train_csv.csv"), "w") as f:
        f.write("unix_path,x,y,istumor\n" + "\n".join(rows) + "\n")


def prepare_store(src: str, dst: str, n: int) -> Dict[str, Any]:
    """Writes ``n`` slices to ``src`` (:func:`write_authors_ct`) and times ``btd-jax prepare`` into ``dst``."""
    write_authors_ct(src, n)
    t0 = time.perf_counter()
    s = sources.prepare(src, dst, progress=False)
    dt = time.perf_counter() - t0
    return {"slices": s["n_slices"], "seconds": round(dt, 2), "slices_per_s": round(s["n_slices"] / dt, 1),
            "dtype": s["dtype"]}


def _host_batches(store_path: str, accum: int, batch: int, size: int) -> sampling.HostBatches:
    st = slice_store.SliceStore(store_path)
    return sampling.HostBatches(st, np.arange(len(st)), seed=0, accum=accum, batch=batch,
                                cols=slice(0, batch), spec=sampling.CropSpec(size, hflip=True))


def crops_per_s(store_path: str, steps: int, workers: Sequence[int] = (0, 1, 2), accum: int = 2, batch: int = 64,
                size: int = 96) -> Dict[str, Any]:
    """Training crops/s of one host (``accum x batch`` crops of ``size`` px per step, flips on; the
    ``ct`` preset's step by default) for each number of grain ``workers`` (0: one background thread);
    worker start-up is reported apart. ``one_core_crops_per_cpu_s``: crops per second of CPU time in
    this process without a thread, which a shared machine's wall clock hides."""
    make = _host_batches(store_path, accum, batch, size)
    out: Dict[str, Any] = {"crop": size, "crops_per_step": accum * batch, "steps": steps}
    for w in workers:
        t0 = time.perf_counter()
        it = loader.host_batches(make, range(0, steps + 2), workers=w, depth=4)
        next(it)
        t1 = time.perf_counter()
        next(it)
        t2, c2 = time.perf_counter(), time.process_time()
        for _ in range(steps):
            next(it)
        t3, c3 = time.perf_counter(), time.process_time()
        it.close()
        out[f"workers_{w}"] = {"startup_s": round(t1 - t0, 2),
                               "crops_per_s": round(steps * accum * batch / (t3 - t2), 1),
                               "main_process_cpu_s": round(c3 - c2, 2)}
    c0 = time.process_time()
    for s in range(steps):
        make(s)
    out["one_core_crops_per_cpu_s"] = round(steps * accum * batch / max(time.process_time() - c0, 1e-6), 1)
    return out
