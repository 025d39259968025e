"""Run an artifact on the inputs with polygraphy's runners and Comparator.

ONNX files run in ONNX Runtime (CPU) through `OnnxrtRunner(SessionFromOnnx(...))`, engines in
TensorRT through `TrtRunner(EngineFromBytes(CheckedBytesFromPath(...)))` (the build record is
checked first). For ONNX files the merge ops' `slot` tensors are added to the graph outputs, so
the artifact's merge decisions can be compared with PyTorch's.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from edgemerge.errors import EdgemergeError

MATCH_OPS = ("TokenMatchBipartite", "TokenMatchWindow")
# In a native (inlined) graph the op's output keeps the exporter's name: a Cast to int32 named so.
_NATIVE_SLOT = re.compile(r"^match_(bipartite|window)(_\d+)?$")


def quiet_polygraphy() -> None:
    """edgemerge reports, polygraphy does not: no [I]/[W]/[E] lines, no [!] lines before its
    exceptions (which edgemerge turns into its own one line), no print about the 'colored' module."""
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.CRITICAL + 1
    G_LOGGER.colors = False


def slot_tensors(model) -> list[str] | None:
    """Names of the slot tensors in graph order: outputs of TokenMatch* nodes (plugin mode) or
    the int32 Casts that end their inlined bodies (native mode); None when none can be found."""
    import onnx

    names = [n.output[0] for n in model.graph.node if n.op_type in MATCH_OPS]
    if not names:
        names = [n.output[0] for n in model.graph.node if n.op_type == "Cast" and _NATIVE_SLOT.match(n.output[0])
                 and any(a.name == "to" and a.i == onnx.TensorProto.INT32 for a in n.attribute)]
    return names or None


def with_outputs(model, names: list[str]):
    """A copy of `model` (onnx.ModelProto) with `names` added to its graph outputs (types left to
    the runtime)."""
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    have = {o.name for o in out.graph.output}
    for name in names:
        if name not in have:
            out.graph.output.append(onnx.ValueInfoProto(name=name))
            have.add(name)
    return out


def _feeds(batches: list[np.ndarray], name: str, dtype: str) -> list[dict]:
    return [{name: np.ascontiguousarray(b, dtype=np.dtype(dtype))} for b in batches]


def run_onnx(onnx_path: Path, manifest: dict, batches: list[np.ndarray], *, expose_slots: bool = True
             ) -> tuple[list[dict[str, np.ndarray]], list[str] | None]:
    """Outputs per batch ({name: array}, slot tensors included) and the slot tensor names."""
    import onnx
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.comparator import Comparator

    quiet_polygraphy()
    model = onnx.load(str(onnx_path))
    slots = slot_tensors(model) if expose_slots else None
    if slots:
        model = with_outputs(model, slots)
    inp = manifest["inputs"][0] if manifest.get("inputs") else {"name": model.graph.input[0].name, "dtype": "float32"}
    runner = OnnxrtRunner(SessionFromOnnx(model.SerializeToString(), providers=["cpu"]), name="onnxrt")
    try:
        results = Comparator.run([runner], data_loader=_feeds(batches, inp["name"], inp["dtype"]))
    except Exception as e:  # ORT failing on a malformed file is a finding, said in one line
        raise EdgemergeError(f"{onnx_path}: ONNX Runtime cannot run it: {str(e).splitlines()[0][:300]}") from None
    return [dict(it.items()) for it in results["onnxrt"]], slots


def run_engine(plan_path: Path, manifest: dict, batches: list[np.ndarray], plugins: list[str] | None = None
               ) -> list[dict[str, np.ndarray]]:
    """Outputs per batch of a TensorRT engine; refused with one line when TensorRT is absent or the
    build record does not fit this machine (edgemerge.trt.builder.load_engine)."""
    from edgemerge.trt.builder import load_engine

    quiet_polygraphy()
    engine = load_engine(plan_path, plugins=plugins)
    from polygraphy.backend.trt import TrtRunner
    from polygraphy.comparator import Comparator

    inp = manifest["inputs"][0]
    results = Comparator.run([TrtRunner(engine, name="tensorrt")],
                             data_loader=_feeds(batches, inp["name"], inp["dtype"]))
    return [dict(it.items()) for it in results["tensorrt"]]
