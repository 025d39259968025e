"""ALGM's token order after the local step, pinned on hand-made cases (issue #23).

The authors' `conditional_pooling` (tue-mps/algm-segmenter, algm/algm/local_merge.py) returns
`[CLS, merged windows in descending similarity order, unmerged tokens in index order]`, and the
global step's bipartite split alternates by position, so that order decides which tokens are
sources and which destinations. TokenMatchWindow's slot layout is that order (docs/ops.md).
benchmarks/algm_equivalence.py checks the same against the authors' code itself.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from edgemerge.merge import core, ops
from edgemerge.merge.patch import GlobalSite, MergingBlock, WindowSite
from edgemerge.models.tokens import TokenState

E = torch.eye(8)


def _grid_of_windows(windows: list[list[torch.Tensor]], h: int, w: int, cls: torch.Tensor) -> torch.Tensor:
    """[1, 1 + h*w, C]: CLS, then each window's 4 tokens (TL, TR, BL, BR) on the h x w grid."""
    x = torch.zeros(1, 1 + h * w, cls.shape[0])
    x[0, 0] = cls
    for win, toks in enumerate(windows):
        y0, x0 = (win // (w // 2)) * 2, (win % (w // 2)) * 2
        for q, t in enumerate(toks):
            x[0, 1 + (y0 + q // 2) * w + x0 + q % 2] = t
    return x


# 4x4 grid, 4 windows with distinct scores: window 3 uniform (score 1), window 0 nearly (3 of 4
# equal: score 1/2), windows 1 and 2 of four orthogonal tokens (score 0, 0).
WINDOWS = [
    [E[0], E[0], E[0], E[1]],  # 0: score 0.5
    [E[2], E[3], E[4], E[5]],  # 1: score 0
    [E[4], E[5], E[6], E[7]],  # 2: score 0
    [E[6], E[6], E[6], E[6]],  # 3: score 1
]


def test_window_scores_of_the_hand_made_grid():
    x = _grid_of_windows(WINDOWS, 4, 4, E[7])
    assert torch.allclose(ops.window_scores(x, 4, 4, 1)[0], torch.tensor([0.5, 0.0, 0.0, 1.0]))


def test_merged_windows_come_first_best_first_then_the_rest_in_index_order():
    x = _grid_of_windows(WINDOWS, 4, 4, E[7])
    slot = ops.match_window_ref(x, 4, 4, 2, protect=1)[0]
    grid = slot[1:].reshape(4, 4)
    assert slot[0] == 0  # CLS
    assert (grid[2:, 2:] == 1).all()  # window 3, the best, right after CLS
    assert (grid[:2, :2] == 2).all()  # window 0, the second best
    # the tokens of windows 1 and 2, in input (row-major) order
    rest = [1 + i for i in range(16) if not ((i // 4 >= 2 and i % 4 >= 2) or (i // 4 < 2 and i % 4 < 2))]
    assert slot[rest].tolist() == list(range(3, 11))
    # the merged sequence in that order: CLS, mean of window 3, mean of window 0, the rest
    merged, size = core.from_slot(slot[None], 11).merge(x)
    assert torch.equal(merged[0, 0], E[7])
    assert torch.allclose(merged[0, 1], E[6]) and torch.allclose(merged[0, 2], (3 * E[0] + E[1]) / 4)
    assert torch.equal(merged[0, 3:], x[0, rest])
    assert size[0, :, 0].tolist() == [1, 4, 4] + [1] * 8


def test_ties_go_to_the_lower_window_first():
    # windows 1 and 3 both uniform (score 1), window 0 and 2 score 0: window 1 ranks before 3
    windows = [WINDOWS[1], [E[3]] * 4, WINDOWS[2], [E[5]] * 4]
    x = _grid_of_windows(windows, 4, 4, E[7])
    scores = ops.window_scores(x, 4, 4, 1)[0]
    assert scores[1] == scores[3]
    grid = ops.match_window_ref(x, 4, 4, 2, protect=1)[0, 1:].reshape(4, 4)
    assert (grid[:2, 2:] == 1).all() and (grid[2:, 2:] == 2).all()
    grid = ops.match_window_ref(x, 4, 4, 1, protect=1)[0, 1:].reshape(4, 4)
    assert (grid[:2, 2:] == 1).all() and len(set(grid[2:, 2:].flatten().tolist())) == 4  # k=1: window 1 only


def test_protected_prefix_stays_first_with_two_prefix_tokens():
    x = torch.cat([E[[2, 3]][None], _grid_of_windows(WINDOWS, 4, 4, E[7])[:, 1:]], dim=1)  # 2 + 16 tokens
    slot = ops.match_window_ref(x, 4, 4, 2, protect=2)[0]
    assert slot[:2].tolist() == [0, 1]
    assert (slot[2:].reshape(4, 4)[2:, 2:] == 2).all() and (slot[2:].reshape(4, 4)[:2, :2] == 3).all()
    assert sorted(set(slot.tolist())) == list(range(18 - 6))


def _hook(site, x, state=None):
    blk = SimpleNamespace(em_site=site)
    return MergingBlock.reduce_tokens(blk, x, state or TokenState(), None, None)


def test_global_step_splits_the_authors_sequence():
    """After the local step the global step's alternating split sees [CLS, W3, W0, rest...]: the
    best window (position 1) is a destination, the second (position 2) a source."""
    x = _grid_of_windows(WINDOWS, 4, 4, E[7])
    y, state = _hook(WindowSite((4, 4), 0.5, 0.9, False, 1), x)  # static: 2 of 4 windows
    assert y.shape[1] == 11 and torch.allclose(y[0, 1], E[6])
    src, dst = core.alternating(11, 1)
    assert 1 in dst and 2 in src and src[0] == 0
    # make the second-best window's token identical to a later destination: the global step
    # (r = 1) must merge it there, which it can only do when it is a source (position 2)
    y = y.clone()
    y[0, 3] = y[0, 2]  # position 3 (a token of window 1) is a destination
    with core.record_decisions() as slots:
        z, state2 = _hook(GlobalSite(1 / 5, 5, False, 1), y, state)  # 5 sources, 1 merges
    slot = slots[0][0]
    assert slot[2] == slot[3]  # the second-best window merged into its twin destination
    groups = {}
    for pos, cur in enumerate(state2.source[0].tolist()):
        groups.setdefault(cur, set()).add(pos)
    window0 = {1, 2, 5, 6}  # window 0's tokens (1 + grid positions 0, 1, 4, 5)
    assert any(window0 < g and len(g) == 5 for g in groups.values())


def test_adaptive_global_count_uses_one_cut_for_the_batch():
    """ALGM's turbo_matching: cut = batch mean of per-image means + batch mean of per-image stds
    / layer; r = the fewest sources at or above it in any image."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 33, 16, generator=g)
    x[1, 1:] = x[1, 1:] * 0.1 + torch.randn(16, generator=g)  # image 1: much higher similarities
    layer = 5
    src, dst = core.alternating(33, 1)
    node_max = core.bipartite_node_max(x, src, dst, 1)[:, 1:]
    cut = node_max.mean(1).mean() + node_max.std(1).mean() / layer
    want = int((node_max >= cut).sum(1).min())
    per_image = [int((m >= m.mean() + m.std() / layer).sum()) for m in node_max]
    assert want != min(per_image)  # the case tells the batch rule from a per-image one
    counts: list[int] = []
    with core.observe(lambda e: isinstance(e, core.MatchEvent) and counts.append(e.count)):
        _hook(GlobalSite(0.0, layer, True, 1), x)
    assert counts == [want]


def test_same_merges_as_the_authors_code():
    """benchmarks/algm_equivalence.py on a few cases, where the authors' code can run: a copy of
    tue-mps/algm-segmenter at $ALGM_SEGMENTER_REPO (or this workspace's mirror) and einops."""
    import importlib.util
    import os
    from pathlib import Path

    import pytest

    repo = Path(os.environ.get("ALGM_SEGMENTER_REPO", "/work/.mirror/tue-mps+algm-segmenter/repo"))
    if not repo.exists():
        pytest.skip(f"no copy of tue-mps/algm-segmenter at {repo} (set ALGM_SEGMENTER_REPO)")
    pytest.importorskip("einops", reason="the authors' code needs einops")
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "algm_equivalence.py"
    spec = importlib.util.spec_from_file_location("algm_equivalence", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    fns = bench.load_authors(repo, "HEAD")
    cuda = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *a, **k: self
    try:
        for B, noise, seed in [(1, 0.1, 0), (1, 0.6, 1), (3, 0.3, 2)]:
            row = bench.run_case(fns, B, 16, 32, noise, seed, 0.9, 5)
            assert row["k"][0] == row["k"][1] and row["r_both"][0] == row["r_both"][1], row
            assert row["local"] == (True, True) and row["global"][0] and row["both"] == (True, True), row
    finally:
        torch.Tensor.cuda = cuda
