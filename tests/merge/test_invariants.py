"""Invariants of the merge ops over random shapes and counts (hypothesis), and exact-tie rules.

merge conserves mass (sum of size * x) and size; unmerge(merge(x)) gives x back wherever a slot
holds a single position; output shapes depend only on the static counts; a count of 0 is the
identity; among equal candidates the lower index wins (docs/ops.md).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edgemerge.merge import core, ops

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True)


@st.composite
def bipartite_case(draw):
    B = draw(st.integers(1, 3))
    C = draw(st.integers(1, 6))
    if draw(st.booleans()):  # ToMe's alternating split, CLS protected or not
        N = draw(st.integers(2, 24))
        src, dst = core.alternating(N)
        protect = draw(st.integers(0, 1))
    else:  # Segformer++ grid split
        sy, sx = draw(st.sampled_from([(2, 2), (4, 4), (2, 4)]))
        h, w = sy * draw(st.integers(1, 3)), sx * draw(st.integers(1, 3))
        N = h * w
        src, dst = core.grid(h, w, sy, sx)
        protect = 0
    r = draw(st.integers(0, len(src) - protect))
    seed = draw(st.integers(0, 2**31 - 1))
    return B, N, C, src, dst, protect, r, seed


@st.composite
def window_case(draw):
    B = draw(st.integers(1, 3))
    C = draw(st.integers(1, 6))
    h, w = 2 * draw(st.integers(1, 4)), 2 * draw(st.integers(1, 4))
    protect = draw(st.integers(0, 2))
    k = draw(st.integers(0, (h // 2) * (w // 2)))
    seed = draw(st.integers(0, 2**31 - 1))
    return B, C, h, w, protect, k, seed


def _inputs(B: int, N: int, C: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    metric = torch.randn(B, N, C, generator=g)
    x = torch.randn(B, N, C + 1, generator=g)
    size = torch.randint(1, 6, (B, N, 1), generator=g).float()
    return metric, x, size


def _check_merge_invariants(fns: core.MergeFns, x: torch.Tensor, size: torch.Tensor, num_out: int) -> None:
    B, N, C = x.shape
    merged, merged_size = fns.merge(x, size)
    assert merged.shape == (B, num_out, C) and merged_size.shape == (B, num_out, 1)  # static shapes
    # size and mass are conserved
    assert torch.equal(merged_size.sum(1), size.sum(1))
    assert torch.allclose((merged * merged_size).sum(1), (x * size).sum(1), rtol=1e-5, atol=1e-4)
    assert bool((merged_size > 0).all())  # every output slot holds at least one position
    # unmerge(merge(x)) == x exactly where the slot holds a single position (unit sizes: no rounding)
    plain, _ = fns.merge(x)
    back = fns.unmerge(plain)
    assert back.shape == x.shape
    slot = fns.slot.long() if fns.slot is not None else torch.arange(N).expand(B, N)
    counts = torch.zeros(B, num_out, dtype=torch.long).scatter_add_(1, slot, torch.ones_like(slot))
    alone = counts.gather(1, slot) == 1  # [B, N]
    assert torch.equal(back[alone], x[alone])
    # merged positions get their slot's size-weighted mean back
    assert torch.allclose(fns.unmerge(merged), merged.gather(1, slot[..., None].expand(B, N, C)))


@given(bipartite_case())
@SETTINGS
def test_bipartite_invariants(case):
    B, N, C, src, dst, protect, r, seed = case
    metric, x, size = _inputs(B, N, C, seed)
    fns = core.bipartite_match(metric, r, src, dst, protect)
    _check_merge_invariants(fns, x, size, N - r)
    if r == 0:
        assert fns.slot is None and fns.merge(x, size) == (x, size)
        return
    slot = fns.slot
    assert slot.dtype == torch.int32 and int(slot.min()) >= 0 and int(slot.max()) < N - r
    src_t, dst_t = torch.tensor(src), torch.tensor(dst)
    # destinations keep their own slots, in order, at the end
    assert torch.equal(slot[:, dst_t], (N - r - len(dst) + torch.arange(len(dst))).int().expand(B, -1))
    # exactly r sources share a destination's slot; protected sources never do
    assert bool(((slot[:, src_t] >= len(src) - r).sum(1) == r).all())
    assert bool((slot[:, src_t[:protect]] == torch.arange(protect).int()).all())


@given(window_case())
@SETTINGS
def test_window_invariants(case):
    B, C, h, w, protect, k, seed = case
    N = protect + h * w
    metric, x, size = _inputs(B, N, C, seed)
    fns = core.window_match(metric, h, w, k, protect)
    _check_merge_invariants(fns, x, size, N - 3 * k)
    if k == 0:
        assert fns.slot is None
        return
    slot = fns.slot.long()
    counts = torch.zeros(B, N - 3 * k, dtype=torch.long).scatter_add_(1, slot, torch.ones_like(slot))
    assert bool(((counts == 4).sum(1) == k).all()) and bool(((counts == 1).sum(1) == N - 4 * k).all())
    assert torch.equal(slot[:, :protect], torch.arange(protect).expand(B, -1))
    # a merged slot holds exactly the four tokens of one 2x2 window
    grid_slot = slot[:, protect:].reshape(B, h // 2, 2, w // 2, 2)
    same = (grid_slot == grid_slot[:, :, :1, :, :1]).all(4).all(2)  # [B, h/2, w/2]
    assert bool((same.sum((1, 2)) == k).all())


@given(st.integers(1, 3), st.integers(1, 30), st.integers(1, 5), st.integers(0, 2**31 - 1))
@SETTINGS
def test_token_merge_invariants_on_any_slots(B, N, C, seed):
    g = torch.Generator().manual_seed(seed)
    M = int(torch.randint(1, N + 1, (1,), generator=g))
    slot = torch.randint(0, M, (B, N), generator=g, dtype=torch.int32)
    x = torch.randn(B, N, C, generator=g)
    size = torch.rand(B, N, 1, generator=g) + 0.1
    merged, merged_size = ops.token_merge_ref(x, size, slot, M)
    assert merged.shape == (B, M, C) and merged_size.shape == (B, M, 1)
    assert torch.allclose(merged_size.sum(1), size.sum(1), rtol=1e-5)
    assert torch.allclose((merged * merged_size).sum(1), (x * size).sum(1), rtol=1e-5, atol=1e-4)
    assert torch.isfinite(merged).all()
    assert ops.token_unmerge_ref(merged, slot).shape == x.shape


def test_count_zero_is_identity():
    x = torch.randn(2, 9, 4)
    for fns in (core.bipartite_match(x, 0, *core.alternating(9), 1), core.window_match(x, 2, 4, 0, 1),
                core.identity()):
        assert fns.slot is None
        assert fns.merge(x)[0] is x and fns.unmerge(x) is x


def test_impossible_counts_raise_value_error():
    metric = torch.randn(1, 9, 4)
    src, dst = core.alternating(9)  # 5 sources, 1 protected
    with pytest.raises(ValueError, match="r=5"):
        core.bipartite_match(metric, 5, src, dst, protect=1)
    with pytest.raises(ValueError, match="r=6"):
        ops.match_bipartite_ref(metric, 6, src, dst, 0)
    with pytest.raises(ValueError, match="cover"):
        ops.match_bipartite_ref(metric, 1, src[:-1], dst, 0)
    with pytest.raises(ValueError, match="k=3"):
        core.window_match(torch.randn(1, 9, 4), 2, 4, 3, protect=1)  # 2 windows
    with pytest.raises(ValueError, match="even"):
        core.window_match(torch.randn(1, 7, 4), 2, 3, 1, protect=1)
    with pytest.raises(ValueError, match="do not form"):
        core.window_match(torch.randn(1, 10, 4), 2, 4, 1, protect=1)
    with pytest.raises(ValueError, match="does not divide"):
        core.grid(6, 6, 4, 4)


# --- exact ties: the lower index wins ------------------------------------------------------------
# One-hot metrics: every cosine is exactly 0 or 1 whatever order a matmul sums in.

def _one_hot(indices: list[int], C: int = 4) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(indices), C).float()[None]


def test_bipartite_ties_lower_source_and_lower_destination_win():
    # every token identical: all sources tie (and all their destinations tie)
    metric = _one_hot([0] * 10)
    src, dst = core.alternating(10)  # src 0,2,4,6,8; dst 1,3,5,7,9
    slot = ops.match_bipartite_ref(metric, 2, src, dst, protect=1)
    # CLS (0) protected; of the tied sources 2,4,6,8 the lowest two (2, 4) merge, into dst rank 0
    M = 10 - 2
    assert slot[0, [2, 4]].tolist() == [M - 5, M - 5]  # S - r + 0 = 3
    assert slot[0, [0, 6, 8]].tolist() == [0, 1, 2]
    assert slot[0, list(dst)].tolist() == [3, 4, 5, 6, 7]


def test_bipartite_tie_between_destinations_goes_to_the_lower_one():
    # source 0 equals destinations 1 and 3 exactly; destination 1 (rank 0) must win
    metric = _one_hot([0, 0, 1, 0])
    slot = ops.match_bipartite_ref(metric, 1, [0, 2], [1, 3], protect=0)
    # sources: 0 -> node_max 1 (dst rank 0); 2 -> node_max 0; r=1: source 0 merges into slot S-r+0 = 1
    assert slot.tolist() == [[1, 1, 0, 2]]


def test_bipartite_grid_ties_stable():
    metric = _one_hot([2] * 16)  # 4x4 grid, 2x2 cells: 12 sources all tied
    src, dst = core.grid(4, 4, 2, 2)
    r = 5
    slot = ops.match_bipartite_ref(metric, r, src, dst, 0)
    merged_sources = [s for s in src if slot[0, s] >= len(src) - r]
    assert merged_sources == list(src[:r])  # the r lowest sources
    assert all(slot[0, s] == len(src) - r for s in merged_sources)  # into destination rank 0


def test_window_ties_lower_window_wins():
    # 4x4 grid, 4 windows, all uniform (score exactly 1): k=2 picks windows 0 and 1
    metric = _one_hot([3] * 17)
    slot = ops.match_window_ref(metric, 4, 4, 2, protect=1)
    grid_slot = slot[0, 1:].reshape(4, 4)
    assert slot[0, 0] == 0  # CLS first
    assert torch.equal(grid_slot[:2, :2], torch.full((2, 2), 1, dtype=torch.int32))  # window 0, then 1
    assert torch.equal(grid_slot[:2, 2:], torch.full((2, 2), 2, dtype=torch.int32))
    assert grid_slot[2:].flatten().tolist() == list(range(3, 11))  # then the rest in input order
    # a tie between windows 1 and 3 with a better window 2: 2 first, then the lower of 1/3
    toks = [[0, 1, 2, 3]] * 4  # per window, one-hot classes of its four tokens
    toks[1] = [0, 0, 0, 1]
    toks[3] = [1, 1, 1, 0]
    toks[2] = [2, 2, 2, 2]
    grid = torch.empty(4, 4, dtype=torch.long)
    for wi, t in enumerate(toks):
        ci, cj = divmod(wi, 2)
        grid[2 * ci:2 * ci + 2, 2 * cj:2 * cj + 2] = torch.tensor(t).reshape(2, 2)
    metric = _one_hot([0] + grid.flatten().tolist())
    scores = ops.window_scores(metric, 4, 4, 1)[0]
    assert scores[1] == scores[3] and scores[2] > scores[1] > scores[0]
    slot = ops.match_window_ref(metric, 4, 4, 2, protect=1)[0, 1:].reshape(4, 4)
    assert (slot[2:, :2] == 1).all() and (slot[:2, 2:] == 2).all()  # window 2 (best), then 1
    assert len(set(slot[2:, 2:].flatten().tolist())) == 4  # window 3 stays
