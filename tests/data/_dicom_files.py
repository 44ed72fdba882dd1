"""Helpers for the data tests: pydicom's shipped test files, never downloaded."""

import copy
from pathlib import Path

import numpy as np
import pytest


def shipped(name: str) -> str:
    """Path of a file shipped with pydicom or pydicom-data; skips the test when absent.

    ``download=False``: pydicom would otherwise try the network (and retry for minutes offline).
    """
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} is not installed (pydicom / pydicom-data)")
    return path


def write_ct_series(folder: Path, z_order, name="f", series_uid=None, patient=None,
                    drop_position=False):
    """Copies of CT_small.dcm at slice positions ``z_order`` (mm / 5), pixel [0, 0] marked with z.

    InstanceNumber runs against the position so that sorting by it would give another order.
    Returns the written paths.
    """
    import pydicom

    folder.mkdir(parents=True, exist_ok=True)
    ds = pydicom.dcmread(shipped("CT_small.dcm"))
    paths = []
    for k, z in enumerate(z_order):
        e = copy.deepcopy(ds)
        if drop_position:
            del e.ImagePositionPatient
            e.InstanceNumber = int(z) + 1
        else:
            e.ImagePositionPatient = [-158.1, -179.0, 5.0 * float(z)]
            e.InstanceNumber = 100 - k
        if series_uid is not None:
            e.SeriesInstanceUID = series_uid
        if patient is not None:
            e.PatientID = patient
        arr = e.pixel_array.copy()
        arr[0, 0] = int(z)
        e.PixelData = arr.tobytes()
        p = folder / f"{name}{k}.dcm"
        e.save_as(p)
        paths.append(p)
    return paths


def stored_hu(path) -> np.ndarray:
    """Stored values * slope + intercept, computed independently of btd_jax."""
    import pydicom

    ds = pydicom.dcmread(path)
    return ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
