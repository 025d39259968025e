"""TokenMergeCell (docs/ops.md) in PyTorch: on TokenMatchCell's slots it equals TokenMerge (the
one-hot / scatter formula) for every grid, cell shape and r, in fp32 and fp16; hand case; fp32
accumulation; core.cell_match merges with it."""

from __future__ import annotations

import pytest
import torch

from edgemerge.merge import core, ops

GRIDS = [(4, 4, 2, 2), (6, 8, 2, 2), (8, 8, 4, 4), (6, 6, 3, 2), (4, 6, 1, 2), (6, 4, 2, 1)]


def _case(h: int, w: int, sy: int, sx: int, r: int, seed: int, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    metric = torch.randn(2, h * w, 5, generator=g)
    x = (torch.randn(2, h * w, 7, generator=g) * 3).to(dtype)
    size = torch.randint(1, 6, (2, h * w, 1), generator=g).to(dtype)
    return x, size, ops.match_cell_ref(metric, r, h, w, sy, sx)


@pytest.mark.parametrize("h,w,sy,sx", GRIDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_equals_token_merge_on_cell_slots(h, w, sy, sx, dtype):
    S = h * w - (h // sy) * (w // sx)
    for r in sorted({0, 1, S // 3, S // 2, S}):  # r = S: every source merged, K = 0 kept
        x, size, slot = _case(h, w, sy, sx, r, seed=r, dtype=dtype)
        M = h * w - r
        got = ops.token_merge_cell_ref(x, size, slot, h, w, sy, sx, M)
        want = ops.token_merge_ref(x, size, slot, M)
        assert got[0].dtype == dtype and got[1].dtype == dtype and got[0].shape == (2, M, 7)
        tol = dict(rtol=1e-6, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(got[0], want[0], **tol)
        assert torch.equal(got[1], want[1]), r  # integer sizes: exact


def test_hand_case():
    """4x4 grid, 2x2 cells, the slots of test_cell_match.py::test_hand_case (r = 2: tokens 1 and 5
    join anchor 0, kept sources 3,4,6,7,9,11..15 at 0..9, anchors 0,2,8,10 at 10..13)."""
    slot = torch.tensor([[10, 10, 11, 0, 1, 10, 2, 3, 12, 4, 13, 5, 6, 7, 8, 9]], dtype=torch.int32)
    x = torch.arange(16, dtype=torch.float32).reshape(1, 16, 1)
    size = torch.ones(1, 16, 1)
    size[0, 5] = 2.0
    merged, msize = ops.token_merge_cell_ref(x, size, slot, 4, 4, 2, 2, 14)
    kept = [3, 4, 6, 7, 9, 11, 12, 13, 14, 15]
    assert merged[0, :10, 0].tolist() == kept
    assert merged[0, 10, 0].item() == pytest.approx((0 + 1 + 2 * 5) / 4)  # anchor 0 + 1 + 5 (size 2)
    assert merged[0, 11:, 0].tolist() == [2.0, 8.0, 10.0]
    assert msize[0, :, 0].tolist() == [1.0] * 10 + [4.0, 1.0, 1.0, 1.0]


def test_fp16_sums_in_fp32():
    """One 64x64 cell of fp16 tokens 1 + 2^-10: summed in fp16 the mean drifts (and size * x of a
    large token overflows 65504); in fp32 it is exact."""
    x = torch.full((1, 4096, 1), 1.0009765625, dtype=torch.float16)
    slot = torch.zeros(1, 4096, dtype=torch.int32)  # K = 0: all grouped into the one anchor
    merged, size = ops.token_merge_cell_ref(x, torch.ones(1, 4096, 1, dtype=torch.float16), slot, 64, 64, 64, 64, 1)
    assert merged.dtype == torch.float16 and merged.item() == 1.0009765625 and size.item() == 4096
    big = torch.tensor([[[700.0], [900.0], [1.0], [1.0]]], dtype=torch.float16)
    sizes = torch.tensor([[[100.0], [120.0], [1.0], [1.0]]], dtype=torch.float16)
    merged, _ = ops.token_merge_cell_ref(big, sizes, torch.zeros(1, 4, dtype=torch.int32), 2, 2, 2, 2, 1)
    want = (700 * 100 + 900 * 120 + 2) / 222
    assert torch.isfinite(merged).all() and merged.item() == pytest.approx(want, rel=1e-3)


def test_bad_arguments():
    x, size, slot = torch.randn(1, 16, 3), torch.ones(1, 16, 1), torch.zeros(1, 16, dtype=torch.int32)
    with pytest.raises(ValueError, match="disagree"):
        ops.token_merge_cell_ref(x, size, slot, 4, 4, 3, 2, 8)
    with pytest.raises(ValueError, match="disagree"):
        ops.token_merge_cell_ref(x, size, slot, 4, 4, 2, 2, 3)  # fewer outputs than cells


def test_cell_match_merges_with_token_merge_cell(monkeypatch):
    """core.cell_match's merge is TokenMergeCell (what the exporter writes for cell sites), with
    the grid attributes and M = N - r; the bipartite path stays TokenMerge."""
    calls = []
    real = ops.token_merge_cell_ref

    def spy(*args):
        calls.append(args[3:])
        return real(*args)

    monkeypatch.setattr(ops, "token_merge_cell_ref", spy)
    metric = torch.randn(2, 24, 4)
    fns = core.cell_match(metric, 5, 4, 6, 2, 2)
    merged, size = fns.merge(metric)
    assert calls == [(4, 6, 2, 2, 19)]
    want = ops.token_merge_ref(metric, torch.ones(2, 24, 1), fns.slot, 19)
    torch.testing.assert_close(merged, want[0]) and torch.testing.assert_close(size, want[1])
    src, dst = core.grid(4, 6, 2, 2)
    core.bipartite_match(metric, 5, src, dst).merge(metric)
    assert len(calls) == 1
