"""Paper-style evaluation: Table-1 rows (AUC/EER with scanner-balanced bootstrap) and scoring glue.

One *row* is one (dataset, method, reduction): e.g. ``CTGAN-CT-Inject`` / ``BTD`` / ``center32``
with the point AUC/EER on all samples and the bootstrap mean, std and 95% interval (the paper
reports the bootstrap mean). Typical use::

    sets = evaluate.dataset_indices(labels, meta, "CT", "injection")      # {'CTGAN-CT-Inject': indices}
    scores = evaluate.score_reductions(scorer, patches, centers=(None, 32))  # {"full": (N,), "center32": (N,)}
    rows = [evaluate.evaluate_scores(scores[r][i], labels[i], scanner[i], dataset=..., reduction=r)
            for ...]
    evaluate.write_all(rows, out_dir)                                     # results.md / .csv / .json

``evaluate_testset`` does all of that for a loaded test set. Writers (:mod:`btd_jax.eval_io`), figures
(:mod:`btd_jax.plots`) and :func:`btd_jax.metrics.parse_labels` are re-exported here.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from btd_jax import metrics
from btd_jax.configs import reductions
from btd_jax.data import datasets, validate
from btd_jax.data.errors import DataError
from btd_jax.eval_io import (read_scores_csv, table1_markdown, write_all, write_csv, write_json, write_markdown,
                             write_scores_csv)
from btd_jax.metrics import parse_labels
from btd_jax.plots import plot_histogram, plot_roc
from btd_jax.scoring.pooling import pool_window

__all__ = ["ATTACKS", "dataset_name", "reduction_name", "parse_labels", "split_by_tamper", "dataset_indices", "evaluate_scores",
           "reduce_maps", "score_reductions", "evaluate_testset", "write_markdown", "write_csv", "write_json",
           "write_all", "load_eval_set", "plot_roc", "plot_histogram", "read_scores_csv", "write_scores_csv", "table1_markdown"]

ATTACKS = {"injection": "Inject", "inject": "Inject", "removal": "Remove", "remove": "Remove"}
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


def load_eval_set(path: str, modality: str, attack: str, size: Optional[int] = None, skipped: Optional[list] = None):
    """-> (patches (N,H,W) float32, labels (N,) int8, metadata {column: (N,)}).

    ``path`` is a test-set root in the authors' layout (``btd_jax.data.datasets.load_testset``) or a
    ``.npz`` holding ``patches`` and ``labels`` plus optional per-sample columns (``scanner``,
    ``method``, ``size``, ...). ``size``: patch side cut from the test images (the model's
    ``image_size``; default the paper's 96 CT / 128 MRI). With a list ``skipped``, bad rows of a test
    set are left out and recorded there instead of raising.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such test set")
    if path.endswith(".npz"):
        z = validate.load_npz(path)
        if "patches" not in z or "labels" not in z:
            raise DataError(f"{path}: a .npz test set needs 'patches' and 'labels' arrays (has {sorted(z)})")
        validate.check_shape(z["patches"], f"{path} (patches)")
        patches = z["patches"].astype(np.float32)
        labels = parse_labels(z["labels"], source=path)
        meta = {k: v for k, v in z.items() if k not in ("patches", "labels")}
    else:
        ts = datasets.load_testset(path, modality, attack, size=size, strict=skipped is None)
        if skipped is not None:
            skipped.extend(ts.skipped)
        patches, labels = np.asarray(ts.patches, np.float32), parse_labels(ts.labels, source=path)
        meta = {k: np.asarray(v) for k, v in dict(getattr(ts, "columns", None) or ts.metadata).items()}
    for k, v in meta.items():
        if len(v) != len(labels):
            raise DataError(f"{path}: metadata column {k!r} has {len(v)} entries for {len(labels)} samples")
    if len(patches) != len(labels):
        raise DataError(f"{path}: {len(patches)} patches but {len(labels)} labels")
    return patches, labels, meta


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
