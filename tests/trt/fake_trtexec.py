"""A stand-in for trtexec, for build_on_device.sh tests on machines without TensorRT.

It shares no code with what it stands in for the test of: nothing here comes from the package
under test (edgemerge). What it encodes, and from which source (nothing else is claimed):
- the banner `&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # ...` (samples/common/logging.h,
  NVIDIA/TensorRT v10.3.0; v11.1 appends ` [b106]`);
- unknown options fail the run (trtexec.cpp v10.3.0:235-245), and 11.x has no --fp16/--bf16/--best
  (sampleOptions.cpp v11.1): such a call exits 1 here too;
- which implementation each custom-domain node gets: `PARSER_TABLE` below, transcribed from
  onnx/onnx-tensorrt's `ModelImporter.cpp` (`parseNode`) at every parser commit that could be read,
  and from the changelogs where none could; a plugin counts as registered when --dynamicPlugins
  names an existing file (the registry then answers the node's lookup);
- --exportLayerInfo: trtexec writes `IEngineInspector::getEngineInformation(kJSON)` as it is
  (sampleReporting.cpp v10.3.0:527-531, getLayerInformation in sampleInference.cpp v10.3.0:1359-1370).
  With --profilingVerbosity=detailed that is {"Layers": [{...}], "Bindings": [names]}, each layer
  with "Name", "LayerType", "Inputs"/"Outputs" ([{"Name", "Location", "Dimensions",
  "Format/Datatype"}]), "ParameterType", "TacticValue" (trt-engine-explorer's example engines,
  tools/experimental/trt-engine-explorer/examples/pytorch/resnet/A100/fp16/
  resnet.onnx.engine.graph.json at v10.3.0; its reader trex/parser.py v10.3.0:36-55 takes "Layers"
  and "Bindings" and refuses a list of names: "Make sure to enable detailed ProfilingVerbosity").
  Bindings hold the engine's inputs and outputs (the same example: ["input.1", "191"]). Otherwise
  "Layers" is a list of names. A plugin layer is named after its node (the parser names layers
  by node). Its LayerType: "PluginV2" is the only plugin string trt-engine-explorer knows
  (trex/colors.py v10.3.0:73); the IPluginV3 string is confirmed by no source: $FAKE_TRT_PLUGIN_LAYER_TYPE,
  default "PluginV3" (an assumption; the build record prints the strings a real engine holds).
Every call is appended to $FAKE_TRTEXEC_LOG.
"""

import json
import os
import re
import sys
from pathlib import Path

DOMAIN = "edgemerge"  # the custom domain whose nodes the parser rule is asked about (a string, no import)
PLUGIN, FUNCTION, UNSUPPORTED = "plugin", "function", "unsupported"

# ---- TensorRT's ONNX parser: the importer for a node with no built-in importer ---------------------
# Inputs of each rule, as parseNode sees them:
#   hit       the plugin registry answers the node's lookup: getCreator(op_type, plugin_version or "1",
#             plugin_namespace or "") (FallbackPluginImporter / isNodeInPluginRegistry; importPluginCreator
#             in importerUtils.cpp release/10.1-GA:878-899)
#   has_ns    the node has a `plugin_namespace` attribute
#   function  the model carries a local function named op_type (importLocalFunctions keys
#             ctx->localFunctions() by FunctionProto.name alone: ModelImporter.cpp release/10.1-GA:433-437)
#   override  OnnxParserFlag::kENABLE_PLUGIN_OVERRIDE (trtexec never sets it)
# FallbackPluginImporter fails the parse when the lookup misses: ASSERT_NODE(creator, "Plugin not
# found, are the plugin name, version, and namespace correct?") (onnxOpImporters.cpp release/10.1-GA:6438-6449).


def _function_first(hit: bool, has_ns: bool, function: bool, override: bool) -> str:
    """if (opImporters.count(nodeType)) builtin; else if (ctx->localFunctions().count(nodeType))
    LocalFunctionImporter; else FallbackPluginImporter."""
    if function:
        return FUNCTION
    return PLUGIN if hit else UNSUPPORTED


def _plugin_before_function(hit: bool, has_ns: bool, function: bool, override: bool) -> str:
    """builtin; else if (localFunctions().count(nodeType)) { if (isNodeInPluginRegistry(ctx, node))
    FallbackPluginImporter ("Let plugin take precedence over local function") else
    LocalFunctionImporter }; else FallbackPluginImporter."""
    if function:
        return PLUGIN if hit else FUNCTION
    return PLUGIN if hit else UNSUPPORTED


def _namespace_or_override(hit: bool, has_ns: bool, function: bool, override: bool) -> str:
    """importAsPlugin = (pluginOverriding || attrs.count("plugin_namespace")) && isNodeInPluginRegistry;
    if (importAsPlugin) FallbackPluginImporter; else builtin; else if (localFunctions().count(nodeType))
    LocalFunctionImporter ("local function will be preferred over plugin if the flag is unset");
    else FallbackPluginImporter."""
    if (override or has_ns) and hit:
        return PLUGIN
    if function:
        return FUNCTION
    return PLUGIN if hit else UNSUPPORTED


RULES = {"function-first": _function_first, "plugin-before-function": _plugin_before_function,
         "namespace-or-override": _namespace_or_override}

MI = "onnx/onnx-tensorrt ModelImporter.cpp"
# (TensorRT release, rule, source). The parser commit of a release is NVIDIA/TensorRT's submodule
# pointer parsers/onnx at that tag. "read (mirror)": the git mirror of onnx-tensorrt has the commit,
# line numbers are those of the file there. "read (index)": the commit is not in the mirror; the
# file at exactly that commit was read through the public code index (no line numbers, the function
# is named). "not readable": neither has the commit; the row rests on the changelog quoted.
PARSER_TABLE = [
    ((10, 0, 0), "function-first", f"read (mirror): {MI} @973d68d (v10.0.0 pointer), parseNode 151-166"),
    ((10, 0, 1), "function-first", f"read (index): {MI} @eb43908 (v10.0.1 pointer), parseNode"),
    ((10, 1, 0), "function-first", f"read (mirror): {MI} @96e7811 = release/10.1-GA (v10.1.0 pointer), "
                                   "parseNode 153-168; release/10.0-GA 152-167 is the same"),
    ((10, 2, 0), "function-first", "not readable (@706f02e): NVIDIA/TensorRT CHANGELOG.md (v11.1) 10.2-10.6 "
                                   "GA parser entries change no dispatch; 10.7 GA is where it changed"),
    ((10, 3, 0), "function-first", "not readable (@62bdde2): as 10.2; JetPack 6's TensorRT"),
    ((10, 4, 0), "function-first", "not readable (@3775e49): as 10.2"),
    ((10, 5, 0), "function-first", "not readable (@886aff9): as 10.2"),
    ((10, 6, 0), "function-first", "not readable (@4442153): as 10.2 (10.6 GA: 'Updated local function "
                                   "metadata', 'Added support for parsing nodes with Quickly Deployable Plugins')"),
    ((10, 7, 0), "plugin-before-function", "not readable (@9c69a24): CHANGELOG.md 10.7.0 GA, Parser Changes: "
                                           "'Now prioritizes using plugins over local functions when a "
                                           "corresponding plugin is available in the registry.'"),
    ((10, 8, 0), "plugin-before-function", "not readable (@118ed0a): as 10.7"),
    ((10, 9, 0), "plugin-before-function", "not readable (@d5dce67): as 10.7"),
    ((10, 10, 0), "plugin-before-function", "not readable (@3b9c961): as 10.7"),
    ((10, 11, 0), "plugin-before-function", "not readable (@745bde2): as 10.7"),
    ((10, 12, 0), "plugin-before-function", f"read (index): {MI} @ff761af (v10.12.0 pointer), "
                                            "parseNodeStaticCheck and importLocalFunctions (parseNode's own "
                                            "dispatch not read; at 10.14 the two are the same)"),
    ((10, 13, 0), "plugin-before-function", "not readable (@346bdca, v10.13.0/.2; @9a9f788 v10.13.3): "
                                            "between 10.12 and 10.14, which agree"),
    ((10, 14, 0), "plugin-before-function", f"read (index): {MI} @c727277 (v10.14 pointer), parseNode"),
    ((10, 15, 0), "namespace-or-override", "not readable (@fa5aa9f): CHANGELOG.md 10.15 GA 'Added "
                                           "kENABLE_PLUGIN_OVERRIDE flag to enable TensorRT plugin override "
                                           "for nodes that share names with user plugins'; include/"
                                           "NvOnnxParser.h v10.15:125-129; the rule as read at 10.16"),
    ((10, 16, 0), "namespace-or-override", f"read (index): {MI} @6bde659 (v10.16 pointer), parseNode "
                                           "(importAsPlugin from shouldImportAsPlugin in parseGraph)"),
    ((11, 0, 0), "namespace-or-override", f"read (index): {MI} @5ab48c5 (v11.0 pointer), shouldImportAsPlugin "
                                          "and parseNode"),
    ((11, 1, 0), "namespace-or-override", "not readable (@7c51a63): CHANGELOG.md 11.1 GA parser entry is "
                                          "only 'Updated TRT_Attention to support raggedness'"),
]
NEWEST = PARSER_TABLE[-1][0]


def parse_version(text: str) -> tuple:
    """'10.3.0.30' -> (10, 3, 0)."""
    parts = [int(p) for p in re.findall(r"\d+", text)[:3]]
    return tuple(parts + [0] * (3 - len(parts)))


def parser_row(version: tuple) -> tuple:
    """The table row of a TensorRT version: the last release at or before it (a patch release has
    its minor's parser). Versions before 10.0 or after the newest row are refused, not guessed."""
    version = tuple(version)
    if version < PARSER_TABLE[0][0] or version[:2] > NEWEST[:2]:
        raise KeyError(f"TensorRT {version}: no parser source read for it")
    return [row for row in PARSER_TABLE if row[0] <= version][-1]


def parser_rule(version: tuple, *, hit: bool, has_ns: bool, function: bool, override: bool = False) -> str:
    return RULES[parser_row(version)[1]](hit, has_ns, function, override)


# ---- the trtexec command -----------------------------------------------------------------------------

KNOWN = {"--onnx", "--saveEngine", "--dynamicPlugins", "--noTF32", "--stronglyTyped", "--fp16",
         "--profilingVerbosity", "--exportLayerInfo", "--skipInference", "--help"}


def _tensor(name: str) -> dict:
    return {"Name": name, "Location": "Device", "Dimensions": [], "Format/Datatype": "Row major linear FP32"}


def _layer(name: str, kind: str, parameter_type: str, inputs, outputs) -> dict:
    return {"Name": name, "LayerType": kind, "Inputs": [_tensor(t) for t in inputs if t],
            "Outputs": [_tensor(t) for t in outputs if t], "ParameterType": parameter_type,
            "TacticValue": "0x0000000000000000"}


def main(argv: list) -> int:
    import onnx

    version = os.environ["FAKE_TRT_VERSION"]  # "10.3.0"
    major, minor, patch = parse_version(version)
    banner = f"&&&& RUNNING TensorRT.trtexec [TensorRT v{major * 10000 + minor * 100 + patch}]"
    with open(os.environ["FAKE_TRTEXEC_LOG"], "a") as log:
        log.write("trtexec " + " ".join(argv) + "\n")
    args = dict(a.split("=", 1) if "=" in a else (a, "") for a in argv)
    if "--help" in args:
        print(banner)
        return 0
    unknown = set(args) - KNOWN - ({"--fp16"} if major >= 11 else set())
    if major >= 11 and "--fp16" in args:
        unknown.add("--fp16")
    if unknown:
        print(f"Unknown option: {sorted(unknown)}", file=sys.stderr)
        return 1
    model = onnx.load(args["--onnx"])
    functions = {f.name for f in model.functions}  # by name alone, as importLocalFunctions keys them
    registered = bool(args.get("--dynamicPlugins")) and Path(args["--dynamicPlugins"]).is_file()
    plugin_type = os.environ.get("FAKE_TRT_PLUGIN_LAYER_TYPE", "PluginV3")
    layers = []
    for node in model.graph.node:
        if node.domain != DOMAIN:
            layers.append(_layer(node.name, node.op_type, node.op_type, node.input, node.output))
            continue
        attrs = {a.name: a for a in node.attribute}
        namespace = attrs["plugin_namespace"].s.decode() if "plugin_namespace" in attrs else ""
        # the library registers its creators in namespace "edgemerge"; that a lookup with another
        # namespace ("" when the attribute is absent) misses them is an assumption (registry internals)
        hit = registered and namespace == DOMAIN
        impl = parser_rule((major, minor, patch), hit=hit, has_ns="plugin_namespace" in attrs,
                           function=node.op_type in functions)
        if impl == UNSUPPORTED:
            print(f"[E] [TRT] ModelImporter.cpp: ERROR: {node.name}: Plugin not found, are the plugin name, "
                  "version, and namespace correct?", file=sys.stderr)
            print(banner.replace("RUNNING", "FAILED"))
            return 1
        if impl == PLUGIN:
            layers.append(_layer(node.name, plugin_type, "Plugin", node.input, node.output))
        else:  # the body's layers carry the body's node names, not the call site's
            layers.append(_layer(f"__edgemerge_{node.op_type}_0_0", "Gather", "Gather", node.input, node.output))
    Path(args["--saveEngine"]).write_bytes(b"fake engine for " + args["--onnx"].encode())
    bindings = [v.name for v in model.graph.input] + [v.name for v in model.graph.output]
    info = ({"Layers": layers, "Bindings": bindings} if args.get("--profilingVerbosity") == "detailed"
            else {"Layers": [layer["Name"] for layer in layers], "Bindings": bindings})
    if "--exportLayerInfo" in args:
        Path(args["--exportLayerInfo"]).write_text(json.dumps(info))
    print(banner.replace("RUNNING", "PASSED"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
