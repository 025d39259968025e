"""The merge-decision gate on real merge sites: a correct decision passes, wrong matchings fail.

Sites are taken from the zoo models as they run (ToMe on deit-t, ALGM's window and global steps on
segmenter-vit-t, Segformer++'s grid sites on segformer-b0; random weights), and the planted
decisions are built from those sites' metrics by tests/validate/plants.py, which follows
docs/ops.md and imports nothing of edgemerge. The gate is judged as validate judges an artifact
whose metric tensors it can read: the reference decision on that metric, near-ties within
DECISION_LIMITS' bound excused.
"""

from __future__ import annotations

import numpy as np
import pytest

import plants
from edgemerge.contracts import compare as C

torch = pytest.importorskip("torch")

CASES = [("deit-t", "tome", None), ("segmenter-vit-t", "algm", (256, 256)), ("segformer-b0", "fast", (256, 256))]


@pytest.fixture(scope="module", params=CASES, ids=[c[0] for c in CASES])
def sites(request):
    from edgemerge.contracts.images import normalize, synthetic_images
    from edgemerge.merge.core import MatchEvent, observe
    from edgemerge.merge.reference import build_reference

    name, variant, res = request.param
    model, cfg, _ = build_reference(name, variant, resolution=res)
    H, W = res or cfg.resolution
    x = torch.from_numpy(normalize(synthetic_images(2, H, W, seed=3), cfg.mean, cfg.std))
    events = []
    with torch.no_grad(), observe(lambda e: isinstance(e, MatchEvent) and e.own is not None and events.append(e)):
        model(x)
    out = []
    for e in events:
        metric = e.metric.float().numpy()
        out.append({"kind": e.kind, "count": e.count, "args": e.args, "own": e.own.numpy(), "metric": metric,
                    "margins": C.decision_margins(metric, e.kind, e.count, e.args)})
    assert {s["kind"] for s in out} == ({"window", "bipartite"} if variant == "algm" else {"bipartite"})
    return out


def gate(site, got) -> dict:
    """The site judged under the strictest of the precisions' bounds it must pass and the loosest
    near-tie bound any precision gets (fp32 and fp16 share the gate on the artifact's metric)."""
    bound = max(lim["near_tie"] for lim in C.DECISION_LIMITS.values())
    return C.judge_site(got, site["own"], site["kind"], site["count"], site["args"], site["margins"], bound)


LIMIT = min(lim["merging_same_destination"] for lim in C.DECISION_LIMITS.values())


def test_the_right_decision_passes(sites):
    for s in sites:
        assert gate(s, s["own"].copy())["merging_same_destination"] == 1.0
        # the same groups under other slot numbers (a layout) are the same decision
        relabelled = (s["own"].max() - s["own"]).astype(np.int32)
        assert gate(s, relabelled)["merging_same_destination"] == 1.0


def _per_input(site, fn):
    return np.stack([fn(site["metric"][b]) for b in range(len(site["own"]))])


def test_a_quarter_of_the_picks_wrong_fails(sites):
    """r/4 of the merged sources swapped for sources the matching left out (the best-scored ones
    it left out: the hardest case, next to the threshold; and random ones)."""
    for s in [s for s in sites if s["kind"] == "bipartite"]:
        a, r = s["args"], s["count"]
        wrong = max(1, r // 4)
        if r + wrong > len(a["src"]) - a["protect"]:
            continue  # no sources left out to pick instead
        picked = _per_input(s, lambda m: plants.wrong_picks(m, r, a["src"], a["dst"], a["protect"], wrong))
        site = gate(s, picked)
        assert site["merging_same_destination"] < LIMIT, site
        assert site["merging_same_destination"] <= 1 - wrong / (r + wrong) + 1e-9 or site["near_ties_excused"] > 0


def test_permuted_destinations_fail(sites):
    for s in [s for s in sites if s["kind"] == "bipartite"]:
        a = s["args"]
        permuted = _per_input(s, lambda m: plants.permuted_destinations(m, s["count"], a["src"], a["dst"], a["protect"]))
        assert gate(s, permuted)["merging_same_destination"] < 0.1


def test_an_unrelated_matching_fails_where_token_counts_hide_it(sites):
    """Another input's decision: an unrelated matching of the same shape. Counting every token
    (kept ones included) it agrees on most of a ToMe site; judged over merging tokens it fails."""
    for i, s in enumerate(sites):
        other = s["own"][::-1].copy()
        site = gate(s, other)
        assert site["merging_same_destination"] < LIMIT
        if i == 0 and s["kind"] == "bipartite" and s["count"] < len(s["args"]["src"]) / 4:  # ToMe's first block
            assert site["tokens_same_fate"] > 0.85 and site["merging_same_destination"] < 0.5


def test_replay_judges_the_matching_on_the_artifacts_own_metric():
    """An artifact whose metric differs from PyTorch's by rounding-sized noise, and whose decisions
    are exactly the reference op's on that metric: every merging token agrees (its matching is
    right), although PyTorch's own decisions differ (the noise flips near-ties)."""
    from edgemerge.contracts.images import normalize, synthetic_images
    from edgemerge.merge import ops
    from edgemerge.merge.core import MatchEvent, observe
    from edgemerge.merge.reference import build_reference, replay_reference

    model, cfg, _ = build_reference("deit-t", "tome")
    x = normalize(synthetic_images(1, 224, 224, seed=5), cfg.mean, cfg.std)
    events = []
    with torch.no_grad(), observe(lambda e: isinstance(e, MatchEvent) and e.own is not None and events.append(e)):
        model(torch.from_numpy(x))
    rng = np.random.default_rng(0)
    metrics, slots = [], []
    for e in events:
        m = e.metric.float().numpy()
        noisy = (m * (1 + 3e-3 * rng.standard_normal(m.shape))).astype(np.float32)
        a = e.args
        metrics.append(noisy)
        slots.append(ops.match_bipartite_ref(torch.from_numpy(noisy), e.count, a["src"], a["dst"], a["protect"]).numpy())
    _, sites = replay_reference(model, [x], [slots], [metrics])
    figures, rows = C.judge_decisions(sites, slots, "fp32")
    assert figures["judged_on"] == "the artifact's metric"
    assert figures["same_destination_worst"] == 1.0
    flipped = [C.judge_site(g, s["own"], s["kind"], s["count"], s["args"], s["margins"], 0.0)["merging_same_destination"]
               for g, s in zip(slots, sites)]
    assert min(flipped) < 1.0  # PyTorch's own metric decides otherwise somewhere: the noise mattered
