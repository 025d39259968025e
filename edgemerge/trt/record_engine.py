"""`python3 -m edgemerge.trt.record_engine model.plan --onnx model.onnx [--trt-version V] [--plugins LIB]`

Writes model.plan.json for an engine that trtexec built (build_on_device.sh). A module, not an
`edgemerge` command, so the device script needs nothing beyond the package and numpy/onnx.
"""

from __future__ import annotations

import argparse
import sys

from edgemerge.errors import EdgemergeError
from edgemerge.trt.builder import record_engine


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m edgemerge.trt.record_engine")
    ap.add_argument("plan")
    ap.add_argument("--onnx", required=True)
    ap.add_argument("--trt-version")
    ap.add_argument("--plugins")
    args = ap.parse_args(argv)
    try:
        rec = record_engine(args.plan, args.onnx, tensorrt_version=args.trt_version, plugins=args.plugins)
    except EdgemergeError as e:
        print(f"edgemerge: error: {' '.join(str(e).split())}", file=sys.stderr)
        return e.exit_code
    print(f"{args.plan}.json: TensorRT {rec.tensorrt_version}, {rec.gpu_name} ({rec.compute_capability}), plugins {rec.plugins}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
