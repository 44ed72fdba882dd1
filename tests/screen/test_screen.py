"""Whole-scan screening: the cascade finds a planted tamper, agrees with exhaustive search, reports mm."""

import json

import numpy as np
import pytest

from btd_jax import calibration, configs, localize, screen
from btd_jax.screen import exact
from btd_jax.data import readers
from btd_jax.data.errors import DataError

from _volumes import StubScorer, planted_volume, write_series

CFG = configs.get("tiny")  # 16 px patches


@pytest.fixture
def scorer(tiny_scorer):
    return tiny_scorer


def test_cascade_finds_planted_tamper_and_matches_exhaustive_top1():
    vol, box = planted_volume()
    stub = StubScorer(CFG)
    res = screen.screen_volume(stub, vol, top_k=3, center=8, stride=4)
    top = res.findings[0]
    assert top["slice"] == 1 and box[top["row"], top["col"]]
    exhaustive = [localize.localize_slice(stub, v, stride=4, center=8, top_k=1).top[0] for v in vol]
    best = max(range(3), key=lambda s: exhaustive[s]["score"])
    assert (best, exhaustive[best]["row"], exhaustive[best]["col"]) == (top["slice"], top["row"], top["col"])
    assert top["score"] == pytest.approx(exhaustive[best]["score"], rel=1e-6)
    # far less exact work than the 3 x 9 x 9 exhaustive windows
    assert res.work["proposal_windows"] == 3 * 9 and res.work["exact_windows"] <= 6 * 9
    assert res.suspicion.shape == vol.shape and res.slice_scores.argmax() == 1
    assert [f["rank"] for f in res.findings] == [1, 2, 3]


def test_exact_budget_is_per_slice_unless_capped():
    """Without a cap each slice sends ``per_slice`` candidates (and their grid neighbours) to the exact
    stage, so a slice's findings do not depend on the other slices; a cap keeps the volume's best."""
    vol, _ = planted_volume()
    stub = StubScorer(CFG)
    free = screen.screen_volume(stub, vol, top_k=20, center=8, stride=4, per_slice=1, refine=0)
    assert free.work["candidates"] == free.work["exact_windows"] == 3
    alone = screen.screen_volume(stub, vol[:1], top_k=20, center=8, stride=4, per_slice=1, refine=0)
    drop_rank = lambda fs: [{k: v for k, v in f.items() if k != "rank"} for f in fs]  # noqa: E731
    assert drop_rank(f for f in free.findings if f["slice"] == 0) == drop_rank(alone.findings)
    capped = screen.screen_volume(stub, vol, top_k=20, center=8, stride=4, per_slice=1, refine=0, max_candidates=1)
    assert capped.work["exact_windows"] == 1 and capped.findings[0] == free.findings[0]
    with pytest.raises(ValueError, match="max_candidates"):
        screen.Cascade(max_candidates=0)


def test_tissue_fraction_matches_brute_force():
    img = np.random.default_rng(0).uniform(size=(20, 24)).astype(np.float32)
    rows, cols = np.array([0, 3, 12]), np.array([0, 16, 5])
    want = [(img[r:r + 8, c:c + 8] > 0.3).mean() for r, c in zip(rows, cols)]
    np.testing.assert_allclose(screen.tissue_fraction(img, rows, cols, 8, 0.3), want, rtol=1e-12)


def test_real_scorer_both_proposals(scorer):
    """The real U-Net (random init, tiny): findings carry the exact BTD score of their window; the
    whole-slice pass already points at the tampered slice."""
    vol, box = planted_volume()
    for proposal in ("fullconv", "grid"):
        res = screen.screen_volume(scorer, vol, top_k=2, center=8, stride=4, proposal=proposal, proposal_stride=8)
        assert res.suspicion.shape == vol.shape and np.isfinite(res.suspicion).all()
        top = res.findings[0]
        r0, c0, p = top["window"]
        exact = scorer.score(vol[top["slice"]][None, r0:r0 + p, c0:c0 + p], center=8)
        assert top["score"] == pytest.approx(float(exact[0]), rel=1e-5)
        if proposal == "fullconv":
            assert top["slice"] == 1 and box[r0:r0 + p, c0:c0 + p].any()


def test_scan_level_calibration_decides():
    stub = StubScorer(CFG)
    reals = [planted_volume(seed=s)[0] * 0 + 0.5 + 0.01 * np.random.default_rng(s).standard_normal((3, 48, 48))
             for s in range(5)]
    reals = [np.clip(r, 0, 1).astype(np.float32) for r in reals]
    cal = screen.calibrate(stub, reals, target_fpr=0.2, center=8, stride=4)
    assert cal.meta["level"] == "scan" and cal.n == 5 and cal.center == 8
    fake = screen.screen_volume(stub, planted_volume()[0], center=8, stride=4, calibration=cal)
    assert fake.decision["flagged"] and fake.decision["p_value"] == pytest.approx(1 / 6)
    assert fake.findings[0]["p_value"] == pytest.approx(1 / 6)
    patch_level = calibration.fit([0.1, 0.2], target_fpr=0.5)
    with pytest.raises(ValueError, match="scan-level"):
        screen.screen_volume(stub, reals[0], calibration=patch_level)


def test_findings_carry_mm_and_sop_uid(tmp_path):
    paths, uids = write_series(tmp_path / "series", [10.0, 12.5, 15.0, 17.5])
    vol = readers.read_volume(tmp_path / "series", "CT")
    g = vol.geometry
    assert vol.pixels.shape == (4, 128, 128) and g.sop_instance_uids == tuple(uids)
    assert g.to_mm(2, 0, 0) == pytest.approx((-100.0, -80.0, 15.0))
    assert g.to_mm(0, 10, 20) == pytest.approx((-100.0 + 20 * 0.6, -80.0 + 10 * 0.7, 10.0))
    res = screen.screen_volume(StubScorer(CFG), vol.pixels, g, top_k=2, center=8, stride=8)
    f = res.findings[0]
    assert f["sop_instance_uid"] == uids[f["slice"]] and f["path"] == paths[f["slice"]]
    assert (f["x_mm"], f["y_mm"], f["z_mm"]) == pytest.approx(g.to_mm(f["slice"], f["row"], f["col"]), abs=1e-3)
    json.dumps(res.findings)  # plain JSON types


@pytest.mark.parametrize("z, match", [([0, 2, 4, 8, 10], "missing slice"),
                                      ([0, 2, 4, 6.6, 8.6], "inconsistent slice spacing")])
def test_bad_series_geometry(tmp_path, z, match):
    write_series(tmp_path / "s", z)
    with pytest.raises(DataError, match=match):
        readers.read_volume(tmp_path / "s", "CT")


def test_volume_smaller_than_patch(tmp_path):
    np.save(tmp_path / "small.npy", np.full((2, 12, 40), 0.5, np.float32))
    vol = readers.read_volume(tmp_path / "small.npy", units="unit")
    with pytest.raises(DataError, match="smaller than the model's 16x16 patch"):
        screen.screen_volume(StubScorer(CFG), vol.pixels, name=str(tmp_path / "small.npy"))
    with pytest.raises(DataError, match="outside \\[0, 1\\]"):
        screen.screen_volume(StubScorer(CFG), np.full((1, 20, 20), 2.0, np.float32))


def _bump_search(cas, cands, peak=(7, 7)):
    """Exact scores on a 10 x 10 grid of one slice: a single bump at ``peak``; counts the calls."""
    yy, xx = np.mgrid[:10, :10]
    field = -np.hypot(yy - peak[0], xx - peak[1])
    calls = []

    def score_fn(keys):
        calls.append(len(keys))
        return np.array([field[i, j] for _, i, j in keys])

    grid = (np.arange(10) * 4, np.arange(10) * 4)
    return exact.search(score_fn, cands, grid, cas), calls


def test_shortlist_reranks_by_exact_score_before_refining():
    """The approximate score put a decoy first; the exact scores of the shortlist pick the better
    candidate, and only its neighbourhood is refined."""
    cands = [(0, 0, 0, 9.0), (0, 6, 6, 8.0), (0, 2, 9, 7.0)]  # (slice, i, j, approximate score)
    done, calls = _bump_search(screen.Cascade(per_slice=1, shortlist=3, refine=1, climb=False), cands)
    assert calls[0] == 3 and len(done) == 3 + 8
    assert max(done, key=done.get) == (0, 7, 7)
    plain, _ = _bump_search(screen.Cascade(per_slice=1, refine=1, climb=False), cands[:1])
    assert max(plain, key=plain.get) == (0, 1, 1) and len(plain) == 4  # corner: 2 x 2 neighbourhood
    climbed, _ = _bump_search(screen.Cascade(per_slice=1, refine=1), cands[:1])  # climb is the default
    assert max(climbed, key=climbed.get) == (0, 7, 7)
    with pytest.raises(ValueError, match="shortlist"):
        screen.Cascade(per_slice=3, shortlist=2)


def test_climb_reaches_the_local_maximum_of_the_exact_score():
    cands = [(0, 1, 2, 1.0)]
    done, calls = _bump_search(screen.Cascade(per_slice=1, refine=1, climb=True), cands)
    assert max(done, key=done.get) == (0, 7, 7) and done[(0, 7, 7)] == 0.0
    assert len(done) < 100 and len(calls) >= 6  # one exact round per move, never the whole grid
    short, _ = _bump_search(screen.Cascade(per_slice=1, refine=1, climb=True, max_climb=2), cands)
    assert max(short, key=short.get) == (0, 4, 5)  # stopped after 2 moves: (1,2) -> (2,3) -> (3,4), scored (4,5)


def test_proposal_center_builds_the_map_from_window_centres():
    """With proposal_stride = proposal_center the centres of the proposal windows tile the slice:
    each pixel's map value is that of the one window it is central in."""
    vol, _ = planted_volume()
    stub = StubScorer(CFG)
    res = screen.screen_volume(stub, vol, top_k=1, center=8, stride=4, proposal_stride=8, proposal_center=8)
    for r0, c0 in [(0, 0), (8, 24), (32, 16)]:
        want = stub.residual_map(vol[1][None, r0:r0 + 16, c0:c0 + 16])[0, 4:12, 4:12]
        np.testing.assert_allclose(res.suspicion[1, r0 + 4:r0 + 12, c0 + 4:c0 + 12], want, rtol=1e-6)
    assert res.work["proposal_windows"] == 3 * 5 * 5
    with pytest.raises(ValueError, match="proposal_center"):
        screen.screen_volume(stub, vol, center=8, proposal_center=17)


def test_shortlist_and_climb_in_screen_volume_match_exhaustive_top1():
    vol, box = planted_volume()
    stub = StubScorer(CFG)
    res = screen.screen_volume(stub, vol, top_k=1, center=8, stride=4, proposal_stride=8, proposal_center=8,
                               shortlist=4, per_slice=1, climb=True)
    top = res.findings[0]
    best = max((localize.localize_slice(stub, v, stride=4, center=8, top_k=1).top[0] | {"slice": s}
                for s, v in enumerate(vol)), key=lambda f: f["score"])
    assert (top["slice"], top["row"], top["col"]) == (best["slice"], best["row"], best["col"])
    assert box[top["row"], top["col"]]
    assert res.work["candidates"] == 3 * 4 and res.work["exact_windows"] < 3 * 9 * 9
    assert res.settings["shortlist"] == 4 and res.settings["climb"] is True


@pytest.mark.parametrize("length,p,stride,margin", [(512, 96, 96, 32), (512, 96, 48, 32), (48, 16, 16, 4),
                                                    (100, 16, 16, 4), (96, 96, 96, 32), (61, 16, 8, 0)])
def test_span_positions_are_the_fewest_windows_that_cover_every_window_centre(length, p, stride, margin):
    pos = screen.proposals.span_positions(length, p, stride, margin)
    assert pos[0] >= 0 and pos[-1] + p <= length and np.all(np.diff(pos)[:-1] == stride)
    covered = np.zeros(length, bool)
    for r in pos:
        covered[r:r + p] = True
    assert covered[margin:length - margin].all()
    need = length - 2 * margin
    fewest = max(-(-(need - p) // stride), 0) + 1  # one fewer could not span ``need`` pixels
    whole = localize.window_positions(length, p, stride)
    assert len(pos) == fewest or (list(pos) == list(whole) and (fewest - 1) * stride + p > length)
    assert len(pos) <= len(whole)


def test_centres_span_scores_fewer_tiles_and_keeps_exhaustive_top1():
    """56 px slices, 16 px windows, centre 8: the centres (pixels 4..51) take 3 x 3 tiles, the whole
    slice 4 x 4 (the last flush with the edge), as 5 x 5 against 6 x 6 on 512 px slices at 96 / 32."""
    vol, box = planted_volume(shape=(3, 56, 56), centre=(30, 17))
    stub = StubScorer(CFG)
    centres = screen.screen_volume(stub, vol, top_k=1, center=8, stride=4)
    whole = screen.screen_volume(stub, vol, top_k=1, center=8, stride=4, proposal_span="slice")
    assert centres.settings["proposal_span"] == "centres" and whole.settings["proposal_span"] == "slice"
    assert centres.work["proposal_windows"] == 3 * 3 * 3 < whole.work["proposal_windows"] == 3 * 4 * 4
    best = max((localize.localize_slice(stub, v, stride=4, center=8, top_k=1).top[0] | {"slice": s}
                for s, v in enumerate(vol)), key=lambda f: f["score"])
    for res in (centres, whole):
        top = res.findings[0]
        assert (top["slice"], top["row"], top["col"]) == (best["slice"], best["row"], best["col"])
    with pytest.raises(ValueError, match="proposal_span"):
        screen.Cascade(proposal_span="edges")
