"""Whole-scan screening: where in a volume was it tampered with, without being told where.

The paper scores a patch around a known position; exhaustive :mod:`btd_jax.localize` scores every
window on a stride grid (729 windows of 96 px per 512x512 slice at stride 16). Screening is a
cascade that scores only where it matters:

1. **proposal** over every slice, cheap (:mod:`~btd_jax.screen.proposals`): ``'grid'`` cuts the
   slice into ``P x P`` windows at ``proposal_stride`` (default ``P``: tiles; laid over the pixels
   some exact window's centre covers, ``proposal_span``) and averages their residual maps (exact
   patch semantics, ~(P/stride)^2 fewer windows than exhaustive;
   ``proposal_stride = proposal_center = P/2`` takes each pixel from the one window it is central
   in, the most faithful map); ``'fullconv'`` runs the U-Net once over the whole slice at t = 0 (a
   proxy: GroupNorm and attention see the whole slice); ``proposal_scale`` shrinks the slice for
   either. Every window of the exact grid (``stride``, the grid exhaustive localisation uses) gets
   an approximate score: the map pooled over its central ``k x k``.
2. **candidates**: the best ``shortlist`` windows of each slice by the approximate score (non-max
   suppressed); optionally only the best ``max_candidates`` of the volume.
3. **exact BTD score** (the paper's patch score, :mod:`~btd_jax.screen.exact`): first of the
   shortlist, then of the grid neighbours within ``refine`` steps of the best ``per_slice`` of each
   slice; with ``climb`` the search moves to the best neighbour until each is a local maximum.
4. **findings**: exact-scored windows, non-max suppressed per slice, best first, with millimetre
   coordinates and SOPInstanceUID from the :class:`~btd_jax.data.readers.Geometry`; the **scan
   decision** compares the best score with a scan-level calibration (:func:`calibrate`: the best
   score of real scans, so its false-positive rate is per scan, not per window).

Both stages of every slice share full, fixed-size batches on every device, overlapped with the host
(:mod:`~btd_jax.screen.driver`). :func:`screen` (``btd-jax screen``) does it for scans on disk, with
their clinical outputs (:mod:`~btd_jax.screen.files`)::

    run = screen.screen("runs/ct", ["patient1/"], "out/")     # findings.json, suspicion.nii.gz, DICOM ...

    res = screen.screen_volume(scorer, vol.pixels, vol.geometry, top_k=5, calibration=cal)
    res.findings[0]    # {"slice", "row", "col", "score", "x_mm", "y_mm", "z_mm", "sop_instance_uid", ...}
    res.suspicion      # (S, H, W) proposal residual map
    res.decision       # {"score", "flagged", "threshold", "p_value", "target_fpr", "calibrated"}
"""

from btd_jax.screen.cascade import PROPOSALS, SPANS, Cascade
from btd_jax.screen.driver import calibrate, screen_volume
from btd_jax.screen.files import CALIBRATION_FILE, ScreenRun, screen
from btd_jax.screen.proposals import fullconv_residual, tissue_fraction, window_proxy
from btd_jax.screen.report import ScreenResult

__all__ = ["Cascade", "ScreenResult", "PROPOSALS", "SPANS", "screen_volume", "calibrate", "window_proxy",
           "fullconv_residual", "tissue_fraction", "screen", "ScreenRun", "CALIBRATION_FILE"]
