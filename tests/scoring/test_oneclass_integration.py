"""The one-class variant through the library's front doors: ``btd-jax score --fit_reference`` beside the
checkpoints, ``evaluate`` with its calibration, ``Scorer.decide`` and whole-scan screening."""

import json
import shutil

import numpy as np
import pytest
from scipy import ndimage as ndi

from btd_jax import calibration, cli, configs, evaluate, screen
from btd_jax.data import write_testset
from btd_jax.data.errors import DataError
from btd_jax.score import Scorer
from btd_jax.scoring import variants
from btd_jax.screen import variant as screen_variant

CFG = configs.get("tiny")
SIZE = CFG.image_size


def _real(n, seed):
    rng = np.random.default_rng(seed)
    x = 0.45 + 0.15 * ndi.gaussian_filter(rng.standard_normal((n, SIZE, SIZE)), (0, 2, 2))
    return np.clip(x + 0.02 * rng.standard_normal(x.shape), 0, 1).astype(np.float32)


def _volume():
    """(3, 40, 40) smooth noisy slices, a smoothed-out square (a too-clean edit) on slice 1."""
    vol = _real(3 * 9, 7).reshape(3, 3, 3, SIZE, SIZE)[:, :, :, :14, :14].transpose(0, 1, 3, 2, 4).reshape(3, 42, 42)
    vol = vol[:, :40, :40].copy()
    vol[1, 10:22, 20:32] = ndi.gaussian_filter(vol[1], 3)[10:22, 20:32]
    return vol


@pytest.fixture
def workdir(tiny_workdir, tmp_path):
    """A copy of the tiny workdir: these tests write references and calibrations into it."""
    return shutil.copytree(tiny_workdir, tmp_path / "wd")


def _run(*argv):
    return cli._main(cli.build_parser().parse_args([*map(str, argv)]))


def _testset(root, n=6, seed=3):
    rng = np.random.default_rng(seed)
    items = [dict(image=rng.uniform(-700, 2000, size=(40, 40)), x=20, y=20, type="FM" if i % 2 else "TM",
                  methods=("CTGAN",) if i % 2 else (), scanner=f"S{(i // 2) % 2}") for i in range(n)]
    write_testset(root, "CT", "injection", items)
    return root


def test_score_fits_the_reference_beside_the_checkpoints_and_scores_with_it(workdir, tmp_path, capsys):
    x = _real(40, 0)
    np.save(tmp_path / "real.npy", x)
    assert _run("score", "--workdir", workdir, "--input", tmp_path / "real.npy", "--out", tmp_path / "fit.csv",
                "--variant", "oneclass", "--fit_reference") == 0
    ref_path = workdir / variants.get("oneclass").reference_file
    ref = variants.load_reference(str(ref_path))
    assert ref.variant == "oneclass" and ref.n == 40 and ref.features == variants.oneclass.DEFAULT_FEATURES
    y = _real(5, 1)
    np.save(tmp_path / "test.npy", y)
    assert _run("score", "--workdir", workdir, "--input", tmp_path / "test.npy", "--out", tmp_path / "s.csv",
                "--variant", "oneclass") == 0
    got = [float(line.split(",")[1]) for line in (tmp_path / "s.csv").read_text().splitlines()[1:]]
    want = Scorer.load(str(workdir)).score(y, variant="oneclass", reference=ref)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # the reference a run reads is one of its inputs: never its output, even with --overwrite
    before = ref_path.read_bytes()
    capsys.readouterr()
    assert _run("score", "--workdir", workdir, "--input", tmp_path / "test.npy", "--out", ref_path,
                "--variant", "oneclass", "--overwrite") == 2
    assert "it is the input" in capsys.readouterr().err and ref_path.read_bytes() == before
    # a test set holding fakes is no set of real patches: refused, one line, nothing written
    root = _testset(tmp_path / "ts")
    capsys.readouterr()
    assert _run("score", "--workdir", workdir, "--input", root, "--modality", "CT", "--attack", "injection",
                "--out", tmp_path / "bad.csv", "--variant", "oneclass", "--fit_reference",
                tmp_path / "bad_ref.json") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "REAL patches only" in err[0] and "3 patch(es) labelled fake" in err[0]
    assert not (tmp_path / "bad_ref.json").exists() and not (tmp_path / "bad.csv").exists()
    # --components picks the density when fitting; without fitting it has nothing to set
    assert ref.components == variants.oneclass.DEFAULT_COMPONENTS
    assert _run("score", "--workdir", workdir, "--input", tmp_path / "real.npy", "--out", tmp_path / "fit1.csv",
                "--variant", "oneclass", "--fit_reference", tmp_path / "one.json", "--components", "1") == 0
    one = variants.load_reference(str(tmp_path / "one.json"))
    assert one.components == 1 and not one.mixture and one.features == ref.features
    capsys.readouterr()
    assert _run("score", "--workdir", workdir, "--input", tmp_path / "test.npy", "--out", tmp_path / "s2.csv",
                "--variant", "oneclass", "--components", "2") == 2
    assert "needs --variant oneclass --fit_reference" in capsys.readouterr().err
    assert not (tmp_path / "s2.csv").exists()


def test_evaluate_and_calibrate_a_variant_then_decide_refuses_a_refitted_reference(workdir, tmp_path):
    scorer = Scorer.load(str(workdir))
    ref = variants.fit_variant_reference(scorer, _real(40, 0), "oneclass", scorer.settings())
    ref.save(str(workdir))
    np.save(tmp_path / "val.npy", _real(20, 2))
    done = evaluate.evaluate(scorer, str(_testset(tmp_path / "ts")), str(tmp_path / "ev"), modality="CT",
                             attack="injection", variant="oneclass", calibrate=str(tmp_path / "val.npy"),
                             n_boot=5, progress=False)
    assert set(done.scores) == {"oneclass"} and {r["reduction"] for r in done.rows} == {"oneclass"}
    assert all(0 <= r["auc"] <= 1 for r in done.rows)
    cal = calibration.Calibration.load(str(workdir))
    assert cal.variant == "oneclass" and cal.reference == calibration.reference_id(ref) and cal.n == 20
    saved = json.loads((workdir / calibration.FILENAME).read_text())
    assert saved["variant"] == "oneclass" and saved["reference"] == cal.reference
    y = _real(4, 5)
    scores, flagged, p = scorer.decide(y)
    np.testing.assert_allclose(scores, scorer.score(y, variant="oneclass", reference=ref), rtol=1e-6)
    assert flagged.dtype == bool and np.all((p > 0) & (p <= 1))
    variants.fit_variant_reference(scorer, _real(40, 9), "oneclass", scorer.settings()).save(str(workdir))
    with pytest.raises(DataError, match="recalibrate after refitting"):
        scorer.decide(y)


def test_screening_with_oneclass_scores_windows_as_the_patch_score_does(tiny_scorer):
    vol = _volume()
    ref = variants.fit_variant_reference(tiny_scorer, _real(40, 0), "oneclass", tiny_scorer.settings())
    res = screen.screen_volume(tiny_scorer, vol, top_k=3, stride=8, variant="oneclass", reference=ref)
    assert res.settings["variant"] == "oneclass" and res.findings
    for f in res.findings:
        r, c, p = f["window"]
        window = vol[f["slice"], r:r + p, c:c + p]
        want = tiny_scorer.score(window[None], variant="oneclass", reference=ref)[0]
        assert f["score"] == pytest.approx(want, rel=1e-4, abs=1e-4)
    # the proposal stage ranks windows by the same variant on the proposal map
    win = screen_variant.window_score(tiny_scorer, "oneclass", ref, None, None, "mean")
    rows, cols = np.array([0, 8]), np.array([8, 0])
    np.testing.assert_allclose(win.approx(res.suspicion[1], vol[1], rows, cols, SIZE),
                               win.exact(np.stack([vol[1, r:r + SIZE, c:c + SIZE] for r, c in zip(rows, cols)]),
                                         np.stack([res.suspicion[1, r:r + SIZE, c:c + SIZE]
                                                   for r, c in zip(rows, cols)])))
    # a scan-level calibration of oneclass scores decides; one of btd scores is refused
    cal = screen.calibrate(tiny_scorer, [vol[:1], vol[2:]], target_fpr=0.5, stride=8, variant="oneclass",
                           reference=ref)
    assert cal.variant == "oneclass" and cal.reference == calibration.reference_id(ref)
    again = screen.screen_volume(tiny_scorer, vol, stride=8, variant="oneclass", reference=ref, calibration=cal)
    assert again.decision["calibrated"] and again.findings[0]["score"] == pytest.approx(res.findings[0]["score"])
    btd_cal = screen.calibrate(tiny_scorer, [vol[:1]], target_fpr=0.5, stride=8)
    with pytest.raises(ValueError, match="fitted on btd scores, not oneclass"):
        screen.screen_volume(tiny_scorer, vol, stride=8, variant="oneclass", reference=ref, calibration=btd_cal)
    with pytest.raises(ValueError, match="cannot screen"):
        screen.screen_volume(tiny_scorer, vol, stride=8, variant="multi_t")
