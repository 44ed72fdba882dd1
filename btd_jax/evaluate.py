"""Paper-style evaluation: Table-1 rows (AUC/EER with scanner-balanced bootstrap) and scoring glue.

One *row* is one (dataset, method, reduction): e.g. ``CTGAN-CT-Inject`` / ``BTD`` / ``center32``
with the point AUC/EER on all samples and the bootstrap mean, std and 95% interval (the paper
reports the bootstrap mean). Typical use::

    sets = evaluate.dataset_indices(labels, meta, "CT", "injection")      # {'CTGAN-CT-Inject': indices}
    scores = evaluate.score_reductions(scorer, patches, centers=(None, 32))  # {"full": (N,), "center32": (N,)}
    rows = [evaluate.evaluate_scores(scores[r][i], labels[i], scanner[i], dataset=..., reduction=r)
            for ...]
    evaluate.write_all(rows, out_dir)                                     # results.md / .csv / .json

``evaluate_testset`` does all of that for a loaded test set, :func:`evaluate` for a test set (or scored
CSV) on disk, writing every file (``btd-jax evaluate``). Writers (:mod:`btd_jax.eval_io`), figures
(:mod:`btd_jax.plots`) and :func:`btd_jax.metrics.parse_labels` are re-exported here.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import jax
from tqdm import tqdm

import numpy as np

from btd_jax import calibration, metrics
from btd_jax.configs import reductions
from btd_jax.data.errors import DataError
from btd_jax.data.testsets.layout import ATTACKS
from btd_jax.eval_io import (load_eval_set, read_scores_csv, table1_markdown, write_all, write_csv, write_json,
                             write_markdown, write_scores_csv)
from btd_jax.data.readers import load_patches
from btd_jax.metrics import parse_labels
from btd_jax.plots import plot_histogram, plot_roc
from btd_jax.runtime.outputs import write_skipped
from btd_jax.scoring.pooling import pool_window
from btd_jax.scoring.scorer import Scorer, as_scorer

__all__ = ["ATTACKS", "dataset_name", "reduction_name", "parse_labels", "split_by_tamper", "dataset_indices", "evaluate_scores",
           "reduce_maps", "score_reductions", "evaluate_testset", "write_markdown", "write_csv", "write_json",
           "write_all", "load_eval_set", "plot_roc", "plot_histogram", "read_scores_csv", "write_scores_csv", "table1_markdown",
           "Evaluation", "evaluate"]

_NO_METHOD = {"", "real", "none", "nan", "na", "-"}


def dataset_name(tamper: str, modality: str, attack: str) -> str:
    """('CTGAN', 'CT', 'injection') -> 'CTGAN-CT-Inject', the paper's dataset names."""
    a = ATTACKS.get(str(attack).lower())
    if a is None:
        raise ValueError(f"unknown attack {attack!r}; use one of {sorted(ATTACKS)}")
    return f"{tamper}-{modality}-{a}"


def reduction_name(center: Optional[int], reduction: str = "mean") -> str:
    """None -> 'full' (mean over the patch); k -> 'center{k}' (mean over the central k x k window).

    Other poolings get a suffix: ('max' -> 'full_max', 'percentile:99' -> 'center32_p99')."""
    name = "full" if center is None else f"center{int(center)}"
    suffix = reductions.label(reduction)
    return f"{name}_{suffix}" if suffix else name


def split_by_tamper(labels: np.ndarray, method: Optional[np.ndarray], tamper: Optional[str] = None
                    ) -> Dict[str, np.ndarray]:
    """Index arrays per tamper method (one paper dataset each), from 0/1 labels and a method column.

    Fakes of method ``m`` go to dataset ``m``. Reals go to dataset ``m`` too if some reals carry
    method ``m`` (the test set pairs them); otherwise every real is shared by all datasets (reals
    have no tamper method). Without a method column everything is one dataset named ``tamper`` or
    'all'. ``tamper`` restricts the result to that method (case-insensitive) and errors if absent.
    """
    labels = np.asarray(labels)
    if method is None:
        return {tamper or "all": np.arange(labels.size)}
    m = np.asarray([str(v).strip() for v in method])
    # a fake made by several methods ('CTGAN+SD', as datasets.load_testset joins them) is in each
    parts = [set(v.split("+")) for v in m]
    fake_methods = sorted({p for v, y in zip(parts, labels) if y == 1 for p in v if p.lower() not in _NO_METHOD})
    if not fake_methods and tamper is None:  # a method column that names no tamper method
        return {"all": np.arange(labels.size)}
    if tamper is not None:
        match = [v for v in fake_methods if v.lower() == tamper.lower()]
        if not match:
            raise DataError(f"tamper method {tamper!r} not found among fake samples; "
                            f"available: {', '.join(fake_methods) or 'none'}")
        fake_methods = match
    out = {}
    for name in fake_methods:
        has = np.asarray([name in v for v in parts])
        fake = np.flatnonzero((labels == 1) & has)
        paired = np.flatnonzero((labels == 0) & has)
        real = paired if paired.size else np.flatnonzero((labels == 0) & np.isin(np.char.lower(m), list(_NO_METHOD)))
        out[name] = np.sort(np.concatenate([real, fake]))
    return out


def _indicator_columns(metadata: Mapping[str, Any], modality: str, attack: str) -> Dict[str, str]:
    """Authors' 0/1 dataset columns '<method>-<modality>-<Inject|Remove>' in ``metadata`` -> method."""
    att = ATTACKS.get(str(attack).lower())
    aliases = {a for a, c in ATTACKS.items() if c == att} | {str(att).lower()}
    mods = {modality.upper()} | ({"MR"} if modality.upper() == "MRI" else set())
    out = {}
    for col in metadata:
        parts = str(col).rsplit("-", 2)
        if len(parts) == 3 and parts[1].upper() in mods and parts[2].lower() in aliases:
            out[col] = parts[0]
    return out


def dataset_indices(labels: Any, metadata: Mapping[str, Any], modality: str, attack: str,
                    tamper: Optional[str] = None) -> Dict[str, np.ndarray]:
    """{paper dataset name (e.g. 'CTGAN-CT-Inject'): sorted sample indices}.

    The authors' CSVs mark dataset membership with 0/1 columns named like the dataset; when present
    they are used as they are (a dataset whose column marks no real sample gets every real).
    Otherwise the 'method' column is split with :func:`split_by_tamper`.
    """
    y = np.asarray(labels)
    ind = _indicator_columns(metadata, modality, attack)
    if not ind:
        return {dataset_name(t, modality, attack): idx
                for t, idx in split_by_tamper(y, metadata.get("method"), tamper).items()}
    if tamper is not None:
        ind = {c: m for c, m in ind.items() if m.lower() == tamper.lower()}
        if not ind:
            raise DataError(f"tamper method {tamper!r} has no dataset column; "
                            f"available: {', '.join(sorted(_indicator_columns(metadata, modality, attack).values()))}")
    out = {}
    for col, meth in ind.items():
        on = np.asarray([str(v).strip().lower() in ("1", "1.0", "true", "yes") for v in metadata[col]])
        if not (on & (y == 1)).any():
            continue  # a column that marks no fake: nothing to detect
        if not (on & (y == 0)).any():
            on = on | (y == 0)
        out[dataset_name(meth, modality, attack)] = np.flatnonzero(on)
    if not out:
        raise DataError(f"no dataset column ({', '.join(ind)}) marks any fake sample")
    return out


def evaluate_scores(scores: Any, labels: Any, groups: Optional[Any] = None, *, dataset: str = "all",
                    method: str = "BTD", reduction: str = "full", n_boot: int = 100, seed: int = 0
                    ) -> Dict[str, Any]:
    """One Table-1 row: point AUC/EER on all samples + scanner-balanced bootstrap (mean, std, CI)."""
    y, s = metrics.check_inputs(labels, scores, name=f"{dataset} ({reduction})")
    e, thr = metrics.eer(y, s)
    b = metrics.bootstrap(s, y, groups=groups, n=n_boot, seed=seed)
    return {
        "dataset": dataset, "method": method, "reduction": reduction,
        "n_real": int((y == 0).sum()), "n_fake": int((y == 1).sum()),
        "auc": metrics.auc(y, s), "eer": e, "eer_threshold": thr,
        "auc_mean": b["auc_mean"], "auc_std": b["auc_std"], "auc_ci_low": b["auc_ci"][0], "auc_ci_high": b["auc_ci"][1],
        "eer_mean": b["eer_mean"], "eer_std": b["eer_std"], "eer_ci_low": b["eer_ci"][0], "eer_ci_high": b["eer_ci"][1],
        "n_boot": b["n"], "seed": b["seed"], "samples_per_draw": b["samples_per_draw"],
        "groups": ";".join(f"{g}:{k}" for g, k in b["per_class_per_group"].items()),
        "skipped_groups": ";".join(f"{g}({r} real/{f} fake)" for g, r, f in b["skipped_groups"]),
    }


# ----------------------------------------------------------------------------- scoring

def reduce_maps(maps: np.ndarray, centers: Sequence[Optional[int]], reduction: str = "mean") -> Dict[str, np.ndarray]:
    """(N, H, W) squared residuals -> {reduction name: (N,) pooled over the patch / central k x k}.

    The central window is rows/cols [(H-k)//2, (H-k)//2 + k), as ``btd_jax.score.center_window``;
    ``reduction`` pools it ('mean', the paper; 'max'; 'percentile:Q'), as ``btd_jax.score.reduce_residual``.
    """
    return {reduction_name(k, reduction): pool_window(maps, k, reduction) for k in centers}


def score_reductions(scorer: Any, images: Any, centers: Sequence[Optional[int]] = (None, 32), steps: int = 1,
                     batch_size: int = 256, key: Any = None, block: int = 4096,
                     progress: Optional[Any] = None, reduction: str = "mean", **overrides: Any
                     ) -> Dict[str, np.ndarray]:
    """One network pass per patch, every reduction: {name: (N,) float64}.

    Streams ``images`` (N,H,W) in blocks of ``block`` through ``scorer.residual_map`` (device
    parallel) so the (N,H,W) maps are never all in memory. With ``steps > 1`` pass ``key``: image
    ``i`` draws its noise from ``item_key(key, i)`` (``index_offset`` of each block), so the scores
    do not depend on ``block`` or ``batch_size``. ``overrides`` (e.g. ``clip_inputs=True``) go to
    ``scorer.residual_map`` as they are.
    """
    n = len(images)
    parts: Dict[str, List[np.ndarray]] = {}
    for start in range(0, n, block):
        kw = dict(overrides) if progress is None else dict(overrides, progress=progress)  # progress(n_done) per chunk
        if key is not None:
            kw["key"] = key
            if start:  # the first block needs no offset (scorers without the keyword still work)
                kw["index_offset"] = start
        maps = np.asarray(scorer.residual_map(images[start:start + block], steps=steps, batch_size=batch_size, **kw),
                          dtype=np.float64)
        for name, v in reduce_maps(maps, centers, reduction).items():
            parts.setdefault(name, []).append(v)
    return {name: np.concatenate(v) for name, v in parts.items()}


def evaluate_testset(scorer: Any, patches: Any, labels: Any, metadata: Mapping[str, Any], modality: str, attack: str,
                     tamper: Optional[str] = None, centers: Sequence[Optional[int]] = (None, 32), steps: int = 1,
                     n_boot: int = 100, seed: int = 0, batch_size: int = 256, key: Any = None,
                     method: str = "BTD", progress: Optional[Any] = None, reduction: str = "mean"):
    """Scores a test set once and evaluates every (tamper dataset, reduction).

    ``metadata`` columns used: 'scanner' (bootstrap strata) and 'method' (tamper method per sample).
    Returns ``(rows, scores)`` with ``scores`` = {reduction: (N,)} for all samples.
    """
    y = parse_labels(labels)
    scores = score_reductions(scorer, patches, centers=centers, steps=steps, batch_size=batch_size, key=key,
                              progress=progress, reduction=reduction)
    return evaluate_scored(scores, y, metadata, modality, attack, tamper, n_boot, seed, method), scores


def evaluate_scored(scores: Mapping[str, np.ndarray], labels: np.ndarray, metadata: Mapping[str, Any], modality: str,
                    attack: str, tamper: Optional[str] = None, n_boot: int = 100, seed: int = 0,
                    method: str = "BTD", group_column: str = "scanner") -> List[Dict[str, Any]]:
    """Rows for already computed ``scores`` {reduction: (N,)}; see :func:`evaluate_testset`.

    ``group_column`` names the metadata column the bootstrap balances over (the paper: scanner);
    without it the bootstrap only balances the classes.
    """
    y = np.asarray(labels)
    scanner = metadata.get(group_column)
    scanner = None if scanner is None else np.asarray(scanner).astype(str)
    rows = []
    for name, idx in dataset_indices(y, metadata, modality, attack, tamper).items():
        for red, s in scores.items():
            rows.append(evaluate_scores(np.asarray(s)[idx], y[idx], None if scanner is None else scanner[idx],
                                        dataset=name, method=method, reduction=red, n_boot=n_boot, seed=seed))
    return rows


# ----------------------------------------------------------------------------- a test set on disk

@dataclasses.dataclass
class Evaluation:
    """What :func:`evaluate` did: Table-1 ``rows``, ``scores`` {reduction: (N,)}, ``labels``,
    ``metadata``, the paths written, the calibration fitted (if asked) and the items left out."""

    rows: List[Dict[str, Any]]
    scores: Dict[str, np.ndarray]
    labels: np.ndarray
    metadata: Dict[str, Any]
    paths: Dict[str, Any]
    calibration: Optional[calibration.Calibration] = None
    skipped: List[Any] = dataclasses.field(default_factory=list)


def _threshold_for(workdir: Optional[str], column: str, steps: int, variant: str = "btd") -> Optional[float]:
    """The saved calibration threshold if it was fitted for this score column (variant, reduction) and d."""
    if not workdir or not os.path.exists(os.path.join(workdir, calibration.FILENAME)):
        return None
    cal = calibration.Calibration.load(workdir)
    name = reduction_name(cal.center, cal.reduction) if cal.variant == "btd" else cal.variant
    same = cal.variant == variant and name == column and (cal.steps or 1) == steps
    return cal.threshold if same else None


def _fit_calibration(scorer: Scorer, real_path: str, center: Optional[int], modality: str, attack: str,
                     target_fpr: float, key: Any, **settings: Any) -> calibration.Calibration:
    """calibration.json in the scorer's workdir from real-only patches scored at ``center``."""
    if not scorer.workdir:
        raise ValueError("calibrating needs the model's workdir (load the model from one)")
    meta = dict(source=os.path.abspath(real_path), modality=modality, attack=attack)
    cal = calibration.calibrate_scorer(scorer, load_patches(real_path), target_fpr=target_fpr, key=key, meta=meta,
                                       center=center, **settings)
    cal.save(scorer.workdir)
    return cal


def _variant_scores(scorer: Scorer, patches: Any, variant: str, center: Optional[int], reference: Any, key: Any,
                    progress: Any, **settings: Any) -> Dict[str, np.ndarray]:
    """{variant: (N,)} of a variant other than btd (a variant with a reference scores at its settings)."""
    return {variant: np.asarray(scorer.score(patches, center=center, variant=variant, reference=reference, key=key,
                                             progress=progress, **settings), np.float64)}


def evaluate(model: Union[None, Scorer, str, "os.PathLike[str]"] = None, dataset: Optional[str] = None,
             out: Optional[str] = None, *, scores: Optional[str] = None, modality: str = "CT",
             attack: str = "injection", tamper: Optional[str] = None, centers: Sequence[int] = (32,),
             reduction: Optional[str] = None, steps: Optional[int] = None, n_boot: int = 100, seed: int = 0,
             group_column: str = "scanner", batch_size: Optional[int] = None, clip_inputs: bool = False,
             calibrate: Optional[str] = None, target_fpr: float = 0.1, strict: bool = True,
             progress: bool = True, variant: str = "btd", reference: Any = None) -> Evaluation:
    """The paper's Table 1 for one test set: scores ``dataset`` (authors' layout, or a ``.npz`` with
    patches/labels[/scanner/method]) with ``model`` (a :class:`Scorer` or a workdir), or reads an
    already ``scores`` CSV, and writes to ``out``: ``results.md``/``.csv``/``.json`` (AUC and EER per
    tamper dataset and reduction: the full patch and each of ``centers``, scanner-balanced bootstrap over
    ``group_column``), ``scores.csv`` (per sample; not for ``scores``), ``roc_<dataset>.png``,
    ``hist_<dataset>_<reduction>.png`` (with the workdir's calibration threshold when it matches) and
    ``skipped.csv`` (rows left out with ``strict=False``).

    ``calibrate``: real-only validation patches (.npy/.npz) to fit ``calibration.json`` in the workdir
    at ``target_fpr``. ``steps``/``reduction``/``batch_size``/``clip_inputs``: None = the config's;
    ``seed``: the bootstrap and, for d > 1, the noise key. ``variant``: a score variant other than
    the paper's ('btd') gives one score column named after it, made at the first of ``centers`` (a
    variant with a reference, e.g. 'oneclass': at the reference's own settings; ``reference`` is the
    reference or its JSON path, default the workdir's); the calibration is then of that variant.
    """
    if scores and calibrate:
        raise ValueError("calibrating needs a model, not an already scored CSV")
    if not scores and (model is None or dataset is None):
        raise ValueError("need a model and a dataset (or an already scored CSV)")
    if out is None:
        raise ValueError("evaluate needs an output folder (out)")
    windows = [None] + [int(c) for c in centers]
    skipped: List[Any] = []
    cal, workdir = None, None
    if scores:  # a workdir given beside them still lends its calibration threshold to the histograms
        workdir = model.workdir if isinstance(model, Scorer) else (None if model is None else os.fspath(model))
        labels, by_reduction, meta = read_scores_csv(scores)
        steps = steps or 1
    else:
        scorer = as_scorer(model)
        workdir = scorer.workdir
        patches, labels, meta = load_eval_set(dataset, modality, attack, size=scorer.cfg.image_size,
                                              skipped=None if strict else skipped)
        write_skipped(os.path.join(out, "skipped.csv"), skipped)
        given = dict(steps=steps, reduction=reduction, batch_size=batch_size, clip_inputs=clip_inputs or None)
        s = scorer.settings(**{k: v for k, v in given.items() if v is not None})
        steps, reduction = s.steps, s.reduction
        key = jax.random.key(seed) if s.steps > 1 or variant != "btd" else None
        extra = {"clip_inputs": True} if s.clip_inputs else {}
        first = next((c for c in windows if c is not None), None)
        common = dict(steps=s.steps, batch_size=s.batch_size, reduction=s.reduction, **extra)
        with tqdm(total=len(patches), desc="scoring", unit="patch", file=sys.stderr, disable=not progress) as bar:
            if variant == "btd":
                by_reduction = score_reductions(scorer, patches, centers=windows, steps=s.steps,
                                                batch_size=s.batch_size, key=key, progress=bar.update,
                                                reduction=s.reduction, **extra)
            else:
                reference = scorer.reference(variant, reference)
                by_reduction = _variant_scores(scorer, patches, variant, first, reference, key, bar.update, **common)
        if calibrate:  # the paper scores injections on the central window and removals on the whole patch
            center = first if variant != "btd" or ATTACKS[attack.lower()] == "Inject" else None
            vkw = {} if variant == "btd" else dict(variant=variant, reference=reference)
            cal = _fit_calibration(scorer, calibrate, center, modality, attack, target_fpr, key, **vkw, **common)
    rows = evaluate_scored(by_reduction, labels, meta, modality, attack, tamper, n_boot=n_boot, seed=seed,
                           group_column=group_column)
    paths: Dict[str, Any] = write_all(rows, out, modality=modality, attack=attack, steps=steps,
                                      source=os.path.abspath(scores or dataset or ""),
                                      workdir=os.path.abspath(workdir) if workdir else None)
    if not scores:
        paths["scores"] = write_scores_csv(os.path.join(out, "scores.csv"), labels, by_reduction, meta)
    paths["figures"] = []
    for name, idx in dataset_indices(labels, meta, modality, attack, tamper).items():
        paths["figures"].append(plot_roc({r: (labels[idx], v[idx]) for r, v in by_reduction.items()},
                                         os.path.join(out, f"roc_{name}.png"), title=name))
        for r, v in by_reduction.items():
            paths["figures"].append(plot_histogram(v[idx], labels[idx], os.path.join(out, f"hist_{name}_{r}.png"),
                                                   title=f"{name} ({r})",
                                                   threshold=_threshold_for(workdir, r, steps, variant)))
    return Evaluation(rows, by_reduction, labels, dict(meta), paths, cal, skipped)
