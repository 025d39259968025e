"""Run an artifact on the inputs with polygraphy's runners and Comparator.

ONNX files run in ONNX Runtime (CPU) through `OnnxrtRunner(SessionFromOnnx(...))`, engines in
TensorRT through `TrtRunner(EngineFromBytes(CheckedBytesFromPath(...)))` (the build record is
checked first). For ONNX files the merge ops' `slot` tensors are added to the graph outputs, so
the artifact's merge decisions can be compared with PyTorch's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from edgemerge.contracts.errors import EdgemergeError, reraise_out_of_memory
from edgemerge.contracts.graphs import match_metrics, slot_tensors, with_outputs
from edgemerge.contracts.progress import quiet_polygraphy



def _feeds(batches: list[np.ndarray], name: str, dtype: str) -> list[dict]:
    return [{name: np.ascontiguousarray(b, dtype=np.dtype(dtype))} for b in batches]


def run_onnx(onnx_path: Path, manifest: dict, batches: list[np.ndarray], *, expose_slots: bool = True
             ) -> tuple[list[dict[str, np.ndarray]], list[str] | None, list[str] | None]:
    """Outputs per batch ({name: array}, slot and metric tensors included), the slot tensor names
    and the names of the tensors the merge sites match on (None when not found)."""
    import onnx
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.comparator import Comparator

    quiet_polygraphy()
    model = onnx.load(str(onnx_path))
    slots = slot_tensors(model) if expose_slots else None
    metrics = match_metrics(model) if slots else None
    if metrics is not None and len(metrics) != len(slots):
        metrics = None
    if slots:
        model = with_outputs(model, slots + (metrics or []))
    inp = manifest["inputs"][0] if manifest.get("inputs") else {"name": model.graph.input[0].name, "dtype": "float32"}
    runner = OnnxrtRunner(SessionFromOnnx(model.SerializeToString(), providers=["cpu"]), name="onnxrt")
    try:
        results = Comparator.run([runner], data_loader=_feeds(batches, inp["name"], inp["dtype"]))
    except Exception as e:  # ORT failing on a malformed file is a finding, said in one line
        reraise_out_of_memory(e)
        raise EdgemergeError(f"{onnx_path}: ONNX Runtime cannot run it: {str(e).splitlines()[0][:300]}") from None
    return [dict(it.items()) for it in results["onnxrt"]], slots, metrics


def run_engine(plan_path: Path, manifest: dict, batches: list[np.ndarray], plugins: list[str] | None = None,
               *, load_engine: Callable | None = None) -> list[dict[str, np.ndarray]]:
    """Outputs per batch of a TensorRT engine. `load_engine(path, plugins=...)` (the CLI hands over
    edgemerge.trt's, which refuses with one line an engine whose build record does not fit here)."""
    if load_engine is None:
        raise EdgemergeError(f"{plan_path}: validating an engine needs a TensorRT engine loader "
                             "(edgemerge.trt.load_engine; `edgemerge validate` passes it)")
    quiet_polygraphy()
    engine = load_engine(plan_path, plugins=plugins)
    from polygraphy.backend.trt import TrtRunner
    from polygraphy.comparator import Comparator

    inp = manifest["inputs"][0]
    results = Comparator.run([TrtRunner(engine, name="tensorrt")],
                             data_loader=_feeds(batches, inp["name"], inp["dtype"]))
    return [dict(it.items()) for it in results["tensorrt"]]
