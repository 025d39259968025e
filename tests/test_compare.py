"""edgemerge/contracts/compare.py: the one comparison, its limits table, and the fair argmax judgement."""

import numpy as np
import pytest

from edgemerge.contracts import compare as C


def scores(seed=0, shape=(2, 5, 16, 16)):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def with_near_tie(ref: np.ndarray, gap: float) -> np.ndarray:
    """Pixel (0, 0, 0) gets a top-2 margin of `gap`; returns the reference."""
    ref = ref.copy()
    ref[0, :, 0, 0] = [3.0, 3.0 - gap, 0.0, -1.0, -2.0]
    return ref


def test_limits_side_by_side():
    assert C.limits_for("self-check", "fp32") == {"max_abs_rel_range": ("<=", 1e-4), "argmax_agreement": (">=", 1.0)}
    assert C.limits_for("artifact", "fp16")["argmax_agreement"] == (">=", 0.99)
    assert C.limits_for("artifact", "fp32", min_agreement=0.5)["argmax_agreement"] == (">=", 0.5)


def test_a_flip_under_the_near_tie_bound_passes_and_is_reported():
    """The Segmenter case: errors of ~1e-5, a pixel tied to 1.5e-5 takes the other class."""
    ref = with_near_tie(scores(), gap=1.5e-5)
    got = ref + np.float32(1e-5) * np.sign(np.random.default_rng(1).normal(size=ref.shape)).astype(np.float32)
    got[0, 0, 0, 0], got[0, 1, 0, 0] = ref[0, 0, 0, 0] - 1e-5, ref[0, 1, 0, 0] + 1e-5  # flips it
    assert got[0, :, 0, 0].argmax() != ref[0, :, 0, 0].argmax()
    result = C.compare(got, ref, "self-check", "fp32")
    assert result.passed, result.failures()
    ties = result.figures["near_ties"]
    assert ties["flipped"] == 1 and ties["largest_flipped_margin"] == pytest.approx(1.5e-5, rel=1e-2)
    assert result.figures["argmax_agreement"] == 1.0 and result.figures["argmax_agreement_all"] < 1.0


def test_a_flip_above_the_bound_fails_with_digits_and_counts():
    ref = with_near_tie(scores(), gap=0.5)
    got = ref.copy()
    got[0, 1, 0, 0] += 1.0  # a real error, far beyond rounding
    result = C.compare(got, ref, "self-check", "fp32")
    assert not result.passed
    msg = result.failures()
    n = result.figures["near_ties"]["decidable"]
    assert n > 500 and f"argmax_agreement = {1 - 1 / n:.6g}" in msg and f"1 of {n} decidable pixels differ" in msg


def test_a_planted_large_error_cannot_excuse_itself():
    """The bound is capped at the precision's share of the range: a broken artifact with big
    errors everywhere still fails on the pixels it flips."""
    ref = scores()
    got = ref + np.random.default_rng(2).normal(scale=2.0, size=ref.shape).astype(np.float32)
    for precision, profile in (("fp32", "artifact"), ("fp16", "artifact"), ("fp16", "self-check")):
        result = C.compare(got, ref, profile, precision)
        assert not result.passed
        assert result.figures["near_ties"]["bound"] <= C.NEAR_TIE_CAP[precision] * result.figures["range"]


def test_classifier_scores_are_judged_on_axis_1():
    ref = scores(shape=(4, 10))
    assert C.compare(ref.copy(), ref, "self-check", "fp32").figures["argmax_agreement"] == 1.0


def test_bad_limits():
    assert C.bad_limit(rtol=-1) and C.bad_limit(min_agreement=2) and C.bad_limit(atol=float("nan"))
    assert C.bad_limit(atol=0.1, rtol=0.1, min_agreement=0.9) is None


# ---- merge decisions ---------------------------------------------------------------------------
# Bipartite example: 10 tokens, sources 0..5, destinations 6..9, r = 2 (docs/ops.md's layout:
# kept sources take 0..3, destination d takes 4 + d, a merged source its destination's slot).
SRC, DST = tuple(range(6)), (6, 7, 8, 9)
ARGS = {"src": SRC, "dst": DST, "protect": 0}
WANT = np.array([[0, 1, 4, 2, 3, 5, 4, 5, 6, 7]])  # sources 2 -> 6 and 5 -> 7 merge
INF = (np.full((1, 10), np.inf), np.full((1, 10), np.inf))  # margins: no near-ties


def test_destinations_name_groups_not_slot_numbers():
    assert C.merge_destinations(WANT, "bipartite", DST).tolist() == [[-1, -1, 6, -1, -1, 7, -1, -1, -1, -1]]
    relabelled = np.array([[3, 2, 6, 1, 0, 7, 6, 7, 4, 5]])  # the same groups under other numbers
    assert (C.merge_destinations(relabelled, "bipartite", DST) == C.merge_destinations(WANT, "bipartite", DST)).all()
    two_dsts = np.array([[0, 1, 6, 2, 3, 4, 6, 6, 7, 8]])  # source 2 with destinations 6 and 7: no correct decision
    got = C.merge_destinations(two_dsts, "bipartite", DST)
    assert got[0, 2] == C.INVALID and (got[0, 6:8] == -1).all()
    no_dst = np.array([[0, 0, 1, 2, 3, 4, 5, 6, 7, 8]])  # two sources merge with no destination
    assert C.merge_destinations(no_dst, "bipartite", DST)[0, :2].tolist() == [C.INVALID, C.INVALID]
    out_of_range = WANT.copy()
    out_of_range[0, 0] = 8
    assert C.merge_destinations(out_of_range, "bipartite", DST, num_out=8)[0, 0] == C.INVALID
    window = np.array([[0, 2, 1, 2, 3, 2, 4, 2]])  # window tokens 1, 3, 5, 7 merged (slot 2)
    assert C.merge_destinations(window, "window").tolist() == [[-1, 1, -1, 1, -1, 1, -1, 1]]


def test_only_merging_tokens_are_judged():
    """One source swapped for another: 2 of the 3 merging tokens disagree, whatever the kept ones do."""
    got = np.array([[0, 1, 4, 2, 5, 3, 4, 5, 6, 7]])  # source 4 merges instead of source 5
    site = C.judge_site(got, WANT, "bipartite", 2, ARGS, INF, near_tie=1e-4)
    assert (site["merging"], site["same_destination"], site["near_ties_excused"]) == (3, 1, 0)
    assert site["merging_same_destination"] == pytest.approx(1 / 3)
    assert site["tokens_same_fate"] == pytest.approx(0.8)  # the token-level figure hides it
    assert C.judge_site(WANT, WANT, "bipartite", 2, ARGS, INF, 1e-4)["merging_same_destination"] == 1.0


def test_an_invalid_group_is_never_excused():
    """Two sources sharing a slot with no destination is no decision a correct op makes: a
    disagreement even where both were near-ties."""
    got = np.array([[0, 1, 4, 2, 4, 3, 5, 6, 7, 8]])  # sources 2 and 4 together, destination 6 alone
    near = (np.full((1, 10), 1e-9), np.full((1, 10), 1e-9))
    site = C.judge_site(got, WANT, "bipartite", 2, ARGS, near, near_tie=1e-4)
    assert site["merging_same_destination"] < 1.0


def test_a_near_tie_is_excused_only_within_the_bound():
    got = np.array([[0, 1, 4, 2, 5, 3, 4, 5, 6, 7]])
    sel = np.full((1, 10), 0.5)
    sel[0, [4, 5]] = 3e-5  # sources 4 and 5 were within 3e-5 of the threshold
    margins = (sel, np.full((1, 10), 0.5))
    tie = C.judge_site(got, WANT, "bipartite", 2, ARGS, margins, near_tie=1e-4)
    assert tie["near_ties_excused"] == 2 and tie["merging_same_destination"] == 1.0
    assert tie["largest_excused_margin"] == pytest.approx(3e-5)
    far = C.judge_site(got, WANT, "bipartite", 2, ARGS, margins, near_tie=1e-5)
    assert far["near_ties_excused"] == 0 and far["merging_same_destination"] == pytest.approx(1 / 3)
    # another destination for a source that merges in both: its partner margin decides
    other_dst = np.array([[0, 1, 5, 2, 3, 5, 4, 5, 6, 7]])  # source 2 -> 7 instead of 6
    partner = np.full((1, 10), 0.5)
    partner[0, 2] = 5e-5
    assert C.judge_site(other_dst, WANT, "bipartite", 2, ARGS, (np.full((1, 10), 0.5), partner),
                        1e-4)["merging_same_destination"] == 1.0
    assert C.judge_site(other_dst, WANT, "bipartite", 2, ARGS, (partner, np.full((1, 10), 0.5)),
                        1e-4)["merging_same_destination"] == pytest.approx(1 / 2)


def test_decision_margins_from_scores():
    """Sources 0..2 with best cosines 1, 0.6, 0.2 to one destination; r = 1: the threshold sits
    between 1 and 0.6 (at 0.8), so margins are 0.2, 0.2, 0.6; the destination's is inf."""
    metric = np.array([[[1.0, 0.0], [0.6, 0.8], [0.2, np.sqrt(1 - 0.04)], [1.0, 0.0]]])
    sel, partner = C.decision_margins(metric, "bipartite", 1, {"src": (0, 1, 2), "dst": (3,), "protect": 0})
    assert sel[0, :3] == pytest.approx([0.2, 0.2, 0.6]) and np.isinf(sel[0, 3])
    assert np.isinf(partner).all()  # one destination: no second choice
    sel, _ = C.decision_margins(metric, "bipartite", 1, {"src": (0, 1, 2), "dst": (3,), "protect": 1})
    assert np.isinf(sel[0, 0]) and sel[0, 1:3] == pytest.approx([0.2, 0.2])  # protected: 0.6 vs 0.2 -> 0.4


def test_window_margins_from_scores():
    """A 2x4 grid: window 0 all alike (score 1), window 1 a, b, b, a (4 of 6 pairs opposite: -1/3); k = 1:
    the threshold is 1/3, so each window's four tokens are 2/3 from it."""
    a, b = [1.0, 0.0], [-1.0, 0.0]
    metric = np.array([[a, a, a, b, a, a, b, a]], np.float64)  # row-major 2x4: windows (0,1,4,5), (2,3,6,7)
    sel, partner = C.decision_margins(metric, "window", 1, {"height": 2, "width": 4, "protect": 0})
    assert sel[0] == pytest.approx([2 / 3] * 8) and np.isinf(partner).all()


def test_worst_site_is_the_check():
    sites = [{"kind": "bipartite", "count": 2, "args": ARGS, "own": WANT, "margins": INF}] * 2
    got = [WANT, np.array([[0, 1, 4, 2, 5, 3, 4, 5, 6, 7]])]
    figures, rows = C.judge_decisions(sites, got, "fp32")
    assert figures["worst_site"] == 1 and not rows[0]["passed"]
    assert rows[0]["metric"] == "same_destination_worst"
    figures, rows = C.judge_decisions(sites, [WANT, WANT], "fp16")
    assert figures["same_destination_worst"] == 1.0 and rows[0]["passed"]
    _, rows = C.judge_decisions(sites, [WANT], "fp32")  # a site missing in the artifact
    assert not rows[0]["passed"]


def test_fp16_limits_catch_a_scale_that_cosine_cannot_see():
    """Logits x1.01: cosine 1, argmax unchanged; the rel. L2 bound alone fails it, in the export's
    self-check and in validate (the max-error bound is not needed to catch it)."""
    ref = scores(shape=(8, 10))
    for profile in ("self-check", "artifact"):
        judged = C.compare(ref * 1.01, ref, profile, "fp16")
        failed = {c["metric"] for c in judged.checks if not c["passed"]}
        assert "rel_l2" in failed and "cosine" not in failed and "argmax_agreement" not in failed, (profile, failed)
        assert C.compare(ref * (1 + 1e-4), ref, profile, "fp16").passed  # rounding-sized error passes


def test_a_margin_equal_to_the_bound_is_a_near_tie():
    """Pixel 0: margin 0.25; the error 0.125 makes the bound exactly 0.25 (2 x max error, under the
    fp16 cap of 1e-2 of the range 100): the flipped pixel is a near-tie, not a failure."""
    ref = np.array([[[[0.0, 0.0]], [[0.25, 100.0]]]])  # [1, 2 classes, 1, 2 pixels]
    got = ref.copy()
    got[0, 0, 0, 0] = 0.125
    got[0, 1, 0, 0] = 0.125  # the tie pixel now ties exactly: argmax flips to class 0
    fig = C.metrics(got, ref, "fp16")
    assert fig["near_ties"]["bound"] == 0.25 and fig["near_ties"]["flipped"] == 1
    assert fig["argmax_agreement"] == 1.0
