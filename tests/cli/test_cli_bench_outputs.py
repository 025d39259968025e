"""bench's default outputs land next to the artifact (its bundle directory), not in the current
directory, and the summary names them."""

from __future__ import annotations

import json

import pytest

import edgemerge.bench.core as bench_pkg
from cli_helpers import run_cli


def fake_report(iters=7):
    models = {}
    for role, base in (("merged", 10.0), ("baseline", 14.0)):
        raw = [base + 0.1 * (i % 3) for i in range(iters)]
        models[role] = {"raw_ms": raw, "label": f"segformer-b0 {role}", "throughput_ips": 1000 / base,
                        "latency_ms": {"p50": base, "p90": base + 0.1, "p99": base + 0.2}, "memory": {"peak_mb": 1.0}}
    return {"models": models, "backend": "onnxruntime", "device": "cpu", "iters": iters,
            "speedup_p50": 1.4, "flop_ratio": 1.5}


@pytest.fixture
def no_timing(monkeypatch):
    seen = []
    monkeypatch.setattr(bench_pkg, "run_bench", lambda opts, progress=None, warn=None: seen.append(opts) or fake_report())
    return seen


@pytest.mark.parametrize("which", ["dir", "model.onnx", "model.plan"])
def test_bench_defaults_go_into_the_bundle(tmp_path, monkeypatch, no_timing, which):
    b = tmp_path / "segformer-b0-fast"
    b.mkdir()
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    res = run_cli("bench", b if which == "dir" else b / which)
    assert res.exit_code == 0, res.output
    assert json.loads((b / "bench.json").read_text())["speedup_p50"] == 1.4
    assert (b / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(cwd.iterdir()) == []  # nothing in the current directory
    assert f"report: {(b / 'bench.json').resolve()}\n" in res.stdout
    assert f"plot:   {(b / 'bench.png').resolve()}\n" in res.stdout


def test_bench_report_option_still_decides(tmp_path, no_timing):
    b = tmp_path / "bundle"
    b.mkdir()
    res = run_cli("bench", b, "--report", tmp_path / "out" / "r.json")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "out" / "r.json").is_file() and (tmp_path / "out" / "r.png").is_file()
    assert not (b / "bench.json").exists()


def test_bench_help_says_where_the_defaults_go():
    out = run_cli("bench", "--help").output
    assert "bench.json next to ARTIFACT" in " ".join(out.split())


@pytest.mark.parametrize("iters", [1, 2, 3, 7, 50])
def test_bench_plot_iterations_on_integer_ticks(iters):
    import matplotlib.pyplot as plt

    from edgemerge.bench.core import plot_figure

    fig = plot_figure(fake_report(iters))
    try:
        drift = fig.axes[1]
        lo, hi = drift.get_xlim()
        ticks = [t for t in drift.get_xticks() if lo <= t <= hi]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
        assert list(drift.lines[0].get_xdata()) == list(range(1, iters + 1))  # numbered from 1
    finally:
        plt.close(fig)


@pytest.mark.parametrize("flag", ["--iterations", "--iters"])
def test_bench_takes_trtexecs_iterations(tmp_path, no_timing, flag):
    b = tmp_path / "bundle"
    b.mkdir()
    res = run_cli("bench", b, flag, "7", "--warmup", "2")
    assert res.exit_code == 0, res.output
    assert (no_timing[-1].iters, no_timing[-1].warmup) == (7, 2)


@pytest.mark.parametrize("threads", ["0", "-1"])
def test_bench_threads_below_one_refused(tmp_path, no_timing, threads):
    from cli_helpers import one_line_error, tree

    b = tmp_path / "bundle"
    b.mkdir()
    assert "--threads" in one_line_error(run_cli("bench", b, "--threads", threads))
    assert no_timing == [] and tree(tmp_path) == ["bundle"]
