"""Input pipeline at scale: prepare slices/s, crops/s per host, memory while training, H200 headroom.

    python -m experiments.bench_input --parts prepare,crops,flops --slices 300 --crop_steps 30 \
        --out experiments/results/bench_input_cpu_speed.json
    python -m experiments.bench_input --parts memory --gb 4 --mem_steps 10 \
        --out experiments/results/bench_input_cpu_memory.json

Parts (JSON keys):

* ``prepare``: ``btd-jax prepare`` throughput (slices/s) on synthetic inputs written to ``--tmp``:
  the authors' CT layout (512 x 512 HU ``.npy`` slices) and a DICOM folder (copies of pydicom's
  ``CT_small.dcm``, 128 x 128).
* ``crops``: training crops/s of one host from a store of 512 x 512 slices, for 0 (background
  thread), 1 and 2 grain worker processes, with the ``ct`` preset's step (2 x 64 crops of 96 px,
  flips on); worker start-up is reported apart. ``one_core_crops_per_cpu_s`` is the rate per
  second of CPU time in one process, which a shared machine's wall clock hides.
* ``flops``: FLOPs of one ``ct`` optimiser step from XLA's ``cost_analysis`` of the compiled step;
  the crops/s one H200 would consume at an ASSUMED 30% of its dense bf16 peak (989 TFLOP/s), the
  loader's headroom on this machine (best measured crops/s / that rate) and the CPU cores a host
  needs for 3x headroom at the one-core rate.
* ``memory``: peak anonymous memory (RssAnon sampled every 20 ms, and VmHWM) of a child process
  that trains the ``tiny`` preset for a few steps from a ``--gb`` GB store and from a ``--gb`` GB
  ``.npy`` of patches, next to the same run on a small file: the data path should add nothing
  that grows with the file.

Files are generated under ``--tmp`` and deleted afterwards. Numbers from a shared CPU move with its
load; the load average is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from experiments.paths import recorded
H200_BF16_DENSE_FLOPS = 989e12  # NVIDIA H200 SXM spec sheet, dense (no sparsity) BF16 tensor core
ASSUMED_MFU = 0.30


def _loadavg():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _write_dicom(root: str, n: int) -> None:
    import copy

    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
    os.makedirs(root, exist_ok=True)
    for k in range(n):
        e = copy.deepcopy(ds)
        e.ImagePositionPatient = [0.0, 0.0, 2.5 * k]
        e.InstanceNumber = k + 1
        e.SOPInstanceUID = f"{ds.SOPInstanceUID}.{k}"
        e.save_as(os.path.join(root, f"s{k:04d}.dcm"))


def bench_prepare(tmp: str, n: int) -> dict:
    from btd_jax.benchmarks.inputs import write_authors_ct
    from btd_jax.data.store import sources

    out = {}
    for name, write, count in (("authors_ct_512px", write_authors_ct, n),
                               ("dicom_ct_small_128px", _write_dicom, n)):
        src, dst = os.path.join(tmp, f"in_{name}"), os.path.join(tmp, f"store_{name}")
        write(src, count)
        t0 = time.perf_counter()
        s = sources.prepare(src, dst, progress=False)
        dt = time.perf_counter() - t0
        out[name] = {"slices": s["n_slices"], "seconds": round(dt, 2),
                     "slices_per_s": round(s["n_slices"] / dt, 1), "dtype": s["dtype"]}
        shutil.rmtree(src)
        if name != "authors_ct_512px":
            shutil.rmtree(dst)
    return out


def bench_crops(store_path: str, steps: int, workers=(0, 1, 2)) -> dict:
    from btd_jax.benchmarks.inputs import crops_per_s

    return crops_per_s(store_path, steps, workers)  # the ct preset's step: 2 x 64 crops of 96 px


def bench_flops(crops_per_s: float | None, per_core: float | None = None) -> dict:
    import jax

    from btd_jax import configs, parallel, train

    cfg = configs.get("ct")
    tc = cfg.train
    mesh = parallel.make_mesh(jax.devices()[:1])
    state = train.create_train_state(cfg, jax.random.PRNGKey(0), mesh)
    step = train.make_train_step(cfg, mesh)
    x = jax.ShapeDtypeStruct((tc.grad_accum, tc.batch_size, cfg.image_size, cfg.image_size, 1),
                             np.float32)
    compiled = step.lower(state, x).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost["flops"])
    crops = tc.grad_accum * tc.batch_size
    rate = ASSUMED_MFU * H200_BF16_DENSE_FLOPS / flops * crops
    out = {"config": "ct", "crops_per_step": crops, "flops_per_step": flops,
           "assumption": f"{ASSUMED_MFU:.0%} of H200 dense bf16 peak "
                         f"({H200_BF16_DENSE_FLOPS / 1e12:.0f} TFLOP/s); XLA:CPU cost_analysis "
                         f"of the float32 step",
           "h200_steps_per_s": round(ASSUMED_MFU * H200_BF16_DENSE_FLOPS / flops, 2),
           "h200_crops_per_s": round(rate, 1)}
    if crops_per_s:
        out["loader_crops_per_s_this_machine"] = crops_per_s
        out["headroom_this_machine"] = round(crops_per_s / rate, 2)
    if per_core:
        out["one_core_crops_per_cpu_s"] = per_core
        out["cores_for_3x_headroom"] = round(3 * rate / per_core, 1)
    return out


# ----------------------------------------------------------------------------------------------
# memory: a child process trains from the data and reports its peak anonymous memory

def _rss_anon_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return -1


def _vm_hwm_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return -1


def _child_memory(data: str, steps: int) -> dict:
    """Runs in the child: train ``tiny`` for ``steps`` steps from ``data``; peak RssAnon."""
    peak = {"anon": 0}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak["anon"] = max(peak["anon"], _rss_anon_kb())
            time.sleep(0.02)

    threading.Thread(target=sample, daemon=True).start()
    from btd_jax import cli, configs

    base = _rss_anon_kb()
    work = tempfile.mkdtemp(prefix="bench_input_run_")
    try:
        cfg = configs.override(configs.get("tiny"), {
            "train.num_steps": steps, "train.batch_size": 8, "train.grad_accum": 1,
            "train.log_every": steps, "train.eval_every": steps, "train.checkpoint_every": steps})
        with open(os.path.join(work, "cfg.json"), "w") as f:
            f.write(configs.to_json(cfg))
        t0 = time.perf_counter()
        try:  # the command line itself: memory-mapped .npy or slice store, 5% held out
            cli.main(["btd-jax", "train", "--config", os.path.join(work, "cfg.json"), "--data", data,
                      "--workdir", os.path.join(work, "run"), "--no_progress"])
        except SystemExit as e:
            if e.code:
                raise RuntimeError(f"btd-jax train exited with {e.code}") from None
        dt = time.perf_counter() - t0
    finally:
        shutil.rmtree(work, ignore_errors=True)
        stop.set()
    return {"peak_rss_anon_mb": round(peak["anon"] / 1024, 1),
            "rss_anon_after_imports_mb": round(base / 1024, 1),
            "vm_hwm_mb": round(_vm_hwm_kb() / 1024, 1), "seconds": round(dt, 1)}


def _run_child(data: str, steps: int) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-m", "experiments.bench_input", "--child", data,
                        "--child_steps", str(steps)], capture_output=True, text=True, env=env)
    if r.returncode:
        raise RuntimeError(f"memory child failed on {data}:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _big_store(path: str, gb: float) -> int:
    """A float16 store of 512 x 512 slices totalling ``gb`` GB, written shard by shard."""
    from btd_jax.data.store import writer

    side, per = 512, 256
    n = max(1, int(gb * 1e9 / (side * side * 2)))
    rng = np.random.default_rng(0)
    base = rng.random((side, side)).astype(np.float32)
    units = []
    for lo in range(0, n, per):
        k = min(per, n - lo)
        units.append(writer.Unit(f"u{lo}", k, lambda lo=lo, k=k: writer.SliceBatch(
            [np.roll(base, lo + j, axis=1) for j in range(k)],
            [dict(patient=f"P{(lo + j) // 50}", path=f"s{lo + j}") for j in range(k)])))
    writer.write_store(path, units, modality="CT", size=16, progress=False)
    return n


def _big_npy(path: str, gb: float, side: int = 16) -> int:
    """A float32 ``.npy`` of (N, side, side) patches totalling ``gb`` GB, written in blocks."""
    n = max(1, int(gb * 1e9 / (side * side * 4)))
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, side, side))
    block = np.random.default_rng(0).random((65536, side, side), dtype=np.float32)
    for lo in range(0, n, len(block)):
        arr[lo:lo + len(block)] = block[:n - lo]
    arr.flush()
    del arr
    return n


def bench_memory(tmp: str, gb: float, steps: int) -> dict:
    out = {"preset": "tiny (16 px crops, batch 8)", "steps": steps, "gb": gb}
    for kind, make in (("store", _big_store), ("npy", _big_npy)):
        for size in (0.05, gb):
            path = os.path.join(tmp, f"mem_{kind}_{size}" + (".npy" if kind == "npy" else ""))
            n = make(path, size)
            res = _run_child(path, steps)
            res["rows"] = n
            out[f"{kind}_{size}gb"] = res
            (shutil.rmtree if kind == "store" else os.remove)(path)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=None, help="write the JSON here too")
    p.add_argument("--tmp", default=tempfile.gettempdir(), help="scratch folder (deleted after)")
    p.add_argument("--parts", default="prepare,crops,flops,memory")
    p.add_argument("--slices", type=int, default=300, help="slices per prepare input")
    p.add_argument("--crop_steps", type=int, default=20)
    p.add_argument("--gb", type=float, default=4.0)
    p.add_argument("--mem_steps", type=int, default=10)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child_steps", type=int, default=20, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(_child_memory(a.child, a.child_steps)))
        return 0
    parts = set(a.parts.split(","))
    tmp = tempfile.mkdtemp(prefix="bench_input_", dir=a.tmp)
    res = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
           "loadavg_start": _loadavg(), "command": recorded("python -m experiments.bench_input " +
                               " ".join(argv if argv is not None else sys.argv[1:]))}
    try:
        store_path = os.path.join(tmp, "store_authors_ct_512px")
        if "prepare" in parts or "crops" in parts:
            res["prepare"] = bench_prepare(tmp, a.slices)
        if "crops" in parts:
            res["crops"] = bench_crops(store_path, a.crop_steps)
        if "flops" in parts:
            crops = res.get("crops", {})
            best = max((v["crops_per_s"] for k, v in crops.items() if k.startswith("workers_")),
                       default=None)
            res["flops"] = bench_flops(best, crops.get("one_core_crops_per_cpu_s"))
        if "memory" in parts:
            res["memory"] = bench_memory(tmp, a.gb, a.mem_steps)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    res["loadavg_end"] = _loadavg()
    text = json.dumps(res, indent=1)
    print(text)
    if a.out:
        os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
        with open(a.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
