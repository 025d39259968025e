"""`edgemerge plan`: static counts of the published Segformer++ settings, and one-line errors."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from edgemerge.cli import main
from edgemerge.contracts.errors import EdgemergeError
from edgemerge.merge.plan import get_plan
from edgemerge.merge.counts import resolve


def _plan(*args: str):
    return CliRunner().invoke(main, ["plan", *args])


@pytest.mark.parametrize("variant,kv_kept,q3_kept,q4_kept", [("hq", 410, 820, 205), ("fast", 103, 410, 103)])
def test_segformer_b5_1024(variant, kv_kept, q3_kept, q4_kept):
    res = _plan("--model", "segformer-b5", "--variant", variant, "--resolution", "1024x1024", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    stages = out["stages"]
    assert [s["stage"] for s in stages] == [1, 2, 3, 4]
    for s in stages:
        for key in ("queries_in", "queries_kept", "kv_in", "kv_kept"):
            assert type(s[key]) is int
    for s in stages[:2]:  # keys/values merged, queries never
        assert (s["kv_in"], s["kv_kept"]) == (1024, kv_kept)
        assert s["queries_kept"] == s["queries_in"]
    assert (stages[2]["queries_in"], stages[2]["queries_kept"]) == (4096, q3_kept)
    assert (stages[3]["queries_in"], stages[3]["queries_kept"]) == (1024, q4_kept)
    for s in stages[2:]:
        assert s["kv_kept"] == s["kv_in"]
    g = out["gflops"]
    assert g["merged"] < g["unmerged"] and g["ratio"] > 1


def test_plan_table_output():
    res = _plan("--model", "segformer-b0", "--variant", "n2d", "--resolution", "256x256")
    assert res.exit_code == 0, res.output
    assert "GFLOPs" in res.output


def _one_line_error(res) -> str:
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgemerge: error: "), res.output
    return lines[0]


def test_unknown_variant_names_the_known_ones():
    line = _one_line_error(_plan("--model", "segformer-b0", "--variant", "tome"))
    assert "tome" in line and all(v in line for v in ("none", "hq", "fast", "n2d"))
    line = _one_line_error(_plan("--model", "segmenter-vit-t", "--variant", "hq"))
    assert "algm" in line


def test_resolution_not_divisible_by_the_grid():
    # segformer-b0 hq at 528x528: stage grids 132/66/33/17; kv grids 16x16 (fine), stage-3 queries
    # 33x33 do not divide into 4x4 cells
    line = _one_line_error(_plan("--model", "segformer-b0", "--variant", "hq", "--resolution", "528x528"))
    assert "stage 3 queries" in line and "33x33" in line and "4x4" in line
    # 544x544: stage-1 keys/values 17x17 do not divide into 2x2 cells
    line = _one_line_error(_plan("--model", "segformer-b0", "--variant", "hq", "--resolution", "544x544"))
    assert "stage 1 keys/values" in line
    with pytest.raises(EdgemergeError, match="4x4 cells"):
        resolve("segformer-b0", get_plan("segformer-b0", "fast"), (528, 528))


def test_bad_resolution_and_unknown_model():
    _one_line_error(_plan("--model", "segformer-b0", "--variant", "hq", "--resolution", "512"))
    line = _one_line_error(_plan("--model", "segformer-b9", "--variant", "hq"))
    assert "segformer-b9" in line


def test_segmenter_static_algm_counts():
    out = json.loads(_plan("--model", "segmenter-vit-t", "--variant", "algm", "--resolution", "512x512",
                           "--json").output)
    # 32x32 patches: 256 windows, int(0.25 * 256) = 64 merge -> 1025 - 192 = 833 tokens; then
    # global: int(0.10 * ((833 + 1) // 2 - 1)) = 41
    assert out["sites"] == [{"block": 1, "tokens_in": 1025, "tokens_kept": 833},
                            {"block": 5, "tokens_in": 833, "tokens_kept": 792}]
    assert out["tokens_out"] == 792
