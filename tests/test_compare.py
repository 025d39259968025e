"""edgemerge/compare.py: the one comparison, its limits table, and the fair argmax judgement."""

import numpy as np
import pytest

from edgemerge import compare as C


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


def test_merge_decisions_are_compared_by_fate():
    """One near-tie swaps which source merges (bipartite: 6 sources, r = 2, destinations last):
    every later kept source is renumbered, the fate changes for the two swapped sources only."""
    first = C.first_merging_slot("bipartite", 2, 10, src=range(6))  # 4 kept sources: slots 0..3
    want = np.array([[0, 1, 4, 2, 3, 5, 4, 5, 6, 7]])  # sources 2 and 5 merge (into 4 and 5)
    got = np.array([[0, 1, 4, 2, 5, 3, 4, 5, 6, 7]])   # source 4 merges instead of source 5
    assert first == 4 and (got == want).mean() == 0.8
    same = C.same_fates(got, want, first)
    assert same.tolist() == [[True, True, True, True, False, False, True, True, True, True]]
    wrong = np.array([[4, 5, 0, 1, 2, 3, 4, 5, 6, 7]])  # another matching altogether
    assert C.same_fates(wrong, want, first).mean() < 0.8
    assert C.first_merging_slot("window", 3, 65) == 53
