"""`validate_artifact`: does an exported artifact compute what the PyTorch model computes?

Steps: find the artifact and its manifest (hash checks) -> inputs -> reference outputs (PyTorch
rebuilt from the manifest, recording its merge decisions; or reference.npz without torch) -> the
artifact's outputs (ONNX Runtime or TensorRT via polygraphy) -> metrics against per-precision
limits -> (on failure, with localize) the first diverging node -> report.json + report.png.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Callable

import numpy as np

from edgemerge import __version__
from edgemerge.contracts.compare import check, confusion, describe, judge_decisions, miou
from edgemerge.contracts.errors import EdgemergeError
from edgemerge.trt.record import read_record
from edgemerge.validate import inputs as inputs_mod
from edgemerge.validate import metrics as M
from edgemerge.validate import reference as R
from edgemerge.validate import runners
from edgemerge.validate.artifact import Artifact, find_artifact
from edgemerge.contracts.files import check_output_dir, write_files
from edgemerge.contracts.progress import counter
from edgemerge.merge.reference import reference_from_manifest, replay_reference
from edgemerge.validate.report import MAX_FIGURE_INPUTS, class_names, json_bytes, png_bytes

REFERENCES = ("auto", "pytorch", "stored")
REPORT_DIR = "validate_report"


def _versions() -> dict[str, str | None]:
    """Versions of what took part, without importing anything new (no torch import for this)."""
    import sys
    from importlib import metadata

    out: dict[str, str | None] = {"edgemerge": __version__, "python": platform.python_version()}
    dists = {"numpy": ["numpy"], "onnx": ["onnx"], "onnxruntime": ["onnxruntime", "onnxruntime-gpu"],
             "polygraphy": ["polygraphy"], "torch": ["torch"], "tensorrt": ["tensorrt", "tensorrt-cu12"],
             "matplotlib": ["matplotlib"]}
    for mod, names in dists.items():
        if mod in sys.modules:
            m = sys.modules[mod]
            out[mod] = getattr(m, "__version__", None) if m is not None else None
            continue
        out[mod] = None
        for name in names:
            try:
                out[mod] = metadata.version(name)
                break
            except metadata.PackageNotFoundError:
                pass
    return out


def _stack(per_batch: list[dict[str, np.ndarray]], names: list[str]) -> dict[str, np.ndarray]:
    return {n: np.concatenate([b[n] for b in per_batch]) for n in names}


def failure_message(report: dict) -> str | None:
    """One line naming every failed limit (and any flipped merge decision), or None."""
    failed = [c for c in report["checks"] if not c["passed"]]
    if not failed:
        return None
    parts = [f"{c['output']}.{describe(c, report['metrics'].get(c['output'], {}))}" for c in failed]
    msg = f"validation failed ({report['artifact']['kind']} vs {report['reference']['kind']}): " + "; ".join(parts)
    merge = report.get("merge_decisions", {})
    if any(c["output"] == "merge" for c in failed) and merge.get("per_site"):
        w = merge["per_site"][merge["worst_site"]]
        msg += (f"; worst merge site {w['site']} ({w['kind']}): {w['same_destination']} of {w['merging']} merging "
                f"tokens went where the reference op sends them on {merge['judged_on']}, "
                f"{w['near_ties_excused']} near-ties excused")
        if any(c["metric"] == "metric_rel_l2_worst" for c in failed):
            m = max(merge["per_site"], key=lambda p: p["metric_rel_l2"])
            msg += f"; site {m['site']}'s metric differs from PyTorch's by {m['metric_rel_l2']:.3g} (rel. L2)"
    loc = report.get("localize")
    if loc and loc.get("first_divergent"):
        f = loc["first_divergent"]
        msg += f"; first diverging node: {f['op_type']} {f['name']} (error {_fmt(f['error'])})"
    return msg + f"; report: {report['report_files']['json']}"


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def validate_artifact(path: str | Path, *, images: str | Path | None = None, labels: str | Path | None = None,
                      num: int | None = None, atol: float | None = None, rtol: float | None = None,
                      min_agreement: float | None = None, localize: bool = False, out: str | Path | None = None,
                      plugins: list[str] | None = None, reference: str = "auto",
                      load_engine: Callable | None = None, exporter: Callable | None = None, rows: int = MAX_FIGURE_INPUTS,
                      progress: Callable[[str], None] = lambda s: None) -> dict:
    """Validate a bundle directory, model.onnx or model.plan; returns the report (`passed` says
    the verdict; `failure` is the one-line reason). Raises EdgemergeError on bad input.

    `load_engine` (edgemerge.trt.load_engine) runs engines and `exporter`
    (edgemerge.export.export_bundle) makes --localize's fp32 reference graph: handed over by the
    caller, so validate imports neither package."""
    t0 = time.time()
    art, out_dir, use_torch = _check_request(path, images, labels, num, atol, rtol, min_agreement, out, reference, rows)
    inp, ref_out, model, ref_kind, stored = _reference(art, use_torch, images, labels, num, progress)
    judged = _judge(art, inp, ref_out, model, atol, rtol, min_agreement, plugins, load_engine, progress)
    report = _report(art, inp, ref_out, ref_kind, stored, judged, progress)
    if localize and not report["passed"]:
        from edgemerge.validate.localize import localize_divergence

        progress("localizing the first diverging node")
        report["localize"] = localize_divergence(art, inp.batches[0], judged["limits"], progress=progress,
                                                 exporter=exporter)
    elif localize:
        report["localize"] = {"ran": False, "reason": "the comparison passed"}
    _write_report(report, art, inp, judged, out_dir.resolve(), rows, t0)
    return report


def _check_request(path, images, labels, num, atol, rtol, min_agreement, out, reference: str,
                   rows: int) -> tuple[Artifact, Path, bool]:
    """Every option and the artifact checked before any work: (artifact, report folder, whether
    PyTorch is the reference)."""
    if reference not in REFERENCES:
        raise EdgemergeError(f"unknown reference {reference!r}; known: {', '.join(REFERENCES)}")
    if labels is not None and images is None:
        raise EdgemergeError("--labels needs --images (labels are matched to the images by file stem)")
    if num is not None and num < 1:
        raise EdgemergeError(f"--num must be >= 1, got {num}")
    if rows < 1:
        raise EdgemergeError(f"--rows must be >= 1, got {rows}")
    M.check_limits(atol=atol, rtol=rtol, min_agreement=min_agreement)  # before any work
    art = find_artifact(path)
    out_dir = check_output_dir(Path(out) if out is not None else art.bundle / REPORT_DIR, "report folder")
    use_torch = reference == "pytorch" or (reference == "auto" and R.torch_available())
    if use_torch and not R.torch_available():
        raise EdgemergeError("--reference pytorch needs PyTorch; without it validate against reference.npz")
    if images is not None and not use_torch:
        raise EdgemergeError("new images need the PyTorch reference (torch and the checkpoint); without PyTorch "
                             "validation uses the bundle's stored inputs and outputs (reference.npz)")
    return art, out_dir, use_torch


def _judge(art: Artifact, inp, ref_out: list, model, atol, rtol, min_agreement, plugins, load_engine,
           progress) -> dict:
    """Run the artifact and judge it: its outputs (against PyTorch replaying its merge decisions
    where it exposes them) and the decisions themselves; the checks, figures and limits."""
    out_names = [o["name"] for o in art.manifest.get("outputs", [])] or ["output"]
    main_out = out_names[0]  # models have one output (logits)
    ref = np.concatenate(ref_out)
    got, got_slots, got_metrics = _run_artifact(art, inp.batches, main_out, plugins, load_engine, progress)
    merge, judged_ref, decision_rows = _merge_decisions(art, model, inp.batches, got_slots, got_metrics, progress)
    limits = M.thresholds_for(art.precision, atol=atol, rtol=rtol, min_agreement=min_agreement,
                              replayed=judged_ref is not None or merge.get("sites") == 0)
    per_output = {main_out: M.output_metrics(got, judged_ref if judged_ref is not None else ref, art.precision)}
    if judged_ref is not None:  # the logits were judged against PyTorch replaying the artifact's decisions
        per_output[main_out]["without_replay"] = {k: v for k, v in M.output_metrics(got, ref, art.precision).items()
                                                  if k in ("max_abs", "max_abs_rel_range", "rel_l2", "cosine",
                                                           "argmax_agreement")}
    checks = [{"output": main_out, **c} for c in check(per_output[main_out], limits)]
    checks += [{"output": "merge", **c} for c in decision_rows]
    return {"ref": ref, "got": got, "merge": merge, "limits": limits, "per_output": per_output, "checks": checks,
            "ref_pred": ref.argmax(1) if ref.ndim == 4 else None, "got_pred": got.argmax(1) if got.ndim == 4 else None,
            "num_classes": int(art.manifest.get("num_classes") or ref.shape[1])}


def _report(art: Artifact, inp, ref_out: list, ref_kind: str, stored, judged: dict, progress) -> dict:
    """The report's fields (report.json); labels, the cost of merging and warnings included."""
    manifest, merge, limits = art.manifest, judged["merge"], judged["limits"]
    warnings, label_figs = _label_figures(inp, judged["ref_pred"], judged["got_pred"], judged["num_classes"])
    if merge.get("available") is False:  # said on stderr, not only in the report
        warnings.insert(0, f"merge decisions not checked: {merge['reason']}")
    if label_figs is not None and ref_kind == "pytorch":
        label_figs.update(_cost_of_merging(manifest, inp, label_figs, judged["num_classes"], progress))
    return {
        "format": 1, "passed": all(c["passed"] for c in judged["checks"]), "engine_build": _engine_build(art),
        "artifact": {"path": str(art.path.resolve()), "kind": art.kind, "bundle": str(art.bundle.resolve()),
                     "precision": art.precision, "merge_ops": manifest.get("merge_ops"), **art.hashes},
        "model": {k: manifest.get(k) for k in ("model", "variant", "resolution", "batch", "num_classes", "seed")},
        "checkpoint": manifest.get("checkpoint"),
        "reference": {"kind": ref_kind, "consistency": _consistency(art, ref_kind, inp, ref_out, stored)},
        "inputs": inp.source,
        "thresholds": {k: {"op": op, "value": v} for k, (op, v) in limits.items()},
        "metrics": judged["per_output"], "checks": judged["checks"],
        "merge_decisions": merge, "labels": label_figs, "localize": None,
        "versions": _versions(), "warnings": warnings,
    }


def _write_report(report: dict, art: Artifact, inp, judged: dict, out_dir: Path, rows: int, t0: float) -> None:
    """report.json and (for dense outputs) report.png, both or neither."""
    report["report_files"] = {"json": str(out_dir / "report.json"), "png": None}
    files = []
    if judged["ref_pred"] is not None:
        files.append((out_dir / "report.png", png_bytes(
            inp.images, judged["ref_pred"], judged["got_pred"], judged["num_classes"],
            f"{art.kind} ({art.precision})", rows=rows, labels=inp.labels, names=inp.source.get("files"),
            classes=class_names(art.manifest))))
        report["report_files"]["png"] = str(out_dir / "report.png")
    report["seconds"] = round(time.time() - t0, 2)
    report["failure"] = failure_message(report)
    write_files([(out_dir / "report.json", json_bytes(report)), *files])  # both or neither


# ---- the steps of validate_artifact ---------------------------------------------------------------

def _reference(art, use_torch: bool, images, labels, num, progress):
    """(inputs, reference outputs per batch, the PyTorch model or None, reference kind, stored)."""
    manifest = art.manifest
    stored = R.load_stored(art.bundle, manifest) if not use_torch or images is None else None
    if not use_torch:
        inp = inputs_mod.stored_inputs(stored, manifest, num)
        return inp, R.stored_outputs(stored, len(inp.batches)), None, "reference.npz", stored
    inp = (inputs_mod.folder_inputs(manifest, images, labels, num, progress) if images is not None
           else inputs_mod.synthetic_inputs(manifest, num))  # bad folders are refused before any work
    progress("rebuilding the PyTorch reference from the manifest")
    model = reference_from_manifest(manifest)  # refuses a changed or missing checkpoint
    progress(f"running PyTorch on {inp.source['count']} input(s)")
    ref_out = R.run_pytorch(model, inp.batches, progress=counter(progress, "PyTorch: batch"))
    return inp, ref_out, model, "pytorch", stored


def _run_artifact(art, batches, output: str, plugins, load_engine, progress):
    """(the artifact's output stacked over batches, its slot tensors and the metric tensors its
    matchings read, per batch, or None)."""
    progress(f"running the {art.kind} ({'ONNX Runtime' if art.kind == 'onnx' else 'TensorRT'})")
    slot_names = metric_names = None
    if art.kind == "onnx":
        per_batch, slot_names, metric_names = runners.run_onnx(art.path, art.manifest, batches)
    else:
        per_batch = runners.run_engine(art.path, art.manifest, batches, plugins, load_engine=load_engine)
    name = output if output in per_batch[0] else next(iter(per_batch[0]))
    got = np.concatenate([b[name] for b in per_batch])
    slots = [[b[s] for s in slot_names] for b in per_batch] if slot_names else None
    metrics = [[b[s] for s in metric_names] for b in per_batch] if slot_names and metric_names else None
    return got, slots, metrics


def _label_figures(inp, ref_pred, got_pred, num_classes: int) -> tuple[list[str], dict | None]:
    """(warnings about the labels, mIoU of reference and artifact against them)."""
    if inp.labels is None:
        return [], None
    w = inputs_mod.ignored_labels(inp.labels, inp.source["files"], num_classes)
    if ref_pred is None:
        return [w] if w else [], None
    lab = M.resize_labels(inp.labels, *ref_pred.shape[1:])
    figures = {**M.label_metrics(ref_pred, got_pred, lab, num_classes), "resolution": list(ref_pred.shape[1:]),
               "note": "evaluated at the logits' resolution; labels resized nearest-neighbour; "
                       f"values >= {num_classes} (and 255) ignored"}
    return [w] if w else [], figures


def _cost_of_merging(manifest, inp, label_figs: dict, num_classes: int, progress) -> dict:
    """The unmerged model's mIoU on the same images (one more PyTorch pass, variant `none` at the
    bundle's settings and checkpoint), so what merging costs is one command."""
    if manifest["variant"] == "none":
        return {"miou_unmerged": label_figs["miou_reference"], "miou_cost_of_merging": 0.0}
    progress("rebuilding the unmerged PyTorch model (variant none) for its mIoU")
    model = reference_from_manifest(manifest, variant="none")
    out = R.run_pytorch(model, inp.batches, progress=counter(progress, "PyTorch unmerged: batch"))
    pred = np.concatenate(out).argmax(1)
    unmerged = miou(confusion(pred, M.resize_labels(inp.labels, *pred.shape[1:]), num_classes))
    merged = label_figs["miou_reference"]
    return {"miou_unmerged": unmerged,
            "miou_cost_of_merging": None if unmerged is None or merged is None else unmerged - merged}


def _merge_decisions(art, model, batches, got_slots, got_metrics, progress
                     ) -> tuple[dict, np.ndarray | None, list[dict]]:
    """(figures, PyTorch's outputs with the artifact's decisions replayed or None, check rows).

    The artifact's decisions are replayed in PyTorch, which decides again at every site given the
    same history: the logits are then judged on numerics alone, and each site's decision on its
    own (edgemerge.contracts.compare.judge_decisions), so a wrong matching fails even where the outputs
    happen to be insensitive to it (random weights, a few tokens)."""
    if model is None:
        return {"available": False, "reason": "the stored reference (reference.npz) holds no merge decisions; "
                                              "validate with PyTorch to check them"}, None, []
    if art.kind == "engine":
        return {"available": False, "reason": "a TensorRT engine does not expose its slot tensors"}, None, []
    if got_slots is None:
        return {"available": True, "sites": 0}, None, []
    progress("replaying the artifact's merge decisions in PyTorch")
    try:
        forced, sites = replay_reference(model, batches, got_slots, got_metrics)
    except RuntimeError as e:  # more or fewer slot tensors than PyTorch has merge sites
        figures = {"available": True, "sites": None, "same_destination_worst": None, "reason": str(e)}
        return figures, None, [{"metric": "merge_sites_match", "value": None, "op": "==", "threshold": 1,
                                "passed": False}]
    stacked = [np.concatenate([b[i] for b in got_slots]) for i in range(len(got_slots[0]))]
    figures, rows = judge_decisions(sites, stacked, art.precision)
    return {"available": True, **figures}, np.concatenate(forced), rows


def _consistency(art, ref_kind: str, inp, ref_out, stored) -> dict | None:
    """On the bundle's own seeded inputs, the rebuilt PyTorch model must reproduce reference.npz."""
    if ref_kind != "pytorch" or inp.source.get("kind") != "synthetic":
        return None
    stored = stored or R.load_stored(art.bundle, art.manifest)
    n = min(len(ref_out), sum(k.startswith("output_") for k in stored))
    if not n:
        return None
    d = max(float(np.abs(ref_out[i] - stored[f"output_{i}"]).max()) for i in range(n))
    return {"batches": n, "max_abs_vs_reference_npz": d}


def _engine_build(art) -> dict | None:
    """What the engine holds, from its build record: the merge ops as plugins, or their bodies."""
    if art.kind != "engine":
        return None
    return read_record(art.path).engine_build()
