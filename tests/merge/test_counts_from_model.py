"""resolve()'s counts (what the manifest and `edgemerge plan` report, read through the merge hooks
of a meta-device copy) are the merges the matching makes: every zoo model and variant runs on the
meta device (no weights, no compute) under merge/core.observe, the other channel, and each merge
it makes must be one resolve() reports."""

from collections import Counter
from dataclasses import replace

import pytest
import torch

from edgemerge.merge.patch import apply_merging
from edgemerge.merge import core
from edgemerge.merge.plan import get_plan
from edgemerge.merge.counts import resolve
from edgemerge.merge.plan import load_variants
from edgemerge.models.registry import list_models
from edgemerge.models.registry import build_from_config, configure
from edgemerge.merge.reference import prefix_tokens

CASES = [(m, v) for m in list_models() for v in load_variants(m) if v != "none"
         and not m.endswith(("-b3", "-b4", "-b5", "-l"))]  # the larger ones add time, not cases


def merges_on_meta(cfg, variant: str) -> tuple[list[tuple[int, int]], int]:
    """(tokens in, tokens kept) of every merge the patched model makes, and its prefix tokens."""
    with torch.device("meta"):
        model = build_from_config(cfg).eval()
    apply_merging(model, get_plan(cfg.name, variant))
    events = []
    with torch.no_grad(), core.observe(events.append):
        model(torch.empty(1, 3, *cfg.resolution, device="meta"))
    merges = [(e.metric.shape[1], e.metric.shape[1] - (3 * e.count if e.kind == "window" else e.count))
              for e in events if isinstance(e, core.MatchEvent) and e.slot is not None]
    return merges, prefix_tokens(model)


def expected(cfg, variant: str) -> list[tuple[int, int]]:
    counts = resolve(cfg, get_plan(cfg.name, variant), cfg.resolution)
    if "sites" in counts:
        return [(s["tokens_in"], s["tokens_kept"]) for s in counts["sites"]]
    out = []
    pooled = get_plan(cfg.name, variant).q_pool
    for s in counts["stages"]:
        if s["kv_kept"] != s["kv_in"]:
            out += [(s["kv_in"], s["kv_kept"])] * s["blocks"]
        if s["queries_kept"] != s["queries_in"] and s["stage"] not in pooled:  # pooling does not match
            out += [(s["queries_in"], s["queries_kept"])] * s["blocks"]
        if s["ffn_kept"] != s["ffn_in"]:
            out += [(s["ffn_in"], s["ffn_kept"])] * s["blocks"]
    return out


@pytest.mark.parametrize("model,variant", CASES, ids=[f"{m}-{v}" for m, v in CASES])
def test_resolved_counts_are_the_models(model, variant):
    cfg = configure(model)
    merges, _ = merges_on_meta(cfg, variant)
    want = expected(cfg, variant)
    if "sites" in resolve(model, get_plan(model, variant), cfg.resolution):
        assert merges == want
    else:
        assert Counter(merges) == Counter(want)


def test_a_distilled_deit_protects_two_tokens():
    """DeiT with its distillation token (from a checkpoint): two protected tokens change r's clamp
    and every count after it; resolve() must follow the model, not assume CLS alone."""
    zoo = configure("deit-t")
    cfg = replace(zoo, extra={**zoo.extra, "distilled": True})
    merges, protect = merges_on_meta(cfg, "tome")
    assert protect == 2 and merges == expected(cfg, "tome")
    assert merges != expected(zoo, "tome")
    from edgemerge.merge.flops import gflops

    assert gflops(cfg, "tome", cfg.resolution)["unmerged"] > gflops(zoo, "tome", zoo.resolution)["unmerged"]
