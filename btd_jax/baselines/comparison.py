"""BTD against every baseline on one test set: the paper's Table 1 for a user's data.

    result = comparison.compare(train, patches, labels, meta, modality="CT", attack="injection",
                                scorer=Scorer.load(workdir))
    comparison.write_outputs(result, out_dir)  # results.md/.csv/.json, scores.csv, comparison.png
    result = comparison.compare_files("TESTSET_ROOT", "train.npz", "out/", model="runs/ct",
                                      modality="CT", attack="injection")          # btd-jax compare

Protocol (paper section 4): every baseline is fitted on the same real training patches (same [0,1]
preprocessing as BTD) and scored on the same test patches; AUC/EER with the scanner-balanced
bootstrap of :func:`btd_jax.metrics.bootstrap` via :func:`btd_jax.evaluate.evaluate_scored`. The
scoring window follows the paper: the central ``center`` x ``center`` window for injection (32 px)
and the whole patch for removal. Window-based baselines use the same window (In-Paint AE masks it;
the splice detectors contrast it with its surroundings). OOD-DDPM reuses BTD's own DDPM when a
scorer is given ("the same DDPM"), else trains one.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import jax
import numpy as np

from btd_jax import baselines, evaluate
from btd_jax.baselines import base
from btd_jax.data.readers import load_patches
from btd_jax.plots import plot_bars  # re-exported: comparison.plot_bars(rows, path)
from btd_jax.runtime.outputs import write_skipped
from btd_jax.scoring.scorer import Scorer, as_scorer

__all__ = ["Result", "paper_center", "baseline_config", "compare", "write_outputs", "compare_files", "plot_bars"]


@dataclasses.dataclass
class Result:
    rows: List[Dict[str, Any]]
    scores: Dict[str, np.ndarray]  # method display name -> (N,)
    labels: np.ndarray
    metadata: Dict[str, np.ndarray]
    seconds: Dict[str, Dict[str, float]]  # method -> {"fit": s, "score": s}
    info: Dict[str, Any]
    paths: Dict[str, str] = dataclasses.field(default_factory=dict)  # what compare_files wrote
    skipped: List[Any] = dataclasses.field(default_factory=list)  # test-set rows left out (strict=False)


def paper_center(attack: str, side: int, center: Optional[int] = 32) -> Optional[int]:
    """The paper's window: ``center`` px for injection (None if it covers the patch), whole patch for removal."""
    if evaluate.ATTACKS.get(str(attack).lower()) == "Remove" or center is None or center >= side:
        return None
    return int(center)


def baseline_config(name: str, side: int, center: Optional[int], preset: str = "default",
                    steps: Optional[int] = None, scorer: Any = None) -> Any:
    """The config a comparison fits ``name`` with: preset ('default' or 'tiny'), optional step count, then
    the baseline's own ``configure`` for the window and BTD's DDPM (:class:`~btd_jax.baselines.base.Setting`)."""
    b = baselines.get(name)
    if preset not in ("default", "tiny"):
        raise ValueError(f"preset must be 'default' or 'tiny', got {preset!r}")
    cfg = b.tiny if preset == "tiny" else b.config()
    if steps is not None and "steps" in {f.name for f in dataclasses.fields(cfg)}:
        cfg = dataclasses.replace(cfg, steps=int(steps))
    return cfg if b.configure is None else b.configure(cfg, base.Setting(side, center, scorer))


def _say(progress: Optional[Callable[[str], None]], msg: str) -> None:
    if progress is not None:
        progress(msg)


def compare(train: np.ndarray, patches: np.ndarray, labels: np.ndarray, metadata: Mapping[str, Any], *,
            modality: str, attack: str, scorer: Any = None, methods: Sequence[str] = baselines.NAMES,
            tamper: Optional[str] = None, preset: str = "default", baseline_steps: Optional[int] = None,
            center: Optional[int] = 32, btd_steps: int = 1, n_boot: int = 100, seed: int = 0,
            batch_size: int = 256, checkpoint_dir: Optional[str] = None, reuse: bool = False,
            progress: Optional[Callable[[str], None]] = print) -> Result:
    """Fits/loads every baseline in ``methods``, scores BTD (if ``scorer``) and them, returns Table-1 rows.

    ``train`` (M,H,W) real patches and ``patches`` (N,H,W) test patches in [0,1]; ``labels`` (N,)
    0 real / 1 fake; ``metadata`` columns 'scanner' (bootstrap strata), 'method' or the authors'
    indicator columns (datasets). ``checkpoint_dir``: save every fitted baseline there as
    ``<name>.npz``; with ``reuse`` an existing checkpoint is loaded instead of fitting again.
    """
    train = base.check_patches(train, "training patches")
    patches = base.check_patches(patches, "test patches")
    if train.shape[1:] != patches.shape[1:]:
        raise ValueError(f"training patches are {train.shape[1]}x{train.shape[2]} but test patches are "
                         f"{patches.shape[1]}x{patches.shape[2]}; cut both at the same size")
    unknown = [m for m in methods if m not in baselines.NAMES]
    if unknown:
        raise KeyError(f"unknown baseline(s) {unknown}; valid names are {', '.join(baselines.NAMES)}")
    labels = evaluate.parse_labels(labels)
    side = patches.shape[1]
    window = paper_center(attack, side, center)
    reduction = evaluate.reduction_name(window)
    scores: Dict[str, np.ndarray] = {}
    seconds: Dict[str, Dict[str, float]] = {}
    key = jax.random.PRNGKey(seed)

    if scorer is not None:
        t0 = time.perf_counter()
        kw = {"key": jax.random.fold_in(key, 999)} if btd_steps > 1 else {}
        scores["BTD"] = np.asarray(scorer.score(patches, steps=btd_steps, center=window, batch_size=batch_size, **kw),
                                   np.float64)
        seconds["BTD"] = {"fit": 0.0, "score": time.perf_counter() - t0}
        _say(progress, f"BTD: scored {len(patches)} patches in {seconds['BTD']['score']:.1f}s")

    for i, name in enumerate(methods):
        b = baselines.get(name)
        display = b.display_name or name
        ckpt = os.path.join(checkpoint_dir, f"{name}.npz") if checkpoint_dir else None
        t0 = time.perf_counter()
        if ckpt and reuse and os.path.exists(ckpt):
            state = b.load(ckpt)
            _say(progress, f"{display}: loaded {ckpt}")
        else:
            cfg = baseline_config(name, side, window, preset, baseline_steps, scorer)
            kw = {"params": jax.device_get(scorer.params)} if "ddpm" in b.needs and scorer is not None else {}
            state = b.fit(train, cfg, jax.random.fold_in(key, i), **kw)
            if ckpt:
                b.save(state, ckpt)
        t1 = time.perf_counter()
        scores[display] = b.score(state, patches, center=window, batch_size=batch_size)
        seconds[display] = {"fit": t1 - t0, "score": time.perf_counter() - t1}
        _say(progress, f"{display}: fit {seconds[display]['fit']:.1f}s, score {seconds[display]['score']:.1f}s")

    rows = []
    for method, s in scores.items():
        rows += evaluate.evaluate_scored({reduction: s}, labels, metadata, modality, attack, tamper,
                                         n_boot=n_boot, seed=seed, method=method)
    info = {"modality": modality, "attack": attack, "reduction": reduction, "center": window, "preset": preset,
            "baseline_steps": baseline_steps, "btd_steps": btd_steps, "n_train": int(len(train)),
            "n_test": int(len(patches)), "patch_size": int(side), "seconds": seconds}
    return Result(rows, scores, labels, {k: np.asarray(v) for k, v in metadata.items()}, seconds, info)


def write_outputs(result: Result, out_dir: str, **extra: Any) -> Dict[str, str]:
    """results.md/.csv/.json (Table-1 layout), scores.csv (per sample, per method) and comparison.png."""
    os.makedirs(out_dir, exist_ok=True)
    info = result.info
    paths = evaluate.write_all(result.rows, out_dir, **info, **extra)
    evaluate.write_markdown(result.rows, paths["markdown"],
                            title=f"BTD and the paper's baselines: {info['modality']} {info['attack']}")
    paths["scores"] = os.path.join(out_dir, "scores.csv")
    evaluate.write_scores_csv(paths["scores"], result.labels, result.scores, result.metadata)
    title = f"{info['modality']} {info['attack']} ({info['reduction']})"
    paths["figure"] = plot_bars(result.rows, os.path.join(out_dir, "comparison.png"), title=title)
    return paths


def compare_files(dataset: str, train: str, out: str, *, model: Union[None, Scorer, str, "os.PathLike[str]"] = None,
                  modality: str = "CT", attack: str = "injection", methods: Sequence[str] = baselines.NAMES,
                  tamper: Optional[str] = None, preset: str = "default", baseline_steps: Optional[int] = None,
                  max_train: Optional[int] = None, size: Optional[int] = None, center: Optional[int] = 32,
                  btd_steps: int = 1, n_boot: int = 100, seed: int = 0, batch_size: int = 256, reuse: bool = False,
                  strict: bool = True, progress: Optional[Callable[[str], None]] = print) -> Result:
    """:func:`compare` on files, with every output written (``btd-jax compare``).

    ``train``: real training patches (.npy/.npz) in [0, 1], at most ``max_train`` of them (a seeded
    random choice); ``dataset``: a test set (authors' layout, or a .npz with patches/labels), cut at
    ``size`` (default the model's patch size, else the training patches'); ``model``: BTD (a Scorer or
    a workdir; adds its row and lends OOD-DDPM its DDPM). Writes :func:`write_outputs` to ``out``, the
    fitted baselines to ``out/baselines/<name>.npz`` (``reuse``: load those already there) and
    ``out/skipped.csv`` (test-set rows left out with ``strict=False``).
    """
    for m in methods:
        baselines.get(m)  # unknown names fail before any work
    scorer = None if model is None else as_scorer(model)
    real = load_patches(train)
    if max_train and len(real) > max_train:
        real = real[np.random.default_rng(seed).choice(len(real), max_train, replace=False)]
    size = size or (scorer.cfg.image_size if scorer is not None else real.shape[1])
    skipped: List[Any] = []
    patches, labels, meta = evaluate.load_eval_set(dataset, modality, attack, size=size,
                                                   skipped=None if strict else skipped)
    write_skipped(os.path.join(out, "skipped.csv"), skipped)
    result = compare(real, patches, labels, meta, modality=modality, attack=attack, scorer=scorer, methods=methods,
                     tamper=tamper, preset=preset, baseline_steps=baseline_steps, center=center, btd_steps=btd_steps,
                     n_boot=n_boot, seed=seed, batch_size=batch_size, checkpoint_dir=os.path.join(out, "baselines"),
                     reuse=reuse, progress=progress)
    result.paths = write_outputs(result, out, dataset=os.path.abspath(dataset), train=os.path.abspath(train),
                                 workdir=os.path.abspath(scorer.workdir) if scorer is not None and scorer.workdir
                                 else None)
    result.skipped = skipped
    return result
