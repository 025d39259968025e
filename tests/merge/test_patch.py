"""apply_merging / remove_merging on zoo models: count 0 is exactly the unmerged model, the patch
undoes exactly, and ALGM's adaptive local step merges flat regions and nothing across an edge."""

from __future__ import annotations

import pytest
import torch

from edgemerge.merge.patch import apply_merging, remove_merging
from edgemerge.merge import core, ops
from edgemerge.merge.plan import get_plan
from edgemerge.merge.patch import MergingBlock, WindowSite
from edgemerge.merge.patch import SegformerPPAttention
from edgemerge.merge.plan import ALGMPlan, GridSite, NoPlan, SegformerPlan, ToMePlan
from edgemerge.models.tokens import TokenState
from edgemerge.models.registry import build_model
from edgemerge.models.vit import VisionTransformer


def _model(name: str, resolution: tuple[int, int]) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(name, resolution=resolution)


def _images(resolution: tuple[int, int], seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 3, *resolution, generator=torch.Generator().manual_seed(seed))


def _classes(model: torch.nn.Module) -> list[type]:
    return [type(m) for m in model.modules()]


ZERO_PLANS = [
    ("segformer-b0", SegformerPlan(kv={1: GridSite(0.0, 2, 2), 2: GridSite(0.0, 2, 2)},
                                   q={3: GridSite(0.0, 2, 2), 4: GridSite(0.0, 2, 2)})),
    ("vit-t", ToMePlan(r=0)),
    ("vit-t", ToMePlan(r=0, metric="dtem")),
    ("segmenter-vit-t", ALGMPlan(local_layer=1, global_layer=5, threshold=0.9, local_fraction=0.0,
                                 global_fraction=0.0)),
]


@pytest.mark.parametrize("name,plan", ZERO_PLANS, ids=lambda v: v if isinstance(v, str) else type(v).__name__)
def test_count_zero_gives_the_unmerged_output_exactly(name, plan):
    model = _model(name, (64, 64))
    x = _images((64, 64))
    with torch.inference_mode():
        want = model(x)
        apply_merging(model, plan)
        assert any(isinstance(m, (SegformerPPAttention, MergingBlock)) for m in model.modules())
        assert torch.equal(model(x), want)


@pytest.mark.parametrize("name", ["segformer-b0", "vit-t", "segmenter-vit-t"])
def test_variant_none_gives_the_unmerged_output_exactly(name):
    model = _model(name, (64, 64))
    x = _images((64, 64))
    classes = _classes(model)
    with torch.inference_mode():
        want = model(x)
        apply_merging(model, get_plan(name, "none"))
        assert _classes(model) == classes
        assert torch.equal(model(x), want)


ROUND_TRIPS = [("segformer-b0", "hq", (128, 128)), ("segformer-b0", "fast", (128, 128)),
               ("segformer-b0", "n2d", (128, 128)), ("vit-t", "tome", (64, 64)), ("vit-t", "dtem", (64, 64)),
               ("segmenter-vit-t", "algm", (64, 64))]


@pytest.mark.parametrize("name,variant,resolution", ROUND_TRIPS)
def test_apply_remove_round_trip(name, variant, resolution):
    model = _model(name, resolution)
    x = _images(resolution)
    classes = _classes(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    dtem_state = None
    if variant == "dtem":
        g = torch.Generator().manual_seed(1)
        dtem_state = {f"blocks.{i}.dtem_metric.{p}": torch.randn(*((64, 192) if p == "weight" else (64,)), generator=g)
                      for i in range(12) for p in ("weight", "bias")}
    with torch.inference_mode():
        want = model(x)
        apply_merging(model, get_plan(name, variant), dtem_state=dtem_state)
        merged = model(x)
        assert merged.shape == want.shape
        assert not torch.equal(merged, want)  # the plan does something
        if variant == "dtem":
            assert hasattr(model.blocks[0].attn, "dtem_metric")
        apply_merging(model, get_plan(name, variant), dtem_state=dtem_state)  # re-applying is idempotent
        assert torch.equal(model(x), merged)
        remove_merging(model)
        assert _classes(model) == classes
        assert not any(k.startswith("em_") or k == "_em_original_class" for m in model.modules() for k in vars(m))
        assert model.state_dict().keys() == state.keys()
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
        assert torch.equal(model(x), want)
        remove_merging(model)  # removing twice is harmless
        assert torch.equal(model(x), want)


def test_segformer_hq_token_counts_in_forward():
    """The patched attention sees the plan's static counts (b0 at 128x128: stage grids 32/16/8/4)."""
    model = _model("segformer-b0", (128, 128))
    apply_merging(model, get_plan("segformer-b0", "hq"))
    calls = []
    orig = core.bipartite_match

    def counting(metric, r, src, dst, protect=0):
        calls.append((metric.shape[1], r, len(dst)))
        return orig(metric, r, src, dst, protect)

    core.bipartite_match = counting
    try:
        with torch.inference_mode():
            model(_images((128, 128)))
    finally:
        core.bipartite_match = orig
    # stages 1-2: kv 4x4 = 16 -> r = int(16 * 0.6) = 9 on 2x2 cells (4 dst), 2 blocks each
    # stage 3: queries 8x8 = 64 -> r = int(64 * 0.8) = 51 (4x4 cells: 4 dst); stage 4: 16 -> 12 (1 dst)
    assert calls == [(16, 9, 4)] * 4 + [(64, 51, 4)] * 2 + [(16, 12, 1)] * 2


# --- ALGM's adaptive local step on flat colour regions --------------------------------------------

def _region_metric(region: torch.Tensor, C: int, seed: int) -> torch.Tensor:
    """Tokens [1, 1 + h*w, C] exactly equal inside each region: one random colour vector per region
    plus a small random vector per region (never per token); a random CLS token in front."""
    g = torch.Generator().manual_seed(seed)
    n = int(region.max()) + 1
    colour = torch.randn(n, C, generator=g) + 0.05 * torch.randn(n, C, generator=g)
    unit = colour / colour.norm(dim=-1, keepdim=True)
    cos = unit @ unit.T
    assert float((cos - torch.eye(n)).abs().max()) < 0.5  # regions clearly distinct
    tokens = colour[region.flatten()]
    return torch.cat([torch.randn(1, C, generator=g), tokens])[None]


def _region_map(h: int, w: int) -> torch.Tensor:
    """Irregular regions whose edges cut through some 2x2 windows and follow others."""
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    region = (yy >= 3).long() + 2 * (xx >= 5).long()  # edges at row 3 and column 5: odd, cut windows
    region[(yy - 6) ** 2 + (xx - 9) ** 2 <= 4] = 4  # a disc
    region[0:2, 0:2] = 5  # a region exactly one window
    return region


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_algm_adaptive_local_merges_windows_inside_regions_only(seed):
    h, w, C = 8, 12, 192  # segmenter-vit-t width
    region = _region_map(h, w)
    metric = _region_metric(region, C, seed)
    win = region.reshape(h // 2, 2, w // 2, 2).permute(0, 2, 1, 3).reshape(-1, 4)
    inside = (win == win[:, :1]).all(1)  # [W] windows fully inside one region
    assert 0 < int(inside.sum()) < len(inside)

    scores = ops.window_scores(metric, h, w, protect=1)[0]
    assert bool((scores[inside] > 0.999).all()) and bool((scores[~inside] < 0.9).all())

    # the ALGM local site of a patched Segmenter (128x192 input -> 8x12 patch grid), adaptive mode
    model = build_model("segmenter-vit-t", resolution=(h * 16, w * 16))
    plan = get_plan("segmenter-vit-t", "algm", mode="adaptive")
    apply_merging(model, plan)
    block = model.encoder.blocks[plan.local_layer]
    assert isinstance(block, MergingBlock) and isinstance(block.em_site, WindowSite)
    assert block.em_site.adaptive and block.em_site.threshold == 0.9
    with torch.inference_mode():
        out, state = block.reduce_tokens(metric, TokenState(), keys=None, normed=None)
    k = int(inside.sum())
    assert out.shape == (1, 1 + h * w - 3 * k, C)
    slot = state.source[0]  # position -> merged token
    assert int(slot[0]) == 0  # CLS untouched
    grid_slot = slot[1:].reshape(h // 2, 2, w // 2, 2).permute(0, 2, 1, 3).reshape(-1, 4)
    merged = (grid_slot == grid_slot[:, :1]).all(1)
    assert torch.equal(merged, inside)  # every window inside a region, none across an edge
    counts = torch.bincount(slot, minlength=out.shape[1])
    assert bool((counts[grid_slot[~inside]] == 1).all())
    assert torch.equal(state.size[0, grid_slot[inside][:, 0], 0], torch.full((k,), 4.0))
    # a merged window's token is its region's token (the mean of four equal tokens)
    first = 1 + _first_token_of_windows(h, w)[inside]
    assert torch.allclose(out[0, grid_slot[inside][:, 0]], metric[0, first], atol=1e-6)


def _first_token_of_windows(h: int, w: int) -> torch.Tensor:
    idx = torch.arange(h * w).reshape(h // 2, 2, w // 2, 2).permute(0, 2, 1, 3).reshape(-1, 4)
    return idx[:, 0]


def test_algm_adaptive_threshold_is_respected_per_site():
    """Raising the threshold above 1 merges nothing; at -1 every window merges."""
    h, w = 4, 4
    metric = _region_metric(torch.arange(16).reshape(4, 4) // 8, 16, 0)
    for threshold, k in [(1.01, 0), (-1.0, 4)]:
        blk = MergingBlock.__new__(MergingBlock)
        torch.nn.Module.__init__(blk)
        blk.em_site = WindowSite((h, w), 0.0, threshold, True, 1)
        out, state = blk.reduce_tokens(metric, TokenState(), keys=None, normed=None)
        assert out.shape[1] == 17 - 3 * k


# --- distilled ViTs: both prefix tokens are protected ----------------------------------------------

def test_tome_never_merges_into_prefix_tokens():
    torch.manual_seed(0)
    vit = VisionTransformer((64, 64), 16, dim=64, depth=3, num_heads=2, num_classes=10, distilled=True).eval()
    apply_merging(vit, ToMePlan(r=4))
    with torch.inference_mode():
        _, state = vit.forward_features(_images((64, 64)))
    source = state.source[0]  # original token -> current token
    assert source[:2].tolist() == [0, 1]
    assert int((source == 0).sum()) == 1 and int((source == 1).sum()) == 1  # CLS and dist alone
    assert state.size[0, :2, 0].tolist() == [1.0, 1.0]
