"""Friction a new user meets: a resolution the plan cannot divide names the nearest that work;
bench takes trtexec's --iterations."""

from __future__ import annotations

import pytest

from cli_helpers import one_line_error, run_cli


@pytest.mark.parametrize("model, variant, res, near", [
    ("segformer-b0", "fast", "360x480", "384x512, 256x384"),  # CamVid frames
    ("segformer-b0", "fast", "64x64", "128x128"),  # nothing smaller works
    ("vit-t", "tome", "230x230", "240x240, 224x224"),
])
def test_undividable_resolution_suggests_the_nearest(model, variant, res, near):
    msg = one_line_error(run_cli("plan", "-m", model, "-v", variant, "-r", res))
    assert msg.endswith(f"nearest resolutions that work: {near}")
    for hw in near.split(", "):  # and they do work
        assert run_cli("plan", "-m", model, "-v", variant, "-r", hw, "--json").exit_code == 0


def test_bench_accepts_iterations():
    res = run_cli("bench", "--help")
    assert res.exit_code == 0 and "--iterations" in res.output and "not trtexec's milliseconds" in res.output
