"""A stand-in for trtexec, for build_on_device.sh tests on machines without TensorRT.

What it encodes, and from which source (nothing else is claimed):
- the banner `&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # ...` (samples/common/logging.h,
  NVIDIA/TensorRT v10.3.0; v11.1 appends ` [b106]`);
- unknown options fail the run (trtexec.cpp v10.3.0:235-245), and 11.x has no --fp16/--bf16/--best
  (sampleOptions.cpp v11.1): such a call exits 1 here too;
- which implementation each `edgemerge` node gets: `edgemerge.device_tool.parser_implementation`,
  whose docstring cites onnx-tensorrt's ModelImporter.cpp (release/10.1-GA) and the 10.7 / 10.15
  changelog entries; a plugin counts as registered when --dynamicPlugins names an existing file;
- --exportLayerInfo with --profilingVerbosity=detailed: {"Layers": [{"Name", "LayerType", ...}],
  "Bindings": [...]} (trt-engine-explorer's parser and example engines at v10.3.0); a plugin layer
  is named after its node and has LayerType "PluginV3" (V3 creators; "PluginV2" is the documented
  V2 string, V3's is by analogy: check it on a device, docs/jetson.md).
Every call is appended to $FAKE_TRTEXEC_LOG.
"""

import json
import os
import sys
from pathlib import Path

import onnx

from edgemerge.device_tool import DOMAIN, PLUGIN, parse_version, parser_implementation

KNOWN = {"--onnx", "--saveEngine", "--dynamicPlugins", "--noTF32", "--stronglyTyped", "--fp16",
         "--profilingVerbosity", "--exportLayerInfo", "--skipInference", "--help"}


def main(argv: list[str]) -> int:
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
    functions = {f.name for f in model.functions if f.domain == DOMAIN}
    registered = bool(args.get("--dynamicPlugins")) and Path(args["--dynamicPlugins"]).is_file()
    layers = []
    for node in model.graph.node:
        if node.domain != DOMAIN:
            layers.append({"Name": node.name, "LayerType": node.op_type})
            continue
        impl = parser_implementation(
            (major, minor, patch), plugin_registered=registered,
            plugin_namespace=any(a.name == "plugin_namespace" for a in node.attribute),
            local_function=node.op_type in functions)
        if impl == PLUGIN:
            layers.append({"Name": node.name, "LayerType": "PluginV3", "ParameterType": "PluginV3",
                           "Metadata": f"[ONNX Layer: {node.name}]"})
        else:  # the body's first layer carries the body's node name, not the call site's
            layers.append({"Name": f"__edgemerge_{node.op_type}_0_0", "LayerType": "Gather",
                           "Metadata": f"[ONNX Layer: __edgemerge_{node.op_type}_0_0 | {node.name} ({node.op_type})]"})
    Path(args["--saveEngine"]).write_bytes(b"fake engine for " + args["--onnx"].encode())
    info = ({"Layers": layers, "Bindings": [v.name for v in model.graph.input]}
            if args.get("--profilingVerbosity") == "detailed"
            else {"Layers": [layer["Name"] for layer in layers], "Bindings": []})
    if "--exportLayerInfo" in args:
        Path(args["--exportLayerInfo"]).write_text(json.dumps(info))
    print(banner.replace("RUNNING", "PASSED"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
