"""Screening's batches: windows of many slices share fixed-size batches without changing a score or a
finding, the exact stage gives the same windows in any batching, and nothing compiles after the first
volume."""

import jax
import numpy as np
import pytest

from btd_jax import configs, score, screen
from btd_jax.screen import exact, proposals

from _volumes import StubScorer, planted_volume

CFG = configs.get("tiny")  # 16 px patches
KW = dict(center=8, stride=4, proposal_stride=8, top_k=100)


def _no_rank(fs):
    return [{k: v for k, v in f.items() if k != "rank"} for f in fs]


def test_batched_exact_scores_equal_per_slice_scores(tiny_scorer):
    """One volume in batches of 16 windows shared by its slices vs each slice alone: the same windows,
    scores equal to float tolerance, the same findings; every finding's score is the window's own
    BTD score."""
    vol, box = planted_volume(shape=(4, 48, 48))
    whole = screen.screen_volume(tiny_scorer, vol, batch_size=16, **KW)
    alone = [screen.screen_volume(tiny_scorer, v, batch_size=16, **KW) for v in vol]
    assert whole.work["exact_windows"] == sum(r.work["exact_windows"] for r in alone)
    assert whole.work["padded_windows"] < sum(r.work["padded_windows"] for r in alone)  # slices fill batches
    for s, r in enumerate(alone):
        mine = [f for f in whole.findings if f["slice"] == s]
        assert [(f["row"], f["col"]) for f in mine] == [(f["row"], f["col"]) for f in r.findings]
        np.testing.assert_allclose([f["score"] for f in mine], [f["score"] for f in r.findings], rtol=1e-6)
        np.testing.assert_allclose(whole.suspicion[s], r.suspicion[0], rtol=1e-5, atol=1e-8)
    top = whole.findings[0]
    r0, c0, p = top["window"]
    assert top["score"] == pytest.approx(float(tiny_scorer.score(vol[top["slice"], None, r0:r0 + p, c0:c0 + p],
                                                                 center=8)[0]), rel=1e-5)


def test_findings_do_not_depend_on_the_batch_size():
    vol, box = planted_volume(shape=(5, 48, 48))
    runs = [screen.screen_volume(StubScorer(CFG), vol, batch_size=b, shortlist=3, **KW) for b in (1, 7, 64)]
    assert _no_rank(runs[0].findings) == _no_rank(runs[1].findings) == _no_rank(runs[2].findings)
    assert box[runs[0].findings[0]["row"], runs[0].findings[0]["col"]] and runs[0].findings[0]["slice"] == 1
    assert runs[0].work["padded_windows"] == 0 and runs[2].work["batches"] < runs[1].work["batches"]


def test_exact_search_in_any_batching_scores_the_same_windows():
    """Keys taken a few at a time and scores delivered out of order, several slices interleaved:
    the same windows and scores as round-by-round search."""
    rng = np.random.default_rng(0)
    field = rng.standard_normal((3, 12, 12)).cumsum(1).cumsum(2)  # smooth-ish: climbs of several moves
    score_fn = lambda keys: np.array([field[k] for k in keys])  # noqa: E731
    grid = (np.arange(12) * 4, np.arange(12) * 4)
    cands = [(s, int(i), int(j), 0.0) for s in range(3) for i, j in rng.integers(0, 12, (3, 2))]
    for cas in (screen.Cascade(per_slice=2), screen.Cascade(per_slice=1, shortlist=3, max_climb=3)):
        want = exact.search(score_fn, cands, grid, cas)
        ex = exact.ExactSearch(cas, 12, 12)
        for s in range(3):
            ex.add_slice(s, [(i, j) for t, i, j, _ in cands if t == s])
        flight = []
        while ex.queued or flight:
            flight += [[k] for k in ex.take(int(rng.integers(1, 5)))]
            for _ in range(int(rng.integers(1, len(flight) + 1))):
                (k,) = flight.pop(int(rng.integers(len(flight))))
                ex.deliver([k], score_fn([k]))
        assert ex.done == want and len(want) > 9 * 3


def test_no_recompilation_after_the_first_volume(tiny_scorer):
    """One compiled batch shape per stage: the first volume traces the scoring function (a batch size
    no other test uses) and the whole-slice function; volumes of other lengths and sizes do not."""
    kw = dict(center=8, stride=4, batch_size=24)
    vol, _ = planted_volume()
    s0, f0 = score.trace_count(), proposals.fullconv_trace_count()
    screen.screen_volume(tiny_scorer, vol, proposal_stride=8, **kw)
    screen.screen_volume(tiny_scorer, vol, proposal="fullconv", **kw)
    s1, f1 = score.trace_count(), proposals.fullconv_trace_count()
    assert s1 == s0 + 1 and f1 >= f0  # the whole-slice function may have been compiled by another test
    for shape in [(6, 48, 48), (1, 48, 48), (2, 40, 72)]:
        v = planted_volume(shape=shape, slice_=0)[0]
        screen.screen_volume(tiny_scorer, v, proposal_stride=8, shortlist=3, **kw)
        screen.screen_volume(tiny_scorer, v, proposal_stride=8, proposal_scale=2, **kw)
    for n in (2, 7):  # the whole-slice pass compiles per slice size, never per volume length
        screen.screen_volume(tiny_scorer, planted_volume(shape=(n, 48, 48))[0], proposal="fullconv", **kw)
    assert (score.trace_count(), proposals.fullconv_trace_count()) == (s1, max(f1, f0 + 1))


def test_noisy_scores_do_not_depend_on_the_batch(tiny_scorer):
    """With d > 1 every window draws its noise from its own id, not from its place in a batch."""
    x = planted_volume()[0][:, :16, :16]
    kw = dict(key=jax.random.key(3), steps=2, center=8)
    chunks = tiny_scorer.fixed_chunks(8, **kw)
    ids = np.array([5, 900, 7])
    one = np.concatenate([chunks.submit(x[i:i + 1], ids[i:i + 1])().scores for i in range(3)])
    np.testing.assert_allclose(chunks.submit(x[::-1], ids[::-1])().scores[::-1], one, rtol=1e-6)
    other = chunks.submit(x, ids + 1)().scores
    assert not np.allclose(other, one, rtol=1e-6)


def test_shrunk_proposal_map():
    img = np.arange(5 * 7, dtype=np.float32).reshape(5, 7) / 35
    small = proposals.shrink(img, 2, least=4)
    assert small.shape == (4, 4) and small[0, 0] == pytest.approx(img[:2, :2].mean())
    assert small[2, 3] == pytest.approx(img[4, 6] / 4)  # zero-padded edge block
    big = proposals.enlarge(small, 2, img.shape)
    assert big.shape == img.shape and big[1, 1] == small[0, 0] and big[4, 6] == small[2, 3]
    vol, box = planted_volume(shape=(2, 64, 64), centre=(40, 20))
    res = screen.screen_volume(StubScorer(CFG), vol, proposal_scale=2, **KW)
    one = screen.screen_volume(StubScorer(CFG), vol, **KW)
    # the windows over the pixels some exact window's centre covers: 3 x 3 at half size, 6 x 6 at full
    assert res.work["proposal_windows"] == 2 * 3 * 3 and one.work["proposal_windows"] == 2 * 6 * 6
    assert res.suspicion.shape == vol.shape
    with pytest.raises(ValueError, match="proposal_scale"):
        screen.Cascade(proposal_scale=0)
