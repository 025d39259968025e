"""`edgemerge show`: merge decisions recorded during forward and drawn at the image's size, with a
caption strip (site, legend) below the image, never over it."""

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from edgemerge.cli import main
from edgemerge.merge.patch import merged_model
from edgemerge.show.merges import (GROUP_COLOURS, MIN_CAPTION_WIDTH, MergeSite, draw_site, group_colours, legend_entries,
                            record_merges, select_sites)

W, H = 200, 150  # not the model's resolution, not square: the picture must still be 200x150


@pytest.fixture
def image(tmp_path):
    rng = np.random.default_rng(0)
    arr = np.zeros((H, W, 3), np.uint8)
    arr[: H // 2] = (120, 170, 230)  # sky
    arr[H // 2:] = (90, 90, 90)  # road
    arr[40:110, 60:120] = rng.integers(0, 255, (70, 60, 3))  # a busy object
    path = tmp_path / "scene.png"
    Image.fromarray(arr).save(path)
    return path


def _one_error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip() and not line.startswith("note:")]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("edgemerge: error:"), result.output
    return lines[0]


def test_show_writes_one_png_per_site_at_image_size(image, tmp_path):
    out = tmp_path / "merges.png"
    result = CliRunner().invoke(main, ["show", "--model", "segformer-b0", "--variant", "fast", "--image", str(image),
                                       "--resolution", "128x128", "--out", str(out)])
    assert result.exit_code == 0, result.output
    files = [out] + [tmp_path / f"merges_site{k}.png" for k in (1, 2, 3)]
    for f in files:  # fast: kv of stages 1, 2 and queries of stages 3, 4; the caption strip below
        with Image.open(f) as im:
            assert im.size[0] == W and im.size[1] > H and im.mode == "RGB"
    assert not (tmp_path / "merges_site4.png").exists()
    assert "stage 1 block 0 kv" in result.output and "stage 3 block 0 queries" in result.output
    with Image.open(image) as a, Image.open(files[2]) as b:  # something was drawn
        assert np.abs(np.asarray(a, np.int16) - np.asarray(b.convert("RGB"), np.int16)[:H]).mean() > 5


def test_show_no_caption_is_exactly_the_image_size(image, tmp_path):
    out = tmp_path / "bare.png"
    result = CliRunner().invoke(main, ["show", "-m", "segformer-b0", "-v", "fast", "-i", str(image), "-r", "128x128",
                                       "--site", "2", "--no-caption", "-o", str(out)])
    assert result.exit_code == 0, result.output
    with Image.open(out) as im:
        assert im.size == (W, H)


def test_show_one_site(image, tmp_path):
    out = tmp_path / "one.png"
    result = CliRunner().invoke(main, ["show", "-m", "segformer-b0", "-v", "n2d", "-i", str(image), "-r", "128x128",
                                       "--site", "3", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.glob("one*.png")) == ["one.png"]
    with Image.open(out) as im:
        assert im.size[0] == W and im.size[1] > H
    assert "stage 4 block 0 pool" in result.output


def test_show_missing_image_exits_2(tmp_path):
    result = CliRunner().invoke(main, ["show", "--model", "segformer-b0", "--variant", "fast",
                                       "--image", str(tmp_path / "missing.png"), "--out", str(tmp_path / "m.png")])
    assert "missing.png" in _one_error_line(result)


def test_show_unreadable_image_and_bad_site_exit_2(image, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    _one_error_line(CliRunner().invoke(main, ["show", "-m", "segformer-b0", "-v", "fast", "-i", str(bad)]))
    result = CliRunner().invoke(main, ["show", "-m", "segformer-b0", "-v", "fast", "-i", str(image), "-r", "128x128",
                                       "--site", "9", "-o", str(tmp_path / "x.png")])
    assert "--site 9" in _one_error_line(result)


def test_recorded_slots_match_the_plan():
    """Each Segformer site's slot covers its grid, and the kept count is what the plan resolves to."""
    from edgemerge.merge.plan import get_plan
    from edgemerge.merge.counts import resolve

    model = merged_model("segformer-b0", "hq", resolution=(128, 128)).eval()
    with record_merges(model) as sites, torch.no_grad():
        model(torch.randn(1, 3, 128, 128))
    stages = {s["stage"]: s for s in resolve("segformer-b0", get_plan("segformer-b0", "hq"), (128, 128))["stages"]}
    assert len(sites) == 2 + 2 + 2 + 2  # segformer-b0: 2 blocks per stage, each merges once
    for s in sites:
        st = stages[s.stage]
        assert s.slot.shape == (s.grid[0] * s.grid[1],)
        assert len(np.unique(s.slot)) == s.tokens_out == (st["kv_kept"] if s.kind == "kv" else st["queries_kept"])
    chosen = select_sites(sites)
    assert [(s.stage, s.kind, s.block) for s in chosen] == [(1, "kv", 0), (2, "kv", 0), (3, "queries", 0),
                                                            (4, "queries", 0)]
    # the recorder only subscribed: it leaves no observer behind
    from edgemerge.merge import core

    assert not core.observed()


def test_vit_sites_compose_to_the_patch_grid():
    """ToMe: each site's groups live on the original patch grid and only grow block by block."""
    from edgemerge.merge.reference import build_reference

    model, _, _ = build_reference("vit-t", "tome", resolution=(64, 64))
    with record_merges(model) as sites, torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    assert sites and all(s.kind == "tokens" and s.grid == (4, 4) for s in sites)
    assert len(select_sites(sites)) == len(sites)
    outs = [s.tokens_out for s in sites]
    assert outs == sorted(outs, reverse=True)
    for a, b in zip(sites, sites[1:]):  # tokens merged together stay together
        for g in np.unique(a.slot):
            assert len(np.unique(b.slot[a.slot == g])) == 1


def test_draw_site_leaves_unmerged_tokens_clear():
    img = Image.new("RGB", (40, 20), (100, 100, 100))
    site = MergeSite("encoder.stages.0.blocks.0.attn", "kv", (2, 4), np.array([0, 1, 2, 3, 4, 4, 5, 6]), 8, 7)
    arr = np.asarray(draw_site(img, site, label=False))
    assert arr.shape == (20, 40, 3)
    for y0, x0 in [(0, 0), (0, 10), (0, 20), (0, 30), (10, 20), (10, 30)]:  # tokens that stayed alone:
        assert (arr[y0 + 1:y0 + 10, x0 + 1:x0 + 10] == 100).all()  # clear inside their thin grey border
    assert (arr[0:10, 10] == 200).all()  # the border between two unmerged tokens
    assert not (arr[12:18, 2:18] == 100).any()  # its first two tokens (slot 4) merged: coloured


def _site(slot, grid):
    return MergeSite("encoder.stages.2.blocks.0.attn", "queries", grid, np.asarray(slot), len(slot),
                     len(np.unique(slot)))


def test_groups_one_colour_each_and_touching_groups_differ():
    rng = np.random.default_rng(3)
    slot = rng.integers(0, 30, 16 * 24)  # scattered groups, as bipartite matching makes them
    site = _site(slot, (16, 24))
    groups = site.groups()
    colour = group_colours(groups)
    assert set(colour) == set(np.unique(groups[groups >= 0]).tolist())
    for a, b in ((groups[:, 1:], groups[:, :-1]), (groups[1:, :], groups[:-1, :])):
        touching = (a != b) & (a >= 0) & (b >= 0)
        assert touching.any()
        assert all(colour[x] != colour[y] for x, y in zip(a[touching].tolist(), b[touching].tolist()))
    # drawn: every cell of a group has that group's colour (over a flat image, cell centres)
    img = Image.new("RGB", (24 * 10, 16 * 10), (0, 0, 0))
    arr = np.asarray(draw_site(img, site, label=False), np.float32)
    centres = arr[5::10, 5::10]
    for gid, c in colour.items():
        assert np.allclose(centres[groups == gid], 0.55 * GROUP_COLOURS[c], atol=1)
    few = _site(np.array([0, 0, 1, 1, 2, 2, 3, 3, 4]), (3, 3))  # fewer groups than colours: all distinct
    assert len(set(group_colours(few.groups()).values())) == 4


@pytest.mark.parametrize("size", [(40, 30), (128, 96), (480, 360)])
def test_caption_is_below_the_image_and_holds_the_legend(size):
    """Small frames too: the picture above the strip is exactly the uncaptioned one."""
    img = Image.new("RGB", size, (100, 100, 100))
    site = _site(np.array([0, 1, 2, 3, 4, 4, 5, 6]), (2, 4))
    bare = np.asarray(draw_site(img, site, label=False))
    full = np.asarray(draw_site(img, site))
    W0, H0 = size
    assert full.shape[1] == max(W0, MIN_CAPTION_WIDTH) and full.shape[0] > H0 + 3 * 13
    assert (full[:H0, :W0] == bare).all()  # the caption covers nothing
    strip = full[H0:]
    kinds = [k for k, _ in legend_entries(site)]
    assert kinds == ["merged", "unmerged"]
    assert "1 groups of 2 tokens" in legend_entries(site)[0][1] and "6 tokens merged with nothing" in legend_entries(site)[1][1]
    assert (strip == GROUP_COLOURS[0].astype(np.uint8)).all(axis=-1).sum() >= 64  # the merged swatch
    assert (strip == (200, 200, 200)).all(axis=-1).sum() >= 30  # the unmerged swatch's grey border
    assert (strip[:, :, 0] < 60).sum() > 50  # text


def test_show_says_where_the_default_output_went(image, tmp_path, monkeypatch):
    """The default `merges.png` lands in the current directory: the path printed is absolute."""
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["show", "--model", "segformer-b0", "--variant", "fast", "--image", str(image),
                                       "--resolution", "128x128"])
    assert result.exit_code == 0, result.output
    assert f"{(tmp_path / 'merges.png').resolve()}: " in result.stdout
