"""Name the first ONNX node whose output diverges from a known-good graph of the same model.

The good graph is a fresh fp32 export of the manifest's model (same merge ops, opset, batch,
weights). Both graphs get every node output marked as a graph output and run in ONNX Runtime on one
input batch; the artifact's nodes are walked in graph (topological) order and compared, by tensor
name, with the good graph's. The torch exporter names tensors the same way in a good and a broken
file and mostly between fp32 and fp16 exports; names that do not match are counted and reported,
never guessed. Errors are max abs error relative to the good tensor's range; integer tensors (merge
slots, indices) must match exactly, so a flipped merge decision shows as such.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from edgemerge.validate.artifact import Artifact
from edgemerge.contracts.graphs import with_outputs

FP16_TOLERANCE = 1e-2  # relative to the tensor's range: fp16 rounding stays well below it
MAX_LISTED = 5


def _all_outputs(model: onnx.ModelProto) -> onnx.ModelProto:
    names = [o for n in model.graph.node for o in n.output if o]
    return with_outputs(model, names)


def run_all(model: onnx.ModelProto, batch: np.ndarray) -> dict[str, np.ndarray]:
    """Every node output of `model` for one input batch (ONNX Runtime, CPU)."""
    import onnxruntime as ort

    marked = _all_outputs(model)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(marked.SerializeToString(), so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    dtype = np.float16 if "float16" in inp.type else np.float32
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {inp.name: batch.astype(dtype)})))


def tensor_error(got: np.ndarray, ref: np.ndarray) -> tuple[float, str]:
    """(error, kind): relative max abs error for floats, fraction of differing entries otherwise."""
    if got.shape != ref.shape:
        return float("inf"), "shape"
    if np.issubdtype(ref.dtype, np.floating):
        g, r = got.astype(np.float64), ref.astype(np.float64)
        if not np.isfinite(g).all() and np.isfinite(r).all():
            return float("inf"), "non-finite"
        if g.size == 0:
            return 0.0, "values"
        span = max(float(np.nanmax(r) - np.nanmin(r)), float(np.nanmax(np.abs(r))), 1e-6)
        return float(np.nanmax(np.abs(g - r))) / span, "values"
    return float((got != ref).mean()) if got.size else 0.0, "exact"


_CACHE: dict[str, onnx.ModelProto] = {}  # the last fresh export, keyed by what it was made from


def _reference_export(manifest: dict, out: Path, progress: Callable[[str], None], exporter: Callable) -> onnx.ModelProto:
    from edgemerge.merge.reference import checked_checkpoint

    checkpoint = checked_checkpoint(manifest)
    key = json.dumps([manifest.get(k) for k in ("model", "variant", "resolution", "batch", "merge_ops", "opset",
                                                "seed", "num_classes", "calibration", "checkpoint")], sort_keys=True)
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = _export_fp32(manifest, checkpoint, out, progress, exporter)
    return _CACHE[key]


def _export_fp32(manifest, checkpoint: str | None, out: Path, progress: Callable[[str], None],
                 exporter: Callable) -> onnx.ModelProto:
    calibration = None
    if manifest.get("calibration") is not None:
        calibration = out.parent / "calibration.json"
        calibration.write_text(json.dumps(manifest["calibration"]))
    opts = manifest.export_options(checkpoint=checkpoint, precision="fp32", out=str(out),
                                   calibration=str(calibration) if calibration else None)
    progress("exporting a fresh fp32 reference graph")
    exporter(opts)
    return onnx.load(str(out / "model.onnx"))


def _initializer_diffs(got: onnx.ModelProto, ref: onnx.ModelProto, tol: float) -> list[dict]:
    ref_inits = {t.name: t for t in ref.graph.initializer}
    out = []
    for t in got.graph.initializer:
        r = ref_inits.get(t.name)
        if r is None:
            continue
        a, b = onnx.numpy_helper.to_array(t), onnx.numpy_helper.to_array(r)
        if a.shape != b.shape:
            continue
        err, _ = tensor_error(a.astype(b.dtype) if np.issubdtype(b.dtype, np.floating) else a, b)
        if err > tol:
            out.append({"initializer": t.name, "error": err})
    return out


def first_divergence(got_model: onnx.ModelProto, got: dict[str, np.ndarray], ref: dict[str, np.ndarray],
                     tol: float) -> dict:
    """Walk `got_model`'s nodes in order; the first whose output differs from `ref` by more than tol."""
    errors: dict[str, float] = {}
    compared = unmatched = 0
    first = largest = None
    for node in got_model.graph.node:
        for out in node.output:
            if not out or out not in got:
                continue
            if out not in ref:
                unmatched += 1
                continue
            compared += 1
            err, kind = tensor_error(got[out], ref[out])
            errors[out] = err
            limit = 0.0 if kind == "exact" else tol
            if kind != "exact" and (largest is None or err > largest["error"]):
                largest = {"name": node.name, "op_type": node.op_type, "output": out, "error": err}
            if first is None and err > limit:
                inputs = [{"name": i, "error": errors.get(i)} for i in node.input if i]
                initializers = {t.name for t in got_model.graph.initializer}
                first = {"name": node.name, "op_type": node.op_type, "domain": node.domain or "ai.onnx",
                         "output": out, "error": err, "kind": kind, "inputs": inputs,
                         "weights": [i for i in node.input if i in initializers],
                         "inputs_agree": all(e["error"] is None or e["error"] <= tol for e in inputs),
                         "hint": _hint(node, kind, inputs, tol)}
    return {"first_divergent": first, "largest_error": largest, "tensors_compared": compared,
            "tensors_unmatched": unmatched}


def _hint(node: onnx.NodeProto, kind: str, inputs: list[dict], tol: float) -> str:
    if kind == "non-finite":
        return "non-finite values where the fp32 graph has none: fp16 overflow (keep this op in fp32)"
    if kind == "exact" and (node.domain == "edgemerge" or node.output[0].startswith("match_")):
        return "a merge decision (slot) differs: a flipped near-tie, or a wrong matching op"
    if node.domain == "edgemerge":
        return f"edgemerge op {node.op_type}: its plugin or function body computes something else"
    if all(e["error"] is None or e["error"] <= tol for e in inputs):
        return "inputs agree but the output does not: this node's weights or lowering differ"
    return "its inputs already differ (below the tolerance at the producing node): accumulated error"


def _largest(result: dict) -> str:
    big = result.get("largest_error")
    return "none" if big is None else f"{big['op_type']} {big['name']} ({big['error']:.3g})"


def localize_divergence(art: Artifact, batch: np.ndarray, limits: dict, *,
                        progress: Callable[[str], None] = lambda s: None, exporter: Callable | None = None) -> dict:
    """The report's `localize` section; says plainly when it cannot run. `exporter`
    (edgemerge.export.export_bundle, handed over by the caller) makes the fp32 reference graph."""
    from edgemerge.validate.reference import torch_available

    if art.onnx_path is None:
        return {"ran": False, "reason": "the bundle's model.onnx is missing; localize works on the ONNX graph"}
    if not torch_available() or exporter is None:
        return {"ran": False, "reason": "localize needs PyTorch and an exporter to make a fresh fp32 reference graph"}
    tol = limits.get("max_abs_rel_range", ("<=", None))[1]
    tol = tol if tol is not None else (FP16_TOLERANCE if art.precision == "fp16" else 1e-3)
    got_model = onnx.load(str(art.onnx_path))
    from edgemerge.contracts.errors import EdgemergeError

    with tempfile.TemporaryDirectory(prefix="edgemerge-localize-") as tmp:
        try:
            ref_model = _reference_export(art.manifest, Path(tmp) / "reference", progress, exporter)
        except EdgemergeError as e:
            return {"ran": False, "reason": f"the fresh fp32 reference export failed: {e}"}
    progress("running both graphs with every node output marked")
    got = run_all(got_model, batch)
    ref = run_all(ref_model, batch)
    result = first_divergence(got_model, got, ref, tol)
    diffs = _initializer_diffs(got_model, ref_model, tol)
    note = ("artifact ran on ONNX Runtime" if art.kind == "onnx" else
            "the engine cannot expose its intermediate tensors; localized on the bundle's model.onnx")
    reason = None
    if result["first_divergent"] is None:
        reason = (f"no node output differs by more than {tol:g} of its range from the fresh fp32 export "
                  f"({result['tensors_compared']} tensors compared, {result['tensors_unmatched']} without a "
                  f"same-named tensor): no single node makes the difference; it accumulates (fp16 rounding, "
                  f"flipped near-ties in argmax) or lies in tensors whose names do not match; largest error: "
                  f"{_largest(result)}")
    return {"ran": True, "reference": "fresh fp32 export of the manifest's model (ONNX Runtime)",
            "tolerance": tol, **result, "differing_initializers": diffs[:MAX_LISTED],
            "differing_initializers_count": len(diffs), "note": note, "reason": reason}
