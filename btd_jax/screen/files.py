"""Screening scans on disk end to end (``btd-jax screen``): read each input with its format, screen it,
write the findings and the clinical outputs; or, with ``calibrate``, fit the scan-level calibration.

    run = screen.screen("runs/ct", ["patient1/"], "out/")          # findings.json, suspicion.nii.gz, ...
    run = screen.screen("runs/ct", real_scans, calibrate=True)      # WORKDIR/screen_calibration.json

Outputs of one volume (:data:`FILES`): ``findings.json``/``findings.csv``, ``suspicion.npy``,
``suspicion.nii.gz`` (with nibabel), for DICOM input ``dicom/suspicion_pm.dcm`` (with highdicom) and
``dicom/sc/`` (Secondary Captures of the slices with findings), ``overlays/*.png`` and ``skipped.csv``
(items left out with ``strict=False``). Several inputs get one numbered subfolder each.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, List, Optional, Sequence, Union

import jax
import numpy as np

from btd_jax import calibration as calib
from btd_jax import clinical_io
from btd_jax.data.errors import DataError, MissingInput
from btd_jax.data.readers import Format, Volume, read_volume
from btd_jax.runtime.atomic import save_npy
from btd_jax.runtime.outputs import skipped_path, write_skipped
from btd_jax.scoring.scorer import Scorer, as_scorer
from btd_jax.screen.cascade import Cascade
from btd_jax.screen.driver import calibrate as calibrate_volumes
from btd_jax.screen.driver import screen_volume
from btd_jax.screen.report import ScreenResult

__all__ = ["CALIBRATION_FILE", "FILES", "Screened", "ScreenRun", "output_folders", "calibration_path",
           "write_outputs", "screen"]

CALIBRATION_FILE = "screen_calibration.json"
# The files of one screened volume (``dicom/`` only for DICOM input, ``suspicion.nii.gz`` with nibabel).
FILES = ("findings.json", "findings.csv", "suspicion.npy", "suspicion.nii.gz", "skipped.csv",
         os.path.join("dicom", "suspicion_pm.dcm"))


@dataclasses.dataclass
class Screened:
    """One screened input: its volume, the result and the paths written."""

    volume: Volume
    result: ScreenResult
    paths: Dict[str, Any]


@dataclasses.dataclass
class ScreenRun:
    """What :func:`screen` did: ``screened`` (one per input), or with ``calibrate`` the fitted
    ``calibration`` and where it went; ``skipped``: items left out of the inputs (lenient)."""

    screened: List[Screened]
    calibration: Optional[calib.Calibration] = None
    calibration_path: Optional[str] = None
    skipped: List[Any] = dataclasses.field(default_factory=list)


def output_folders(out: str, n: int) -> List[str]:
    """The output folder of each of ``n`` inputs: ``out`` itself, or one numbered subfolder each."""
    return [out] if n == 1 else [os.path.join(out, f"{i:03d}") for i in range(n)]


def calibration_path(workdir: Optional[str], path: Optional[str] = None) -> Optional[str]:
    """``path``, or the workdir's :data:`CALIBRATION_FILE`."""
    return path or (os.path.join(workdir, CALIBRATION_FILE) if workdir else None)


def write_outputs(out: str, vol: Volume, res: ScreenResult, report: dict, dicom: bool = True) -> dict:
    """Everything :mod:`btd_jax.clinical_io` can write for one screened volume; returns the paths."""
    paths: Dict[str, Any] = {"suspicion_npy": save_npy(os.path.join(out, "suspicion.npy"), res.suspicion)}
    notes = []
    try:
        paths["nifti"] = clinical_io.write_nifti(os.path.join(out, "suspicion.nii.gz"), res.suspicion, vol.geometry)
    except DataError as e:
        notes.append(str(e))
    vmax = float(np.percentile(res.suspicion, 99.5)) if res.suspicion.size else 1.0
    slices = list(dict.fromkeys(f["slice"] for f in res.findings))
    rgbs = []
    for s in slices:
        boxes = [f["window"] for f in res.findings if f["slice"] == s]
        rgbs.append(clinical_io.overlay_rgb(vol.pixels[s], res.suspicion[s], vmax, boxes))
    paths["overlays"] = [clinical_io.write_png(os.path.join(out, "overlays", f"slice_{s:04d}.png"), r)
                         for s, r in zip(slices, rgbs)]
    g = vol.geometry
    if dicom and g is not None and g.sop_instance_uids is not None:
        try:
            paths["parametric_map"] = clinical_io.write_parametric_map(
                os.path.join(out, "dicom", "suspicion_pm.dcm"), res.suspicion, g)
        except DataError as e:
            notes.append(str(e))
        if slices:
            paths["secondary_captures"] = clinical_io.write_secondary_captures(
                os.path.join(out, "dicom", "sc"), np.stack(rgbs), slices, g)
    paths.update(clinical_io.write_findings(out, res.findings, {**report, "outputs": paths, "notes": notes}))
    return paths


def _report(scorer: Scorer, vol: Volume, res: ScreenResult) -> dict:
    g = vol.geometry
    return {"input": os.path.abspath(vol.source),
            "workdir": os.path.abspath(scorer.workdir) if scorer.workdir else None,
            "config": scorer.cfg.name, "dtype": scorer.cfg.model.dtype, "shape": list(vol.pixels.shape),
            "coordinates": "DICOM patient (LPS), mm" if g is not None else None,
            "series_uid": g.series_uid if g is not None else None,
            "decision": res.decision, "settings": res.settings, "work": res.work}


def screen(model: Union[Scorer, str, "os.PathLike[str]"], inputs: Union[str, Sequence[str]], out: Optional[str] = None,
           *, calibrate: bool = False, calibration: Union[None, str, calib.Calibration] = None,
           target_fpr: float = 0.1, units: str = "raw", series_uid: Optional[str] = None,
           fmt: Union[str, Format] = "auto", top_k: int = 10, center: Optional[int] = None,
           steps: Optional[int] = None, reduction: Optional[str] = None, batch_size: Optional[int] = None,
           seed: int = 0, dicom: bool = True, strict: bool = True, dtype: Optional[str] = None,
           variant: str = "btd", reference: Any = None, cascade: Optional[Cascade] = None,
           **cascade_kw: Any) -> ScreenRun:
    """Screens every scan of ``inputs`` (any format with volumes: DICOM series, NIfTI, a slice store's
    series, ``.npy``) with the model ``model`` (a :class:`Scorer` or a workdir) and writes each one's
    outputs under ``out`` (see the module doc).

    The scan decision uses ``calibration`` (a :class:`~btd_jax.calibration.Calibration` or its file;
    default the workdir's :data:`CALIBRATION_FILE` when it exists). ``calibrate``: the inputs are
    real scans; fit the scan-level calibration at ``target_fpr`` false positives per scan and save it
    to ``calibration`` (default the workdir's file) instead of writing outputs. ``units``: 'raw' (HU,
    scanner values) or 'unit' (already [0, 1]); ``center``/``steps``/``reduction``/``batch_size``/
    ``top_k`` and ``cascade``/``cascade_kw``: as :func:`~btd_jax.screen.screen_volume` (``center=0``:
    the whole window); ``variant``/``reference``: the window score (a score variant that screens,
    e.g. 'oneclass' with the workdir's fitted reference; the calibration must be of the same);
    ``seed``: the noise key when ``steps > 1``; ``dtype``: compute dtype;
    ``strict=False``: skip unreadable files and list them (``skipped.csv``).
    """
    scorer = as_scorer(model, dtype)
    inputs = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    kw = dict(center=center, steps=steps, reduction=reduction, batch_size=batch_size, cascade=cascade,
              variant=variant, reference=reference, **cascade_kw)
    if (steps or 1) > 1:
        kw["key"] = jax.random.key(seed)
    vols = [read_volume(p, scorer.cfg.modality, units, series_uid, strict=strict, fmt=fmt) for p in inputs]
    skipped = [s for v in vols for s in v.skipped]
    if calibrate:
        path = calibration_path(scorer.workdir, calibration if isinstance(calibration, str) else None)
        if path is None:
            raise ValueError("calibrate needs a calibration path (the model is not a workdir)")
        write_skipped(skipped_path(path), skipped)
        cal = calibrate_volumes(scorer, [v.pixels for v in vols], target_fpr=target_fpr, top_k=1, **kw)
        return ScreenRun([], cal, cal.save(path), skipped)
    if out is None:
        raise ValueError("screen needs an output folder (out) unless it calibrates")
    cal = calibration
    if cal is None or isinstance(cal, (str, os.PathLike)):
        path = calibration_path(scorer.workdir, cal)
        if cal is not None and not os.path.isfile(path):
            raise MissingInput(f"{cal}: no such calibration file")
        cal = calib.Calibration.load(path) if path and os.path.exists(path) else None
    done = []
    for folder, vol in zip(output_folders(out, len(vols)), vols):
        write_skipped(os.path.join(folder, "skipped.csv"), vol.skipped)
        res = screen_volume(scorer, vol.pixels, vol.geometry, top_k=top_k, calibration=cal, name=vol.source, **kw)
        done.append(Screened(vol, res, write_outputs(folder, vol, res, _report(scorer, vol, res), dicom=dicom)))
    return ScreenRun(done, skipped=skipped)
