"""TokenMatchCell (docs/ops.md) in PyTorch: hand-computed cases, the tie rule, and the equivalence
with TokenMatchBipartite whose scores are masked to each source's own cell anchor (a second
formula: the S x D score matrix and its row max, against cell_match's gather + dot); the plan
field and the patch dispatch; the decision judge on a cell site."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgemerge.contracts import compare
from edgemerge.contracts.errors import EdgemergeError
from edgemerge.merge import core, ops
from edgemerge.merge.patch import grid_match
from edgemerge.merge.plan import GridSite, plan_dict, plan_from_table


def masked_bipartite(metric: torch.Tensor, r: int, h: int, w: int, sy: int, sx: int) -> torch.Tensor:
    """TokenMatchBipartite over core.grid's split with every score but the source's own cell
    anchor set to -inf: what TokenMatchCell means, computed the expensive way."""
    src, dst = core.grid(h, w, sy, sx)
    m = ops._normalize(metric)
    scores = m[:, list(src)] @ m[:, list(dst)].transpose(1, 2)  # [B, S, D]
    own = torch.tensor([(p // w // sy) * (w // sx) + (p % w) // sx for p in src])
    scores = scores.masked_fill(own[:, None] != torch.arange(len(dst)), -torch.inf)
    return ops.bipartite_slots(scores, r, src, dst)


@pytest.mark.parametrize("h,w,sy,sx", [(4, 4, 2, 2), (6, 8, 2, 2), (8, 8, 4, 4), (6, 6, 3, 2), (4, 6, 1, 2)])
@pytest.mark.parametrize("seed", [0, 1])
def test_equals_masked_bipartite(h, w, sy, sx, seed):
    g = torch.Generator().manual_seed(seed)
    metric = torch.randn(2, h * w, 5, generator=g)
    S = h * w - (h // sy) * (w // sx)
    for r in sorted({0, 1, S // 3, S // 2, S}):
        assert torch.equal(ops.match_cell_ref(metric, r, h, w, sy, sx), masked_bipartite(metric, r, h, w, sy, sx)), r


@pytest.mark.parametrize("seed", [0, 1])
def test_equals_masked_bipartite_with_ties(seed):
    """Tokens drawn from four axis vectors (scaled by powers of two, so normalising is exact):
    every cosine is exactly -1, 0 or 1 in both formulas, so the tie rule decides."""
    g = torch.Generator().manual_seed(seed)
    values = torch.tensor([[1.0, 0, 0], [0, 2.0, 0], [-1.0, 0, 0], [0, 0, 4.0]])
    metric = values[torch.randint(0, 4, (2, 48), generator=g)]
    for r in (5, 17, 30):
        assert torch.equal(ops.match_cell_ref(metric, r, 6, 8, 2, 2), masked_bipartite(metric, r, 6, 8, 2, 2))


def test_hand_case():
    """4x4 grid, 2x2 cells: anchors 0, 2, 8, 10 (cells 0..3). One channel pair per token:
    the scores to own anchor are chosen, r = 2 merges positions 5 (score 1) and 1 (0.8)."""
    vec = {0: (1, 0), 2: (1, 0), 8: (1, 0), 10: (1, 0)}
    score = {1: 0.8, 4: 0.0, 5: 1.0, 3: -0.5, 6: 0.1, 7: 0.2, 9: 0.3, 12: 0.4, 13: -1.0, 11: 0.5, 14: 0.6, 15: 0.7}
    for p, c in score.items():
        vec[p] = (c, (1 - c * c) ** 0.5)
    metric = torch.tensor([[vec[p] for p in range(16)]], dtype=torch.float32)
    got = ops.match_cell_ref(metric, 2, 4, 4, 2, 2)[0].tolist()
    # S = 12, r = 2: kept sources 3,4,6,7,9,11,12,13,14,15 -> 0..9; anchors -> 10 + cell; 1, 5 -> 10 (cell 0)
    want = [10, 10, 11, 0, 1, 10, 2, 3, 12, 4, 13, 5, 6, 7, 8, 9]
    assert got == want
    assert ops.match_cell_ref(metric, 0, 4, 4, 2, 2)[0].tolist() == [
        12, 0, 13, 1, 2, 3, 4, 5, 14, 6, 15, 7, 8, 9, 10, 11]


def test_score_is_to_own_anchor_not_the_best():
    """Token 3 (cell 1) equals anchor 0 (cell 0) and is orthogonal to its own anchor 2: global
    matching would merge it first; cell matching scores it 0 and merges token 1 (own anchor)."""
    metric = torch.zeros(1, 8, 2)  # 2x4 grid, 2x2 cells: anchors 0 and 2
    metric[0, 0] = torch.tensor([1.0, 0.0])
    metric[0, 2] = torch.tensor([0.0, 1.0])
    metric[0, 3] = torch.tensor([1.0, 0.0])  # cos 0 to own anchor 2, 1 to anchor 0
    metric[0, 1] = torch.tensor([0.9, 0.1])  # cos ~0.99 to own anchor 0
    metric[0, [4, 5, 6, 7]] = torch.tensor([-1.0, -1.0])
    cell = ops.match_cell_ref(metric, 1, 2, 4, 2, 2)[0].tolist()
    assert cell[1] == cell[0] and cell[3] != cell[0]
    src, dst = core.grid(2, 4, 2, 2)
    glob = ops.match_bipartite_ref(metric, 1, src, dst)[0].tolist()
    assert glob[3] == glob[0]


def test_ties_go_to_the_lower_position():
    """All tokens equal: every score ties at 1; r = 3 merges the three lowest source positions."""
    metric = torch.ones(1, 16, 3)
    slot = ops.match_cell_ref(metric, 3, 4, 4, 2, 2)[0]
    src, _ = core.grid(4, 4, 2, 2)
    merged = [p for p in src if slot[p] >= 12 - 3]
    assert merged == [1, 3, 4]


def test_bad_arguments():
    metric = torch.randn(1, 16, 3)
    with pytest.raises(ValueError, match="does not divide"):
        ops.match_cell_ref(metric, 1, 4, 4, 3, 2)
    with pytest.raises(ValueError, match="within"):
        ops.match_cell_ref(metric, 13, 4, 4, 2, 2)
    with pytest.raises(ValueError, match="do not form"):
        ops.match_cell_ref(metric, 1, 4, 5, 2, 1)


def test_custom_op_and_core_event():
    metric = torch.randn(2, 24, 4)
    events = []
    with core.observe(lambda e: events.append(e) if isinstance(e, core.MatchEvent) else None):
        fns = core.cell_match(metric, 5, 4, 6, 2, 2)
    (e,) = events
    assert e.kind == "cell" and e.count == 5 and e.capacity == 18
    assert torch.equal(e.slot, ops.match_cell_ref(metric, 5, 4, 6, 2, 2))
    assert torch.equal(torch.ops.edgemerge.match_cell(metric, 5, 4, 6, 2, 2), e.slot)
    merged, size = fns.merge(metric)
    assert merged.shape == (2, 19, 4) and float(size.sum()) == 48.0
    assert core.cell_match(metric, 0, 4, 6, 2, 2).slot is None


def test_plan_field_and_dispatch():
    table = {"ffn": {"ratio": 0.5, "grid": [2, 2], "stages": [3], "match": "cell"}}
    plan = plan_from_table("segformer-b0", table)
    assert plan.ffn[3] == GridSite(0.5, 2, 2, "cell")
    assert plan_dict(plan)["ffn"]["3"]["match"] == "cell"
    glob = plan_from_table("segformer-b0", {"ffn": {"ratio": 0.5, "grid": [2, 2], "stages": [3]}})
    assert "match" not in plan_dict(glob)["ffn"]["3"]  # manifests of global plans keep their bytes
    with pytest.raises(EdgemergeError, match="'global', 'cell'"):
        plan_from_table("segformer-b0", {"ffn": {"ratio": 0.5, "grid": [2, 2], "stages": [3], "match": "local"}})
    metric = torch.randn(1, 16, 3)
    kinds = []
    with core.observe(lambda e: kinds.append(e.kind) if isinstance(e, core.MatchEvent) else None):
        cell = grid_match(metric, GridSite(0.25, 2, 2, "cell"), (4, 4))
        grid_match(metric, GridSite(0.25, 2, 2), (4, 4))
    assert kinds == ["cell", "bipartite"]
    assert torch.equal(cell.slot, ops.match_cell_ref(metric, 4, 4, 4, 2, 2))


def test_judge_reads_cell_sites():
    """The validator's judge: the reference decision passes; a slot that sends one merged token
    to a neighbouring cell's anchor (a plausible kernel bug) fails."""
    g = torch.Generator().manual_seed(3)
    metric = torch.randn(1, 16, 4, generator=g)
    r, (src, dst) = 4, core.grid(4, 4, 2, 2)
    args = {"src": src, "dst": dst, "protect": 0, "height": 4, "width": 4, "sy": 2, "sx": 2}
    own = ops.match_cell_ref(metric, r, 4, 4, 2, 2).numpy()
    margins = compare.decision_margins(metric.numpy(), "cell", r, args)
    assert np.isinf(margins[1]).all() and np.isfinite(margins[0][0, list(src)]).all()
    ok = compare.judge_site(own, own, "cell", r, args, margins, 1e-5)
    assert ok["merging_same_destination"] == 1.0
    wrong = own.copy()
    moved = next(p for p in src if own[0, p] >= 12 - r)
    wrong[0, moved] = 12 - r + (own[0, moved] - (12 - r) + 1) % 4  # the next cell's anchor
    bad = compare.judge_site(wrong, own, "cell", r, args, margins, 1e-5)
    assert bad["merging_same_destination"] < 1.0
