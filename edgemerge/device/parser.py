"""TensorRT's ONNX parser rule, per version, and the graph a bundle hands it.

Which implementation a custom-domain node gets (plugin, model-local function, or none) changed at
TensorRT 10.7 and 10.15; `choose_graph` derives from that rule which file to parse so every merge
op gets the intended implementation, and `graph_for` writes it.
"""

from __future__ import annotations

import re
from pathlib import Path

from edgemerge.contracts.errors import EdgemergeError
from edgemerge.contracts.files import atomic_write_bytes, sha256_file
from edgemerge.contracts.manifest import read_manifest
from edgemerge.device.onnxwire import SOURCE_SHA_KEY, derived_from, strip_functions



# ---- TensorRT's ONNX parser: which implementation a node gets -----------------------------------

PLUGIN, FUNCTION, UNSUPPORTED = "plugin", "function", "unsupported"


def parse_version(text: str) -> tuple[int, int, int]:
    """'10.3.0.30' -> (10, 3, 0); missing parts are 0."""
    parts = [int(p) for p in re.findall(r"\d+", text)[:3]]
    while len(parts) < 3:
        parts.append(0)
    return tuple(parts)  # type: ignore[return-value]


def parser_implementation(version: tuple[int, int, int], *, plugin_registered: bool,
                          plugin_namespace: bool, local_function: bool,
                          plugin_override: bool = False) -> str:
    """The implementation TensorRT's ONNX parser gives a node in a custom domain (no built-in
    importer exists for our op types): PLUGIN, FUNCTION (the model-local function, inlined) or
    UNSUPPORTED (the parse fails).

    Sources (the parser is onnx/onnx-tensorrt, NVIDIA/TensorRT's submodule parsers/onnx; the
    per-commit table with its citations is tests/trt/fake_trtexec.py PARSER_TABLE, which the tests
    hold this function to):
    - <= 10.6: `ModelImporter.cpp` `parseNode` at release/10.1-GA (commit 96e78110, lines 153-168;
      also v10.0.0's 973d68d and v10.0.1's eb43908): the built-in importer table (keyed by op_type
      alone, the domain is ignored), then `ctx->localFunctions()` (keyed by function name), and only
      then `FallbackPluginImporter`. TensorRT v10.3.0's parser commit 62bdde2a could not be read;
      the change below is the 10.7 GA changelog's, so JetPack 6 keeps this order: a node whose
      function the file carries is always inlined, plugin or not.
    - 10.7 .. 10.14: Changelog 10.7 GA "Now prioritizes using plugins over local functions when a
      corresponding plugin is available in the registry"; `parseNode` at v10.14's parser commit
      c727277 (and the static check at v10.12's ff761af) asks `isNodeInPluginRegistry` (creator by
      op_type, `plugin_version` or "1", `plugin_namespace` or "") before the local function.
    - >= 10.15 (11.x too): `shouldImportAsPlugin` = (`kENABLE_PLUGIN_OVERRIDE` or a
      `plugin_namespace` attribute) and the plugin is registered: plugin first; otherwise built-in,
      local function ("local function will be preferred over plugin if the flag is unset"), and the
      plugin fallback only for a node with neither (read at v10.16's 6bde659 and v11.0's 5ab48c5;
      10.15's fa5aa9f not readable: Changelog 10.15 GA, include/NvOnnxParser.h v10.15:125-129).
    Our nodes always carry `plugin_namespace="edgemerge"` (plugin_version defaults to "1").
    """
    if version < (10, 7, 0):
        if local_function:
            return FUNCTION
        return PLUGIN if plugin_registered else UNSUPPORTED
    if version < (10, 15, 0):
        if plugin_registered:
            return PLUGIN
        return FUNCTION if local_function else UNSUPPORTED
    if plugin_registered and (plugin_namespace or plugin_override or not local_function):
        return PLUGIN
    return FUNCTION if local_function else UNSUPPORTED


AS_IS, STRIP, NATIVE = "model.onnx", "strip-functions", "native"


def choose_graph(version: tuple[int, int, int], plugins: bool) -> str:
    """Which graph to hand the parser for a plugin bundle (model.onnx: `edgemerge` nodes with
    `plugin_namespace` and their model-local functions), so every merge op gets the intended
    implementation: our plugin when `plugins`, else the standard-op bodies.

    AS_IS: model.onnx leads there. STRIP: model.onnx less its `edgemerge` functions (plugins on
    TensorRT < 10.7, where a carried function always wins). NATIVE: the bodies inlined (the graph
    `--merge-ops native` writes): no plugin, and no reliance on the parser's local-function
    importer. Derived from `parser_implementation`, never restated.
    """
    if not plugins:
        return NATIVE
    if parser_implementation(version, plugin_registered=True, plugin_namespace=True,
                             local_function=True) == PLUGIN:
        return AS_IS
    if parser_implementation(version, plugin_registered=True, plugin_namespace=True,
                             local_function=False) == PLUGIN:
        return STRIP
    raise EdgemergeError(f"TensorRT {'.'.join(map(str, version))}: no graph leads to the edgemerge plugins")


def graph_for(bundle: Path, version: tuple[int, int, int], plugins: bool) -> tuple[str, str]:
    """(file in the bundle to build, graph kind) for this TensorRT and plugin availability; writes
    model.trt.onnx (functions stripped) or model.native.onnx (bodies inlined) when needed."""
    manifest = read_manifest(bundle)
    if manifest.get("merge_ops") == "native":
        return "model.onnx", NATIVE
    choice = choose_graph(version, plugins)
    if choice == AS_IS:
        return "model.onnx", AS_IS
    if choice == STRIP:
        stripped, dropped = strip_functions((bundle / "model.onnx").read_bytes())
        if dropped == 0:
            raise EdgemergeError("model.onnx carries no edgemerge functions to strip: re-export the bundle")
        atomic_write_bytes(bundle / "model.trt.onnx", stripped, mode=0o644)
        return "model.trt.onnx", STRIP
    native = bundle / "model.native.onnx"
    source_sha = sha256_file(bundle / "model.onnx")
    if not native.is_file() or derived_from(native.read_bytes()) != source_sha:
        try:  # the inliner needs onnx + onnxscript: an edgemerge install without torch is enough
            import onnx

            from edgemerge.contracts.graphs import inline_merge_ops
        except ImportError:
            stale = " (the model.native.onnx here was made from another model.onnx)" if native.is_file() else ""
            raise EdgemergeError(
                "without the plugin library the merge ops are built from their bodies, inlined; making "
                f"that graph here{stale} needs `pip install --no-deps edgemerge && pip install onnx onnxscript`, "
                "or export with --merge-ops native") from None
        inlined = inline_merge_ops(onnx.load(str(bundle / "model.onnx")))
        kept = [p for p in inlined.metadata_props if p.key != SOURCE_SHA_KEY]
        del inlined.metadata_props[:]
        inlined.metadata_props.extend(kept)
        inlined.metadata_props.add(key=SOURCE_SHA_KEY, value=source_sha)
        atomic_write_bytes(native, inlined.SerializeToString(), mode=0o644)
    return native.name, NATIVE
