"""`edgemerge bench` on ONNX Runtime and PyTorch (CPU), its report, and its one-line errors.

One small segformer-b0 `fast` bundle at 128x128 (the smallest size whose kv grids divide by the
4x4 cell) serves every test; `--unmerged` exports its baseline on the fly.
"""

import json
import os
import shutil
import stat

import pytest

from edgemerge.device import cli as device_cli
from click.testing import CliRunner

from edgemerge.bench.core import latency_stats
from edgemerge.bench.power import parse_tegrastats
from edgemerge.cli import main
from edgemerge.contracts.manifest import ExportOptions
from edgemerge.export.bundle import export_bundle

REPORT_FIELDS = ("artifact", "baseline", "backend", "device", "iters", "warmup", "models", "speedup_p50",
                 "flop_ratio", "versions", "machine")
MODEL_FIELDS = ("latency_ms", "throughput_ips", "memory", "label", "gflops", "raw_ms")
LATENCY_FIELDS = ("p50", "p90", "p99", "mean", "throughput_ips")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "b0-fast"
    export_bundle(ExportOptions(model="segformer-b0", variant="fast", resolution=(128, 128), out=str(out)))
    return out


def _one_error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("edgemerge: error:"), result.output
    return lines[0]


def _check_report(report: dict, roles: tuple[str, ...], iters: int) -> None:
    for key in REPORT_FIELDS:
        assert key in report, key
    assert set(report["models"]) == set(roles)
    for role in roles:
        m = report["models"][role]
        for key in MODEL_FIELDS:
            assert key in m, (role, key)
        for key in LATENCY_FIELDS:
            assert m["latency_ms"][key] > 0, (role, key)
        assert m["latency_ms"]["p50"] <= m["latency_ms"]["p90"] <= m["latency_ms"]["p99"]
        assert len(m["raw_ms"]) == iters
        assert "kind" in m["memory"] and "peak_mb" in m["memory"]
    assert report["versions"]["edgemerge"] and report["machine"]["cpu_count"] >= 1


@pytest.mark.slow
def test_bench_onnxruntime_unmerged(bundle, tmp_path):
    jpath, ppath = tmp_path / "bench.json", tmp_path / "lat.png"
    result = CliRunner().invoke(main, ["bench", str(bundle), "--unmerged", "--iters", "4", "--warmup", "1",
                                       "--report", str(jpath), "--plot", str(ppath)])
    assert result.exit_code == 0, result.output
    report = json.loads(jpath.read_text())
    _check_report(report, ("merged", "baseline"), 4)
    assert report["backend"] == "onnxruntime" and report["device"] == "cpu"
    assert report["iters"] == 4 and report["warmup"] == 1 and report["interleaved"]
    assert report["models"]["merged"]["variant"] == "fast" and report["models"]["baseline"]["variant"] == "none"
    p50 = {r: report["models"][r]["latency_ms"]["p50"] for r in ("merged", "baseline")}
    assert report["speedup_p50"] == pytest.approx(p50["baseline"] / p50["merged"])
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert report["flop_ratio"] == pytest.approx(manifest["plan"]["gflops"]["ratio"], rel=0.02)
    assert report["onnxruntime_session"]["intra_op_num_threads"] == os.cpu_count()
    assert ppath.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "speed-up" in result.output and "FLOP ratio" in result.output


@pytest.mark.slow
def test_bench_torch_backend_cpu(bundle, tmp_path):
    jpath = tmp_path / "t.json"
    result = CliRunner().invoke(main, ["bench", str(bundle), "--backend", "torch", "--unmerged", "--iters", "2",
                                       "--warmup", "1", "--report", str(jpath)])
    assert result.exit_code == 0, result.output
    report = json.loads(jpath.read_text())
    _check_report(report, ("merged", "baseline"), 2)
    assert report["backend"] == "torch" and report["speedup_p50"] > 0
    assert report["flop_ratio"] == pytest.approx(report["manifest_flop_ratio"], rel=0.02)
    assert (tmp_path / "t.png").is_file()  # the plot defaults to the JSON path with .png


def test_bench_explicit_baseline_and_onnx_file(bundle, tmp_path):
    jpath = tmp_path / "b.json"
    result = CliRunner().invoke(main, ["bench", str(bundle / "model.onnx"), "--baseline", str(bundle),
                                       "--iters", "2", "--warmup", "0", "--report", str(jpath)])
    assert result.exit_code == 0, result.output
    report = json.loads(jpath.read_text())
    _check_report(report, ("merged", "baseline"), 2)
    assert report["flop_ratio"] == 1.0 and report["baseline_kind"] == "given"


def test_bench_unmerged_reuses_a_kept_baseline(bundle, tmp_path):
    """--baseline-dir: a matching unmerged bundle there is reused, not exported again."""
    from edgemerge.bench.core import unmerged_name

    manifest = json.loads((bundle / "manifest.json").read_text())
    kept = tmp_path / unmerged_name(manifest)
    shutil.copytree(bundle, kept)  # stands in for the unmerged export (same settings, variant none)
    import hashlib

    import onnx

    from edgemerge.contracts.identity import stamp

    unmerged = {**manifest, "variant": "none"}
    model = onnx.load(str(kept / "model.onnx"))
    stamp(model, unmerged)  # the ONNX says what the manifest says, as a real unmerged export's would
    onnx.save(model, str(kept / "model.onnx"))
    unmerged["onnx_sha256"] = hashlib.sha256((kept / "model.onnx").read_bytes()).hexdigest()
    (kept / "manifest.json").write_text(json.dumps(unmerged))
    result = CliRunner().invoke(main, ["bench", str(bundle), "--unmerged", "--baseline-dir", str(tmp_path),
                                       "--iters", "2", "--report", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    assert "reusing the unmerged baseline" in result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["baseline"] == str(kept / "model.onnx")


def test_bench_without_baseline_has_no_ratio(bundle, tmp_path):
    jpath = tmp_path / "one.json"
    result = CliRunner().invoke(main, ["bench", str(bundle), "--iters", "2", "--report", str(jpath)])
    assert result.exit_code == 0, result.output
    report = json.loads(jpath.read_text())
    _check_report(report, ("merged",), 2)
    assert report["speedup_p50"] is None and report["baseline"] is None


def test_bench_json_flag_prints_the_report(bundle, tmp_path):
    """--json as in every command: stdout is the report alone; the files are written all the same."""
    jpath = tmp_path / "r.json"
    result = CliRunner().invoke(main, ["bench", str(bundle), "--iters", "2", "--warmup", "0",
                                       "--report", str(jpath), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    _check_report(report, ("merged",), 2)
    assert report == json.loads(jpath.read_text()) and (tmp_path / "r.png").is_file()
    assert f"report: {jpath.resolve()}" in result.stderr


def test_bench_artifact_without_manifest_exits_2(bundle, tmp_path):
    shutil.copy(bundle / "model.onnx", tmp_path / "model.onnx")
    line = _one_error_line(CliRunner().invoke(main, ["bench", str(tmp_path / "model.onnx")]))
    assert "manifest.json" in line
    line = _one_error_line(CliRunner().invoke(main, ["bench", str(tmp_path)]))
    assert "manifest.json" in line
    line = _one_error_line(CliRunner().invoke(main, ["bench", str(tmp_path / "nope.plan")]))
    assert "not found" in line


def test_bench_power_without_tegrastats_exits_2(bundle, tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    result = CliRunner(env={"PATH": str(empty)}).invoke(main, ["bench", str(bundle), "--power", "--iters", "1"])
    assert "tegrastats" in _one_error_line(result)


def test_bench_trt_without_tensorrt_exits_2(bundle):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    _one_error_line(CliRunner().invoke(main, ["bench", str(bundle), "--backend", "trt"]))


def test_bench_both_baselines_refused(bundle):
    line = _one_error_line(CliRunner().invoke(main, ["bench", str(bundle), "--unmerged", "--baseline", str(bundle)]))
    assert "--baseline" in line


@pytest.mark.slow
def test_bench_power_with_fake_tegrastats(bundle, tmp_path):
    """A stand-in tegrastats printing an Orin line every 50 ms: energy per frame = power x time per frame."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "tegrastats"
    fake.write_text("#!/bin/sh\nwhile true; do echo 'RAM 2000/7000MB CPU [5%@729] VDD_IN 6000mW/5500mW "
                    "VDD_CPU_GPU_CV 900mW/800mW'; sleep 0.05; done\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    jpath = tmp_path / "p.json"
    env = {"PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = CliRunner(env=env).invoke(main, ["bench", str(bundle), "--power", "--iters", "2", "--report", str(jpath)])
    assert result.exit_code == 0, result.output
    power = json.loads(jpath.read_text())["models"]["merged"]["power"]
    assert power["mean_mw"] == pytest.approx(6000.0)
    per_frame_s = power["seconds"] / power["iterations"]
    assert power["energy_per_frame_mj"] == pytest.approx(6000.0 * per_frame_s)
    assert "mJ/frame" in result.output


def test_parse_tegrastats_lines():
    orin = ("11-21-2026 10:00:00 RAM 3141/7620MB (lfb 2x4MB) CPU [12%@1510,5%@1510] GR3D_FREQ 0% "
            "cpu@49.5C VDD_IN 4728mW/4700mW VDD_CPU_GPU_CV 510mW/500mW VDD_SOC 1374mW/1370mW")
    xavier = "RAM 2394/3964MB CPU [9%@1479] GR3D_FREQ 0%@76 POM_5V_IN 3456/3402 POM_5V_GPU 0/0"
    assert parse_tegrastats(orin) == 4728.0
    assert parse_tegrastats(xavier) == 3456.0
    assert parse_tegrastats("RAM 2394/3964MB CPU [9%@1479]") is None


def test_latency_stats():
    s = latency_stats([0.010] * 9 + [0.020], batch=2)
    assert s["p50"] == pytest.approx(10.0) and s["max"] == pytest.approx(20.0)
    assert s["p90"] <= s["p99"] <= 20.0
    assert s["throughput_ips"] == pytest.approx(2 / 0.011)


@pytest.mark.slow
def test_bench_trt_path_with_onnxruntime_standing_in(bundle, tmp_path, monkeypatch):
    """`bench model.plan --baseline base/model.plan` as on a device: only TensorRT itself (its
    presence, the engine loader, the runner) is replaced by ONNX Runtime on each bundle's
    model.onnx; artifact resolution, interleaving, the report and the plot run as with engines."""
    import types

    import polygraphy.backend.trt as ptrt
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

    import edgemerge.trt.lib as trt_mod
    import edgemerge.trt.builder as builder

    monkeypatch.setattr(trt_mod, "require_tensorrt", lambda: types.SimpleNamespace(__version__="10.3.0"))
    monkeypatch.setattr(builder, "load_engine", lambda path, plugins=None: os.fspath(path))
    class EngineRunner(OnnxrtRunner):  # polygraphy's TrtRunner exposes the engine once activated
        def activate_impl(self):
            super().activate_impl()
            self.engine = types.SimpleNamespace(device_memory_size_v2=3 << 20)

    monkeypatch.setattr(ptrt, "TrtRunner", lambda engine, name: EngineRunner(
        SessionFromOnnx(os.path.join(os.path.dirname(engine()), "model.onnx"), providers=["cpu"]), name=name))
    base = tmp_path / "base"
    export_bundle(ExportOptions(model="segformer-b0", variant="none", resolution=(128, 128), out=str(base)))
    merged = tmp_path / "merged"
    shutil.copytree(bundle, merged)
    for b in (merged, base):  # an engine as build_on_device.sh leaves it: plan, layer info, record
        (b / "model.plan").write_bytes(b"engine")
        sites = json.loads((b / "manifest.json").read_text())["merge_sites"]
        layers = [{"Name": name, "LayerType": "PluginV3"} for names in sites.values() for name in names]
        (b / "model.plan.layers.json").write_text(json.dumps({"Layers": layers, "Bindings": []}))
        lib = b / "libedgemerge_plugins.so"
        lib.write_bytes(b"\x7fELF")
        assert device_cli.main(["record", "--bundle", str(b), "--trt-version", "10.3.0", "--graph", "strip-functions",
                                 "--layers", str(b / "model.plan.layers.json"), "--plugins", str(lib)]) == 0
    jpath = tmp_path / "bench.json"
    result = CliRunner().invoke(main, ["bench", str(merged), "--backend", "trt", "--baseline", str(base),
                                       "--iters", "3", "--warmup", "1", "--report", str(jpath),
                                       "--plot", str(tmp_path / "lat.png")])
    assert result.exit_code == 0, result.output
    report = json.loads(jpath.read_text())
    _check_report(report, ("merged", "baseline"), 3)
    assert report["backend"] == "trt" and report["device"] == "cuda" and report["speedup_p50"] > 0
    assert report["models"]["merged"]["path"].endswith("model.plan")
    mem = report["models"]["merged"]["memory"]
    assert mem["context_mb"] == 3 and mem["engine_file_mb"] == len(b"engine") / 2 ** 20
    assert mem["peak_mb"] == mem["context_mb"] + mem["engine_file_mb"]
    assert (tmp_path / "lat.png").stat().st_size > 0
    n = sum(len(v) for v in json.loads((merged / "manifest.json").read_text())["merge_sites"].values())
    assert n > 0 and report["models"]["merged"]["engine_build"]["graph"] == "strip-functions"
    assert f"plugin layers: TokenMatchBipartite" in result.output and "no merge sites" in result.output
