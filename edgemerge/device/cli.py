"""`python3 edgemerge_device.py arch|graph|record`: the steps of build_on_device.sh that are not
TensorRT's own (the bundle carries this package as a zipapp; see edgemerge.device)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from edgemerge.contracts.errors import EdgemergeError
from edgemerge.contracts.files import sha256_file
from edgemerge.contracts.manifest import read_manifest
from edgemerge.device.gpu import cuda_arch
from edgemerge.device.layers import inspect_layers, layer_types_summary
from edgemerge.device.parser import AS_IS, NATIVE, STRIP, graph_for, parse_version
from edgemerge.device.record import NO_PLUGINS, make_record, record_path, trtexec_tf32, write_record

# ---- command line (build_on_device.sh) -------------------------------------------------------------

def _cmd_arch(args) -> str:
    return cuda_arch(args.default)


def _cmd_graph(args) -> str:
    path, kind = graph_for(Path(args.bundle), parse_version(args.trt_version), args.plugins == "yes")
    return f"{path} {kind}"


def _cmd_record(args) -> str:
    bundle = Path(args.bundle)
    manifest = read_manifest(bundle)
    plan = bundle / args.plan
    info = None
    if args.layers:
        try:
            info = json.loads(Path(args.layers).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise EdgemergeError(f"{args.layers}: cannot read the layer information ({e})") from None
    uses_plugins = args.plugins is not None
    layers = inspect_layers(info, manifest, uses_plugins=uses_plugins, allow_body_only=args.allow_body_only)
    if uses_plugins:
        lib = Path(args.plugins)
        if not lib.is_file():
            raise EdgemergeError(f"plugin library {lib} not found")
        label, lib_sha = os.path.relpath(lib.resolve(), bundle.resolve()), sha256_file(lib)
    else:
        label, lib_sha = NO_PLUGINS, None
    record = make_record(plan, bundle / "model.onnx", manifest, tensorrt_version=args.trt_version,
                         plugins=label, plugins_sha256=lib_sha, strongly_typed=args.strongly_typed,
                         fp16_flag=args.fp16, graph=args.graph, plugin_layers=layers,
                         edgemerge_version=manifest.get("versions", {}).get("edgemerge", "unknown"),
                         extra={"built_by": "trtexec"}, tf32=_tf32_of(args), layer_info=info)
    write_record(plan, record)
    sites = "; ".join(f"{op} {layer_types_summary(t)}" for op, t in sorted((record.site_layer_types or {}).items()))
    return (f"{record_path(plan).name}: TensorRT {record.tensorrt_version}, {record.gpu_name} "
            f"({record.compute_capability}), plugins {record.plugins}, tf32 {_on_off(record.tf32)}, "
            f"plugin layers: {record.plugin_summary()}; layer types: {layer_types_summary(record.layer_types)}"
            + (f"; merge-site layer types: {sites}" if sites else ""))


def _on_off(flag: bool | None) -> str:
    return "not stated" if flag is None else ("on" if flag else "off")


def _tf32_of(args) -> bool | None:
    """TF32 as the build used it: --trtexec-args (the trtexec command's arguments) or --tf32."""
    if args.trtexec_args is not None:
        import shlex

        from_args = trtexec_tf32(shlex.split(args.trtexec_args))
        if args.tf32 is not None and (args.tf32 == "on") != from_args:
            raise EdgemergeError(f"--tf32 {args.tf32} contradicts the trtexec arguments given (--noTF32 "
                              f"{'absent' if from_args else 'present'})")
        return from_args
    return None if args.tf32 is None else args.tf32 == "on"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 edgemerge_device.py", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    a = sub.add_parser("arch", help="CUDA architecture for CMake (87 on Orin)")
    a.add_argument("--default", default="87")
    g = sub.add_parser("graph", help="the ONNX file to build, for this TensorRT and plugin availability")
    g.add_argument("--bundle", default=".")
    g.add_argument("--trt-version", required=True)
    g.add_argument("--plugins", choices=("yes", "no"), required=True)
    r = sub.add_parser("record", help="write model.plan.json (checks the plugin layers)")
    r.add_argument("--bundle", default=".")
    r.add_argument("--plan", default="model.plan")
    r.add_argument("--trt-version", required=True)
    r.add_argument("--graph", required=True, choices=(AS_IS, STRIP, NATIVE))
    r.add_argument("--layers", help="trtexec --exportLayerInfo JSON")
    r.add_argument("--plugins", help="the plugin library the engine was built with")
    r.add_argument("--strongly-typed", action="store_true")
    r.add_argument("--fp16", action="store_true")
    r.add_argument("--trtexec-args",
                   help='the trtexec command\'s arguments as one string (--trtexec-args="..."): TF32 is read from them')
    r.add_argument("--tf32", choices=("on", "off"), help="TF32 as the build used it, when not from --trtexec-args")
    r.add_argument("--allow-body-only", action="store_true",
                   help="accept a plugin build whose engine holds fewer plugin layers than merge sites")
    args = ap.parse_args(argv)
    try:
        print({"arch": _cmd_arch, "graph": _cmd_graph, "record": _cmd_record}[args.command](args))
    except EdgemergeError as e:
        print(f"edgemerge: error: {' '.join(str(e).split())}", file=sys.stderr)
        return e.exit_code
    except OSError as e:
        print(f"edgemerge: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
