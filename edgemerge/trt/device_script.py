"""`build_on_device.sh`: the exact plugin build and `trtexec` lines for a bundle, to run on the
target (engines are not portable, so the engine is built where it runs).

The bundle carries the plugin sources (`plugins/`, copied by `copy_plugin_sources`) and
`edgemerge_device.py` (standard library only), so the device needs CUDA, TensorRT, cmake and a
python3, not this repository nor any Python package.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from edgemerge.device import zipapp
from edgemerge.contracts.files import atomic_write_bytes
from edgemerge.trt.plugins import plugin_source_dir

SCRIPT = "build_on_device.sh"
TOOL = "edgemerge_device.py"  # edgemerge.device as a zipapp (standard library only)
PLUGIN_LIB = "build/plugins/libedgemerge_plugins.so"


def copy_plugin_sources(bundle_dir: str | os.PathLike) -> Path | None:
    """Copy `plugins/` into the bundle (replacing an older copy); None when no sources are found
    (an installed wheel without them): the script then says where to get them."""
    src = plugin_source_dir()
    if src is None:
        return None
    dst = Path(bundle_dir) / "plugins"
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("build", "__pycache__", "*.o", "*.so"))
    return dst


def build_script(manifest: dict, *, onnx_fp16: bool | None = None) -> str:
    """The script text (pure: tested without a device).

    It runs on a stock JetPack 6 shell: the CUDA compiler is named explicitly (`$CUDACXX`, else
    /usr/local/cuda/bin/nvcc, which is not on JetPack's PATH), the architecture comes from
    edgemerge_device.py (driver, a numeric nvidia-smi answer, Jetson's device tree, else 87), and
    the only Python it runs is edgemerge_device.py on the standard library. Which graph trtexec
    parses follows `edgemerge.device.parser.choose_graph` (TensorRT's parser rule); the build record then
    counts the plugin layers of the engine against the manifest's merge sites and fails (exit 1)
    when the plugins did not make it in, unless ALLOW_BODY_ONLY=1.

    Precision (decided here, see also builder.choose_typing):
    - TensorRT 11.x: always strongly typed; no precision flag (trtexec 11 has no --fp16 and fails
      on unknown options; --stronglyTyped is a no-op there: samples/common/sampleOptions.cpp v11.1).
    - TensorRT 10.x, fp16-typed ONNX: --stronglyTyped, so the fp32 parts the exporter kept
      (matching, merge sums, norms) stay fp32.
    - TensorRT 10.x, "fp16" bundle with an fp32-typed ONNX: --fp16 (weak typing).
    - fp32 bundle: no flag on either: an fp32 engine.
    Always --noTF32: trtexec enables TF32 by default (sampleOptions.h v10.3.0 `bool tf32{true}`),
    polygraphy (`edgemerge build`) does not, and TF32 rounding in the matching MatMuls flips
    near-ties; both routes must build the same engine.
    `onnx_fp16` None means "as the manifest says" (export writes an fp16-typed ONNX for fp16).
    """
    precision = manifest.get("precision", "fp32")
    fp16_typed = (precision == "fp16") if onnx_fp16 is None else onnx_fp16
    uses_plugins = manifest.get("merge_ops", "plugin") == "plugin"
    lines = (_preamble(manifest, precision, uses_plugins) + _plugins_and_graph(uses_plugins)
             + _typing(precision, fp16_typed) + _engine_record_validate())
    return "\n".join(lines)


def _preamble(manifest: dict, precision: str, uses_plugins: bool) -> list[str]:
    """What the script needs and reads, and the TensorRT version that every later step depends on."""
    name = f"{manifest.get('model', 'model')} {manifest.get('variant', '')}".strip()
    return [
        "#!/usr/bin/env bash",
        f"# Build the TensorRT engine for {name} ({precision}, merge ops: {manifest.get('merge_ops', 'plugin')})",
        "# on the device it will run on. Written by `edgemerge export`; runs in its own directory.",
        "#",
        "# Needs: TensorRT's trtexec; python3 (standard library only, for " + TOOL + ")"
        + ("; CUDA (nvcc) and cmake for the plugin library." if uses_plugins else "."),
        "# `edgemerge validate` runs at the end only where edgemerge is installed (no torch needed).",
        "# Environment: TRTEXEC, CUDACXX (default /usr/local/cuda/bin/nvcc), CUDA_ARCH (default: asked",
        "# of the GPU, else 87 = Orin), TENSORRT_ROOT (default /usr), ALLOW_BODY_ONLY=1 (accept an",
        "# engine built without the edgemerge plugins).",
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
        "",
        "TRTEXEC=${TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}",
        "",
        "# TensorRT version: trtexec's banner ([TensorRT v100300] = 10.3.0), else Python, else dpkg.",
        "trt_version() {",
        "  local v",
        '  v=$("$TRTEXEC" --help 2>&1 | grep -o "TensorRT v[0-9]*" | head -n1 | tr -dc "0-9" || true)',
        '  if [ -n "$v" ]; then echo "$((v / 10000)).$((v / 100 % 100)).$((v % 100))"; return; fi',
        '  v=$(python3 -c "import tensorrt; print(tensorrt.__version__)" 2>/dev/null || true)',
        '  if [ -n "$v" ]; then echo "$v"; return; fi',
        "  dpkg-query -W -f='${Version}' tensorrt 2>/dev/null || dpkg-query -W -f='${Version}' libnvinfer-bin 2>/dev/null || true",
        "}",
        "TRT_VERSION=$(trt_version)",
        'if [ -z "$TRT_VERSION" ]; then echo "error: TensorRT not found (trtexec, python3 tensorrt, dpkg); set TRTEXEC" >&2; exit 2; fi',
        "TRT_MAJOR=${TRT_VERSION%%.*}",
        'echo "TensorRT $TRT_VERSION"',
        "",
    ]


def _plugins_and_graph(uses_plugins: bool) -> list[str]:
    """Steps 1-2: the plugin library (when the merge ops are plugins) decides which graph trtexec must parse."""
    if uses_plugins:
        lines = [
            "# 1. The plugin library, from the sources this bundle carries (plugins/).",
            "CUDACXX=${CUDACXX:-/usr/local/cuda/bin/nvcc}",
            "ALLOW_BODY_ONLY=${ALLOW_BODY_ONLY:-0}",
            "PLUGINS=no PLUGIN_ARGS=() RECORD_ARGS=()",
            "if [ ! -d plugins ]; then",
            '  echo "note: this bundle carries no plugins/ (the exporting install had none): copy plugins/ of the edgemerge repository here" >&2',
            'elif ! command -v "$CUDACXX" >/dev/null 2>&1; then',
            '  echo "note: no CUDA compiler at $CUDACXX (set CUDACXX): the plugin library cannot be built" >&2',
            "else",
            f"  CUDA_ARCH=${{CUDA_ARCH:-$(python3 {TOOL} arch)}}",
            '  cmake -S plugins -B build/plugins -DCMAKE_CUDA_COMPILER="$CUDACXX" -DTENSORRT_ROOT="${TENSORRT_ROOT:-/usr}" '
            '-DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="$CUDA_ARCH"',
            '  cmake --build build/plugins -j"$(nproc)"',
            "fi",
            f"if [ -f {PLUGIN_LIB} ]; then",
            f"  PLUGINS=yes PLUGIN_ARGS=(--dynamicPlugins={PLUGIN_LIB}) RECORD_ARGS=(--plugins {PLUGIN_LIB})",
            'elif [ "$ALLOW_BODY_ONLY" = 1 ]; then',
            f'  echo "warning: no {PLUGIN_LIB}: building the merge ops from their standard-op bodies (ALLOW_BODY_ONLY=1; correct, slower)" >&2',
            "  RECORD_ARGS=(--allow-body-only)",
            "else",
            f'  echo "error: {PLUGIN_LIB} was not built (see above; when cmake ran: is NvInfer.h under ${{TENSORRT_ROOT:-/usr}}/include[/<triplet>]? '
            'set TENSORRT_ROOT); rerun with ALLOW_BODY_ONLY=1 to build the merge ops from their standard-op bodies" >&2',
            "  exit 1",
            "fi",
            "",
            "# 2. The graph TensorRT's parser must see for that: model.onnx on TensorRT >= 10.7; before 10.7 a",
            "#    carried model-local function always wins over the plugin, so model.trt.onnx drops them;",
            "#    without plugins the bodies inlined (model.native.onnx).",
            f'GRAPH=$(python3 {TOOL} graph --trt-version "$TRT_VERSION" --plugins "$PLUGINS")',
        ]
    else:
        lines = [f'GRAPH=$(python3 {TOOL} graph --trt-version "$TRT_VERSION" --plugins no)',
                 "PLUGIN_ARGS=() RECORD_ARGS=()"]
    return lines + ['GRAPH_FILE=${GRAPH%% *} GRAPH_KIND=${GRAPH#* }', 'echo "graph: $GRAPH_FILE ($GRAPH_KIND)"']


def _typing(precision: str, fp16_typed: bool) -> list[str]:
    """Step 3's flags: precision lives in the ONNX, and each TensorRT major reads it differently (see build_script)."""
    lines = [
        "",
        "# 3. The engine. Precision lives in the ONNX; TensorRT 11 is always strongly typed.",
        "PRECISION_ARGS=() TYPING_ARGS=()",
        'if [ "$TRT_MAJOR" -ge 11 ]; then TYPING_ARGS=(--strongly-typed); fi',
    ]
    if precision == "fp16" and fp16_typed:
        lines += ['if [ "$TRT_MAJOR" -lt 11 ]; then PRECISION_ARGS=(--stronglyTyped) TYPING_ARGS=(--strongly-typed); fi']
    elif precision == "fp16":
        lines += [
            'if [ "$TRT_MAJOR" -ge 11 ]; then',
            '  echo "error: model.onnx is fp32-typed: TensorRT $TRT_VERSION would build fp32; re-export with --precision fp16" >&2',
            "  exit 2",
            "fi",
            "PRECISION_ARGS=(--fp16) TYPING_ARGS=(--fp16)",
        ]
    else:
        lines += ["# fp32 bundle: no precision flag, an fp32 engine."]
    return lines


def _engine_record_validate() -> list[str]:
    """Steps 3-5: the trtexec line, the build record that checks the plugins made it in, then validate."""
    arr = lambda n: f'${{{n}[@]+"${{{n}[@]}}"}}'  # noqa: E731  (an empty array under set -u)
    return [
        " ".join(["TRTEXEC_ARGS=(", '--onnx="$GRAPH_FILE"', arr("PLUGIN_ARGS"), "--saveEngine=model.plan",
                  "--noTF32", "--profilingVerbosity=detailed", "--exportLayerInfo=model.plan.layers.json",
                  "--skipInference", arr("PRECISION_ARGS"), ")"]),
        '"$TRTEXEC" "${TRTEXEC_ARGS[@]}"',
        "",
        "# 4. The build record (model.plan.json), which `edgemerge validate` / `bench` check first. It counts",
        "#    the engine's plugin layers against the manifest's merge sites: fewer is exit 1. It reads",
        "#    TF32 off the trtexec arguments, as the build used them.",
        " ".join([f"python3 {TOOL} record", '--trt-version "$TRT_VERSION"', '--graph "$GRAPH_KIND"',
                  "--layers model.plan.layers.json", '--trtexec-args="${TRTEXEC_ARGS[*]}"', arr("RECORD_ARGS"),
                  arr("TYPING_ARGS")]),
        "",
        "# 5. Compare with the PyTorch reference outputs this bundle carries (reference.npz).",
        "if command -v edgemerge >/dev/null 2>&1; then",
        "  edgemerge validate model.plan",
        "else",
        '  echo "engine built; to compare it with PyTorch\'s outputs here: pip install --no-deps edgemerge && '
        'pip install numpy click rich onnx polygraphy, then: edgemerge validate model.plan"',
        "fi",
        "",
    ]


def write_build_script(bundle_dir: str | os.PathLike, manifest: dict) -> Path:
    """Write `build_on_device.sh` (atomically, executable) and its standard-library helper
    `edgemerge_device.py` (edgemerge.device as a zipapp) into the bundle; returns the script."""
    bundle = Path(bundle_dir)
    onnx_fp16 = None
    if (bundle / "model.onnx").is_file():
        from edgemerge.contracts.graphs import onnx_has_fp16

        onnx_fp16 = onnx_has_fp16(bundle / "model.onnx")
    atomic_write_bytes(bundle / TOOL, zipapp.build(), mode=0o644)
    return atomic_write_bytes(bundle / SCRIPT, build_script(manifest, onnx_fp16=onnx_fp16).encode(), mode=0o755)
