"""Small synthetic volumes and DICOM series for the screening tests."""

import copy
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi


def planted_volume(shape=(3, 48, 48), slice_=1, centre=(30, 17), half=3, seed=0):
    """Smooth noisy background in [0, 1] with a checkerboard square (the tamper) at ``centre``."""
    rng = np.random.default_rng(seed)
    s, h, w = shape
    vol = 0.45 + 0.1 * ndi.gaussian_filter(rng.standard_normal(shape), 3) + 0.01 * rng.standard_normal(shape)
    yy, xx = np.mgrid[:h, :w]
    box = (np.abs(yy - centre[0]) <= half) & (np.abs(xx - centre[1]) <= half)
    vol[slice_][box] = (0.15 + 0.7 * ((yy + xx) % 2))[box]
    return np.clip(vol, 0, 1).astype(np.float32), box


class StubScorer:
    """A stand-in with the Scorer's screening interface whose residual is the local high-frequency
    energy (x - 3x3 mean)^2 of each window: the tamper is known, so the cascade logic is checked exactly."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.calls = []

    def residual_map(self, windows, steps=1, batch_size=None, **kw):
        w = np.asarray(windows, np.float64)
        self.calls.append(len(w))
        return np.stack([(x - ndi.uniform_filter(x, 3, mode="reflect")) ** 2 for x in w]).astype(np.float32)

    def score(self, windows, steps=1, center=None, reduction="mean", batch_size=None, **kw):
        m = self.residual_map(windows)
        p = m.shape[-1]
        k = p if center is None else center
        o = (p - k) // 2
        return m[:, o:o + k, o:o + k].reshape(len(m), -1).mean(axis=1)


def quick_params(cfg, seed=0):
    """Random float32 parameters of the right shapes without compiling the model's init."""
    import jax

    from btd_jax.models.unet import abstract_params

    rng = np.random.default_rng(seed)
    shapes = abstract_params(cfg.model)
    return jax.tree.map(lambda a: (0.2 * rng.standard_normal(a.shape)).astype(np.float32), shapes)


def _shipped_ct():
    from pydicom.data import get_testdata_file

    path = get_testdata_file("CT_small.dcm", download=False)
    if path is None:
        pytest.skip("CT_small.dcm is not installed (pydicom-data)")
    return path


def write_series(folder: Path, z_positions, spacing=(0.7, 0.6)):
    """Copies of CT_small.dcm (128 x 128) at ``z_positions`` mm, each with its own SOPInstanceUID,
    one series; returns (paths, SOPInstanceUIDs) in the given order."""
    import pydicom
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    ds = pydicom.dcmread(_shipped_ct())
    series, study, frame = generate_uid(), generate_uid(), generate_uid()
    paths, uids = [], []
    for k, z in enumerate(z_positions):
        e = copy.deepcopy(ds)
        e.SOPInstanceUID = e.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        e.SeriesInstanceUID, e.StudyInstanceUID, e.FrameOfReferenceUID = series, study, frame
        e.ImagePositionPatient = [-100.0, -80.0, float(z)]
        e.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        e.PixelSpacing = list(spacing)
        e.InstanceNumber = k + 1
        p = folder / f"s{k:03d}.dcm"
        e.save_as(p)
        paths.append(str(p))
        uids.append(e.SOPInstanceUID)
    return paths, uids
