"""`build_on_device.sh`: the exact plugin build and `trtexec` lines for a bundle, to run on the
target (engines are not portable, so the engine is built where it runs).

The bundle carries the plugin sources (`plugins/`, copied by `copy_plugin_sources`), so the
device needs only CUDA, TensorRT and cmake, not this repository.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from edgemerge.trt.record import atomic_write_bytes

SCRIPT = "build_on_device.sh"
PLUGIN_LIB = "build/plugins/libedgemerge_plugins.so"


def plugin_sources() -> Path | None:
    """The repository's `plugins/` next to the package, or an installed share dir; None if absent."""
    import edgemerge
    import sys

    candidates = [Path(edgemerge.__file__).resolve().parent.parent / "plugins",
                  Path(edgemerge.__file__).resolve().parent / "plugin_sources",  # installed wheel
                  Path(sys.prefix) / "share" / "edgemerge" / "plugins"]
    for c in candidates:
        if (c / "CMakeLists.txt").is_file() or (c / "kernels").is_dir():
            return c
    return None


def copy_plugin_sources(bundle_dir: str | os.PathLike) -> Path | None:
    """Copy `plugins/` into the bundle (replacing an older copy); None when no sources are found
    (an installed wheel without them): the script then says where to get them."""
    src = plugin_sources()
    if src is None:
        return None
    dst = Path(bundle_dir) / "plugins"
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("build", "__pycache__", "*.o", "*.so"))
    return dst


def build_script(manifest: dict, *, has_plugin_sources: bool, onnx_fp16: bool | None = None) -> str:
    """The script text (pure: tested without a device).

    Precision (decided here, see also builder.choose_typing):
    - TensorRT 11.x: always strongly typed; no precision flag (--fp16 is gone, --stronglyTyped is
      the default). An "fp16" bundle with an fp32-typed ONNX is refused (it would build fp32).
    - TensorRT 10.x, fp16-typed ONNX: --stronglyTyped (trtexec has it since 10.0), so the fp32
      parts the exporter kept (matching, merge sums, norms) stay fp32.
    - TensorRT 10.x, "fp16" bundle with an fp32-typed ONNX: --fp16 (weak typing).
    - fp32 bundle: no flag on either: an fp32 engine.
    `onnx_fp16` None means "as the manifest says" (export writes an fp16-typed ONNX for fp16).
    """
    precision = manifest.get("precision", "fp32")
    fp16_typed = (precision == "fp16") if onnx_fp16 is None else onnx_fp16
    uses_plugins = manifest.get("merge_ops", "plugin") == "plugin"
    name = f"{manifest.get('model', 'model')} {manifest.get('variant', '')}".strip()
    arch = [
        'if [ -z "$CUDA_ARCH" ]; then',
        '  CUDA_ARCH=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n1 | tr -d ". " || true)',
        "  CUDA_ARCH=${CUDA_ARCH:-87}",
        "fi",
        'cmake -S plugins -B build/plugins -DTENSORRT_ROOT="${TENSORRT_ROOT:-/usr}" '
        '-DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="$CUDA_ARCH"',
        'cmake --build build/plugins -j"$(nproc)"',
    ]
    lines = [
        "#!/usr/bin/env bash",
        f"# Build the TensorRT engine for {name} ({precision}, merge ops: {manifest.get('merge_ops', 'plugin')})",
        "# on the device it will run on. Written by `edgemerge export`; run it from the bundle directory.",
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
        "",
        "TRTEXEC=${TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}",
        "CUDA_ARCH=${CUDA_ARCH:-}  # empty: ask the GPU (nvidia-smi), else 87 (Jetson Orin)",
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
        'if [ -z "$TRT_VERSION" ]; then echo "TensorRT not found (trtexec, python3 tensorrt, dpkg)" >&2; exit 1; fi',
    ] + (["TRT_MAJOR=${TRT_VERSION%%.*}"] if precision == "fp16" else []) + [
        'echo "TensorRT $TRT_VERSION"',
        "",
    ]
    plugin_args: list[str] = []
    if uses_plugins:
        if has_plugin_sources:
            lines += ["# 1. The plugin library, from the sources this bundle carries (plugins/)."] + arch
        else:
            lines += [
                "# 1. The plugin library. NOTE: this bundle carries no plugins/ sources (the exporting",
                "#    install had none). Copy plugins/ of the edgemerge repository here; without it the",
                "#    engine is built from the ONNX function bodies of the merge ops (correct, slower).",
                "if [ -d plugins ]; then",
            ] + ["  " + line for line in arch] + [
                "else",
                '  echo "note: no plugins/ here; building without the edgemerge plugins" >&2',
                "fi",
            ]
        lines += [
            "PLUGIN_ARGS=() RECORD_ARGS=()",
            f"if [ -f {PLUGIN_LIB} ]; then",
            f"  PLUGIN_ARGS=(--dynamicPlugins={PLUGIN_LIB}) RECORD_ARGS=(--plugins {PLUGIN_LIB})",
            "else",
            f'  echo "warning: {PLUGIN_LIB} was not built (no NvInfer.h under ${{TENSORRT_ROOT:-/usr}}/include'
            '[/<triplet>]; set TENSORRT_ROOT): the merge ops run as their ONNX function bodies (correct, slower)" >&2',
            "fi",
            "",
        ]
        plugin_args = ['${PLUGIN_ARGS[@]+"${PLUGIN_ARGS[@]}"}']
    lines += ["# 2. The engine. Precision lives in the ONNX; TensorRT 11 is always strongly typed.",
              "PRECISION_ARGS=()"]
    if precision == "fp16" and fp16_typed:
        lines += ['if [ "$TRT_MAJOR" -lt 11 ]; then PRECISION_ARGS=(--stronglyTyped); fi']
    elif precision == "fp16":
        lines += [
            'if [ "$TRT_MAJOR" -ge 11 ]; then',
            '  echo "model.onnx is fp32-typed: TensorRT $TRT_VERSION would build fp32; re-export with --precision fp16" >&2',
            "  exit 1",
            "fi",
            "PRECISION_ARGS=(--fp16)",
        ]
    else:
        lines += ["# fp32 bundle: no precision flag, an fp32 engine."]
    trtexec = ['"$TRTEXEC"', "--onnx=model.onnx"] + plugin_args + [
        "--saveEngine=model.plan", '${PRECISION_ARGS[@]+"${PRECISION_ARGS[@]}"}']
    record = ["python3 -m edgemerge.trt.record_engine model.plan --onnx model.onnx",
              '--trt-version "$TRT_VERSION"']
    if uses_plugins:
        record.append('${RECORD_ARGS[@]+"${RECORD_ARGS[@]}"}')
    lines += [
        " ".join(trtexec),
        "# The build record (model.plan.json) that `edgemerge validate` / `bench` check first.",
        " ".join(record),
        "",
        "# 3. Compare with the PyTorch reference outputs this bundle carries (reference.npz).",
        "edgemerge validate model.plan",
        "",
    ]
    return "\n".join(lines)


def write_build_script(bundle_dir: str | os.PathLike, manifest: dict) -> Path:
    """Write `build_on_device.sh` (atomically, executable) into the bundle; returns its path."""
    bundle = Path(bundle_dir)
    onnx_fp16 = None
    if (bundle / "model.onnx").is_file():
        from edgemerge.trt.builder import onnx_has_fp16

        onnx_fp16 = onnx_has_fp16(bundle / "model.onnx")
    text = build_script(manifest, has_plugin_sources=(bundle / "plugins").is_dir(), onnx_fp16=onnx_fp16)
    return atomic_write_bytes(bundle / SCRIPT, text.encode(), mode=0o755)
