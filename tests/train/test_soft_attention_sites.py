"""The soft (training) forward of a Segformer++ attention site tends to the hard (exported) one as
the temperature goes to 0: the key/value site (with and without proportional attention) and the
query site, on one attention module and on the whole of segformer-b0, as
tests/merge/test_ffn_site.py checks for the MixFFN site.

The tolerance (1e-3 of the output's scale at tau 1e-6) is one no wrong relaxation meets: a merged
key left in view, a destination counted with the wrong size, or an output restored from the wrong
token each move the output by a fraction of its scale. It is not 0 at tau -> 0: a merged key keeps
size SIZE_FLOOR (1e-6, log -13.8) in the soft forward, so it still holds 1e-6 * exp(its logit's lead)
of the attention; with keys scaled up as here, up to ~1.5e-4 of the scale (0.9@4x4, no-pa, where 54
merged keys face 10 kept ones), the same at tau 1e-4 and 1e-6.
"""

from __future__ import annotations

import pytest
import torch

from edgemerge.merge.patch import apply_merging, remove_merging
from edgemerge.merge.plan import get_plan
from edgemerge.merge.patch import SegformerPPAttention
from edgemerge.merge.families.segformer import segformer_metrics
from edgemerge.merge.patch import _swap
from edgemerge.merge.plan import GridSite, SegformerPlan
from edgemerge.models.registry import build_model
from edgemerge.models.segformer import SegformerAttention
from edgemerge.merge.families.segformer import SoftSegformerAttention, apply_soft_segformer, segformer_soft_metrics

DIM, HEADS = 32, 2
TAUS = (1e-2, 1e-4, 1e-6)
TOL = 1e-3  # of the output's scale


def _attention(sr: int, seed: int = 0) -> SegformerAttention:
    torch.manual_seed(seed)
    attn = SegformerAttention(DIM, HEADS, sr, 1e-5).eval()
    with torch.no_grad():  # keys far from each other, so that where a merged key goes shows
        attn.k.weight.mul_(4)
    return attn


def _sites(attn: SegformerAttention, kv: GridSite | None, q: GridSite | None, proportional: bool,
           learned: bool) -> tuple[SegformerAttention, callable]:
    """The hard site on `attn`, and a maker of its soft twin at a temperature (same weights, same
    metric: the tokens themselves, or one random Linear(C -> C) shared by both)."""
    plan = SegformerPlan(kv={1: kv} if kv else {}, q={1: q} if q else {}, proportional=proportional,
                         metric="learned" if learned else "tokens")
    metrics = segformer_metrics(attn, plan, 1, {}, "")
    if learned:
        torch.manual_seed(7)
        with torch.no_grad():
            for m in metrics.values():
                m.weight.normal_(0, DIM ** -0.5)
                m.bias.normal_(0, 0.1)
    hard = _copy(attn)
    _swap(hard, SegformerPPAttention, em_kv=kv, em_q=q, em_pool=False, em_proportional=proportional)
    if learned:
        hard.dtem_metric = metrics

    def soft(tau: float) -> SegformerAttention:
        s = _copy(attn)
        _swap(s, SoftSegformerAttention, em_kv=kv, em_q=q, em_pool=False, em_proportional=proportional,
              em_tau=tau, em_top_k=3, em_stats=None)
        s.dtem_metric = metrics  # the soft site always reads a metric module: identity = the tokens
        return s

    return hard, soft


def _copy(attn: SegformerAttention) -> SegformerAttention:
    out = SegformerAttention(DIM, HEADS, attn.sr_ratio, 1e-5).eval()
    out.load_state_dict(attn.state_dict())
    return out


def _errors(hard, soft, x, hw) -> tuple[torch.Tensor, list[float]]:
    with torch.no_grad():
        want = hard(x, hw)
        return want, [(soft(tau)(x, hw) - want).abs().max().item() for tau in TAUS]


def _assert_tends(want: torch.Tensor, errs: list[float]) -> None:
    scale = want.abs().max().item()
    assert errs[-1] < TOL * scale, f"soft - hard at tau {TAUS[-1]}: {errs[-1]:.3g} (scale {scale:.3g})"
    assert errs[-1] <= errs[0]


KV_SITES = [GridSite(0.6, 2, 2), GridSite(0.9, 4, 4), GridSite(0.5, 2, 2)]
Q_SITES = [GridSite(0.8, 4, 4), GridSite(0.9, 4, 4), GridSite(0.75, 2, 2)]


@pytest.mark.parametrize("learned", [False, True], ids=["tokens", "learned"])
@pytest.mark.parametrize("proportional", [True, False], ids=["pa", "no-pa"])
@pytest.mark.parametrize("site", KV_SITES, ids=lambda s: f"{s.ratio}@{s.sy}x{s.sx}")
def test_soft_kv_site_tends_to_the_hard_one(site, proportional, learned):
    """Stage 1-2 form: queries at full size, keys/values from the sr-2 reduction (16x16 -> 8x8)
    merged; with proportional attention each merged key weighs its size, without it one."""
    attn = _attention(sr=2)
    hard, soft = _sites(attn, site, None, proportional, learned)
    x = torch.randn(2, 256, DIM, generator=torch.Generator().manual_seed(1))
    want, errs = _errors(hard, soft, x, (16, 16))
    _assert_tends(want, errs)


@pytest.mark.parametrize("learned", [False, True], ids=["tokens", "learned"])
@pytest.mark.parametrize("site", Q_SITES, ids=lambda s: f"{s.ratio}@{s.sy}x{s.sx}")
def test_soft_query_site_tends_to_the_hard_one(site, learned):
    """Stage 3-4 form (no spatial reduction): queries merged, attention on them against all keys,
    outputs restored to every token a query stood for."""
    attn = _attention(sr=1)
    hard, soft = _sites(attn, None, site, False, learned)
    x = torch.randn(2, 64, DIM, generator=torch.Generator().manual_seed(2))
    want, errs = _errors(hard, soft, x, (8, 8))
    _assert_tends(want, errs)


def test_soft_kv_and_query_sites_together():
    attn = _attention(sr=2)
    hard, soft = _sites(attn, GridSite(0.6, 2, 2), GridSite(0.8, 4, 4), True, False)
    x = torch.randn(1, 256, DIM, generator=torch.Generator().manual_seed(3))
    want, errs = _errors(hard, soft, x, (16, 16))
    _assert_tends(want, errs)


def test_sites_really_merge():
    """The hard sites change the output (else equality above would prove nothing), and the soft
    ones at a warm temperature are not already the hard op."""
    attn = _attention(sr=2)
    x = torch.randn(1, 256, DIM, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = attn(x, (16, 16))
        for kv, q in ((GridSite(0.6, 2, 2), None), (None, GridSite(0.8, 4, 4))):
            hard, soft = _sites(attn, kv, q, True, False)
            want = hard(x, (16, 16))
            scale = want.abs().max().item()
            assert (want - plain).abs().max().item() > 1e-2 * scale
            assert (soft(1.0)(x, (16, 16)) - want).abs().max().item() > 1e-3 * scale


@pytest.mark.parametrize("variant", ["fast-pa-lm", "hq-lm"])
def test_whole_model_soft_forward_tends_to_the_exported_one(variant):
    """segformer-b0 with every kv and query site soft (as train-metric runs it, identity metrics)
    against the same weights patched for export."""
    res = (128, 128)
    torch.manual_seed(0)
    model = build_model("segformer-b0", resolution=res).eval()
    images = torch.randn(1, 3, *res, generator=torch.Generator().manual_seed(1))
    plan = get_plan("segformer-b0", variant)
    with torch.no_grad():
        want = apply_merging(model, plan)(images)
        metrics = segformer_soft_metrics(remove_merging(model), plan, {})
        errs = []
        for tau in TAUS:
            apply_soft_segformer(model, plan, metrics, tau=tau, top_k=3)
            errs.append((model(images) - want).abs().max().item())
            remove_merging(model)
        plain = model(images)
    scale = want.abs().max().item()
    assert (plain - want).abs().max().item() > 1e-2 * scale  # the plan merges
    _assert_tends(want, errs)
