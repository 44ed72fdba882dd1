"""Evaluation files: the labelled sets read (:func:`load_eval_set`), Table-1 markdown, CSV/JSON writers,
per-sample score CSVs (written and read back; ``btd-jax score`` writes the same format).

:mod:`btd_jax.evaluate` re-exports every name here, so the evaluation maths and the file formats
stay apart; figures are in :mod:`btd_jax.plots`.
"""

from __future__ import annotations

import csv
import json
import os
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from btd_jax.data import datasets, validate
from btd_jax.data.errors import DataError
from btd_jax.data.validate import read_csv
from btd_jax.metrics import parse_labels
from btd_jax.runtime.atomic import atomic_open

__all__ = ["table1_markdown", "write_markdown", "write_csv", "write_json", "write_all", "write_scores_csv",
           "read_scores_csv", "load_eval_set"]


# ----------------------------------------------------------------------------- writers

_COLUMNS = ["dataset", "method", "reduction", "n_real", "n_fake", "auc", "eer", "eer_threshold",
            "auc_mean", "auc_std", "auc_ci_low", "auc_ci_high", "eer_mean", "eer_std", "eer_ci_low", "eer_ci_high",
            "n_boot", "seed", "samples_per_draw", "groups", "skipped_groups"]


def table1_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The paper's Table 1 layout: one line per (method, reduction), AUC block then EER block, bootstrap means."""
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    lines_keys = list(dict.fromkeys((r["method"], r["reduction"]) for r in rows))
    cell = {(r["method"], r["reduction"], r["dataset"]): r for r in rows}
    head = ["method", "reduction"] + [f"AUC {d}" for d in datasets] + [f"EER {d}" for d in datasets]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, red in lines_keys:
        vals = []
        for metric in ("auc_mean", "eer_mean"):
            for d in datasets:
                r = cell.get((m, red, d))
                vals.append("-" if r is None else f"{r[metric]:.2f}")
        out.append("| " + " | ".join([m, red] + vals) + " |")
    return "\n".join(out)


def write_markdown(rows: Sequence[Mapping[str, Any]], path: str, title: str = "BTD evaluation") -> str:
    n_boot = rows[0]["n_boot"] if rows else 0
    parts = [f"# {title}", "",
             f"Scanner-balanced bootstrap means over {n_boot} iterations (paper section 4), Table-1 layout:", "",
             table1_markdown(rows), "", "Details (point estimate on all samples; bootstrap mean ± std [95% CI]):", "",
             "| dataset | method | reduction | real | fake | AUC | AUC boot | EER | EER boot | EER threshold |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        parts.append(
            f"| {r['dataset']} | {r['method']} | {r['reduction']} | {r['n_real']} | {r['n_fake']} | {r['auc']:.4f} | "
            f"{r['auc_mean']:.4f} ± {r['auc_std']:.4f} [{r['auc_ci_low']:.4f}, {r['auc_ci_high']:.4f}] | "
            f"{r['eer']:.4f} | {r['eer_mean']:.4f} ± {r['eer_std']:.4f} [{r['eer_ci_low']:.4f}, {r['eer_ci_high']:.4f}] | "
            f"{r['eer_threshold']:.6g} |")
    skipped = [f"{r['dataset']}/{r['reduction']}: {r['skipped_groups']}" for r in rows if r["skipped_groups"]]
    if skipped:
        parts += ["", "Scanners skipped by the bootstrap (only one class): " + "; ".join(skipped)]
    with atomic_open(path) as f:
        f.write("\n".join(parts) + "\n")
    return path


def write_csv(rows: Sequence[Mapping[str, Any]], path: str) -> str:
    with atomic_open(path, newline="") as f:
        w = csv.DictWriter(f, fieldnames=_COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


def write_json(rows: Sequence[Mapping[str, Any]], path: str, **extra: Any) -> str:
    with atomic_open(path) as f:
        json.dump({"rows": [{k: r[k] for k in _COLUMNS if k in r} for r in rows], **extra}, f, indent=2)
    return path


def write_all(rows: Sequence[Mapping[str, Any]], out_dir: str, **extra: Any) -> Dict[str, str]:
    """results.md, results.csv and results.json in ``out_dir`` (created)."""
    os.makedirs(out_dir, exist_ok=True)
    return {"markdown": write_markdown(rows, os.path.join(out_dir, "results.md")),
            "csv": write_csv(rows, os.path.join(out_dir, "results.csv")),
            "json": write_json(rows, os.path.join(out_dir, "results.json"), **extra)}


def write_scores_csv(path: str, labels: Optional[Any], scores: Union[Any, Mapping[str, Any]],
                     metadata: Optional[Mapping[str, Any]] = None) -> str:
    """Per-sample scores, re-readable by :func:`read_scores_csv`: ``id``, then ``score`` (one (N,) array)
    or ``score_<name>`` per entry of a mapping {name: (N,)}, ``label`` (unless ``labels`` is None), then
    every ``metadata`` column (N values each). Scores are written exactly (``repr``)."""
    named = dict(scores) if isinstance(scores, Mapping) else {None: scores}
    cols = {("score" if k is None else f"score_{k}"): np.asarray(v, np.float64) for k, v in named.items()}
    n = len(next(iter(cols.values())))
    meta = {k: np.asarray(v) for k, v in (metadata or {}).items()
            if v is not None and k not in ("id", "index", "label") and k not in cols}
    for k, v in meta.items():
        if len(v) != n:
            raise DataError(f"{path}: metadata column {k!r} has {len(v)} values for {n} scores")
    with atomic_open(path, newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", *cols, *(["label"] if labels is not None else []), *meta])
        for i in range(n):
            w.writerow([i, *[repr(float(c[i])) for c in cols.values()],
                        *([int(labels[i])] if labels is not None else []), *[meta[k][i] for k in meta]])
    return path


def read_scores_csv(path: str) -> Tuple[np.ndarray, Dict[str, np.ndarray], Dict[str, np.ndarray]]:
    """Reads a scored CSV -> (labels (N,) int8, {reduction: (N,)}, metadata {'scanner', 'method'}).

    Needs a ``label`` column and a ``score`` column or ``score_<reduction>`` columns (``score`` alone
    is reduction 'score'); every other column (e.g. ``scanner``, ``method``, ``size``) comes back in
    the metadata as strings.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such scores file")
    cols, data = read_csv(path)
    if "label" not in cols:
        raise DataError(f"{path}: no 'label' column (columns: {', '.join(cols) or 'none'})")
    score_cols = [c for c in cols if c == "score" or c.startswith("score_")]
    if not score_cols:
        raise DataError(f"{path}: no 'score' or 'score_<reduction>' column (columns: {', '.join(cols)})")
    if not data:
        raise DataError(f"{path}: no rows")
    labels = parse_labels([r["label"] for r in data], source=path)
    scores = {}
    for c in score_cols:
        try:
            scores[c if c == "score" else c[len("score_"):]] = np.asarray([float(r[c]) for r in data])
        except (TypeError, ValueError) as e:
            raise DataError(f"{path}: column {c!r} has a non-numeric value ({e})") from None
    meta = {k: np.asarray([r[k] for r in data]) for k in cols if k not in score_cols and k not in ("label", "index", "id")}
    return labels, scores, meta


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
