"""`edgemerge export`: a merged zoo model -> a self-checked, deterministic bundle directory.

The bundle is written into a temporary sibling directory and renamed into place at the end, so a
failure anywhere (bad input, a failed self-check) leaves no bundle behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx

from edgemerge import __version__
from edgemerge.contracts.compare import compare, describe, judge_decisions, metrics
from edgemerge.contracts.errors import CheckFailed, EdgemergeError, reraise_out_of_memory
from edgemerge.contracts.manifest import MANIFEST, MERGE_OPS, PRECISIONS, ExportOptions, Manifest
from edgemerge.contracts.files import check_output_dir, output_lock, remove_stale_leftovers, sha256_file
from edgemerge.contracts.graphs import merge_sites
from edgemerge.merge.reference import build_reference
from edgemerge.contracts.identity import stamp
from edgemerge.contracts.images import normalize, synthetic_images
from edgemerge.merge.core import record_decisions

FORBIDDEN_NATIVE = ("ScatterND",)  # and ScatterElements with a reduction, TopK with K > 3840
# TopK's K: NvInfer.h v10.3.0 says "up to 3840", onnx-tensorrt docs/operators.md (release/10.1-GA,
# and at the v10.15 parser) "less than 3840": the stricter reading holds for both.
TOPK_LIMIT = 3840
# The self-check's figures (edgemerge.contracts.compare, profile "self-check") kept in the manifest.
FIGURES = ("max_abs", "mean_abs", "range", "max_abs_rel_range", "rel_l2", "cosine", "argmax_agreement",
           "argmax_agreement_all", "near_ties")
# Reference inputs: a segmentation model is judged on every pixel of two; a classifier's output is
# one score vector per input, so it gets eight (argmax over two values says next to nothing).
N_REFERENCE = 2
N_REFERENCE_CLASSIFIER = 8
MIN_OPSET = 17  # LayerNormalization
# The newest opset exported and self-checked for every family: from 26 torch's exporter emits an
# Attention node (ViT/Segmenter) that onnx.checker rejects.
MAX_OPSET = 25


def reference_inputs(family: str) -> int:
    """How many seeded inputs the self-check and reference.npz hold for a model family: a
    classifier's one output per image needs more images to judge than a segmenter's map."""
    from edgemerge.merge.family import family_for

    return N_REFERENCE_CLASSIFIER if family_for(family).task == "classify" else N_REFERENCE


def check_opset(opset: int) -> None:
    """Refuse, before any work, an opset the export or ONNX Runtime (the self-check) cannot handle."""
    if opset < MIN_OPSET:
        raise EdgemergeError(f"opset {opset} is too old: LayerNormalization needs opset >= {MIN_OPSET}")
    if opset > MAX_OPSET:
        raise EdgemergeError(f"opset {opset} is not supported: edgemerge exports and self-checks opsets "
                             f"{MIN_OPSET}..{MAX_OPSET} (default 18)")
    import onnxruntime as ort
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    probe = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe", [x], [y]),
                              opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    try:
        ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception:
        raise EdgemergeError(f"opset {opset} is newer than this ONNX Runtime ({ort.__version__}) runs, and the "
                             "export is self-checked with it: choose a lower --opset or upgrade onnxruntime"
                             ) from None


def check_engine_possible(plugins: list[str] | None) -> None:
    """--engine needs TensorRT and a GPU here (and the plugin library, when named): say so before exporting."""
    from edgemerge.trt.record import current_environment

    env = current_environment()  # one line when TensorRT is missing
    if env.gpu_name is None:
        raise EdgemergeError("--engine builds the TensorRT engine here, but no GPU is visible: export without "
                             "--engine and run the bundle's build_on_device.sh on the target")
    for lib in plugins or ():
        if not Path(lib).is_file():
            raise EdgemergeError(f"plugin library {lib} not found")


def check_graph(model: onnx.ModelProto, merge_ops: str) -> None:
    """The exported file as TensorRT will see it: checker, static shapes, no forbidden ops."""
    try:
        onnx.checker.check_model(model, full_check=True)
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except Exception as e:
        reraise_out_of_memory(e)  # a full memory is not a graph the checker refuses
        raise CheckFailed(f"exported ONNX does not pass onnx.checker: {str(e).splitlines()[0]}") from None
    for vi in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]:
        dims = vi.type.tensor_type.shape.dim
        if vi.type.tensor_type.HasField("shape") and any(not d.HasField("dim_value") for d in dims):
            raise CheckFailed(f"tensor {vi.name} has no static shape after shape inference")
    if merge_ops == "native":
        problems = native_problems(inferred)
        if problems:
            raise CheckFailed("native graph uses ops TensorRT cannot build: " + "; ".join(problems[:3]))


def native_problems(model: onnx.ModelProto) -> list[str]:
    """Custom domains, reducing scatters, ScatterND, and TopK with K > 3840 in a graph."""
    out = []
    consts = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    consts[n.output[0]] = onnx.numpy_helper.to_array(a.t)
    for n in model.graph.node:
        if n.domain not in ("", "ai.onnx"):
            out.append(f"custom op {n.domain}.{n.op_type}")
        if n.op_type in FORBIDDEN_NATIVE:
            out.append(n.op_type)
        if n.op_type == "TopK" and len(n.input) > 1:
            k = consts.get(n.input[1])
            if k is None:
                out.append(f"TopK {n.name} with a K that is not a constant")
            elif int(np.asarray(k).reshape(-1)[0]) >= TOPK_LIMIT:
                out.append(f"TopK {n.name} with K={int(np.asarray(k).reshape(-1)[0])} >= {TOPK_LIMIT}")
        if n.op_type == "ScatterElements":
            red = next((a.s.decode() for a in n.attribute if a.name == "reduction"), "none")
            if red != "none":
                out.append(f"ScatterElements(reduction={red})")
    return out


def _onnxruntime_runs(model_bytes: bytes, batches: list[np.ndarray]) -> list[list[np.ndarray]]:
    """Every output for every batch, from one session (creating one costs seconds on a large model)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    # No CPU arena: ORT's arena keeps its peak (GBs at 1024x1024) out of reach of the PyTorch
    # replay that follows (segformer-b2 1024x1024: that forward peaked at 6.0 GB after an arena
    # session, 3.0 GB without one ORT before it); without it ORT itself peaks lower, as fast.
    so.enable_cpu_mem_arena = False
    sess = ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return [sess.run(None, {name: b}) for b in batches]


def self_check(model, proto: onnx.ModelProto, batches: list[np.ndarray], ref_out: list[np.ndarray],
               ref_slots: list[list[np.ndarray]], precision: str) -> dict[str, Any]:
    """ONNX Runtime against PyTorch, numerics and merge decisions told apart.

    ORT's merge decisions (its `slot` tensors) are replayed in PyTorch, and the logits must then
    meet the precision's limits: that is what the graph computes. Separately, at every merge site
    ORT's decision is judged against the one PyTorch makes there given the same history
    (edgemerge.contracts.compare.judge_decisions: the tokens that merge in either must merge into the same
    destination, near-ties excused). Figures without replay are reported too.
    """
    from edgemerge.contracts.graphs import match_metrics, slot_tensors, with_outputs
    from edgemerge.merge.reference import replay_reference

    names = slot_tensors(proto) or []
    metric_names = (match_metrics(proto) or []) if names else []
    exposed = names + metric_names
    run_bytes = with_outputs(proto, exposed).SerializeToString() if exposed else proto.SerializeToString()
    runs = _onnxruntime_runs(run_bytes, batches)
    # the graph's outputs name each exposed tensor once: two sites matching on one tensor (a stage's
    # queries and keys/values without spatial reduction) share it, so select by name, not position
    at = {n: 1 + i for i, n in enumerate(dict.fromkeys(exposed))}
    ort_out = [r[0] for r in runs]
    ort_slots = [[r[at[n]] for n in names] for r in runs]
    ort_metrics = [[r[at[n]] for n in metric_names] for r in runs] if len(metric_names) == len(names) else None
    if any(len(s) != len(r) for s, r in zip(ort_slots, ref_slots)):
        raise CheckFailed(f"self-check failed: the ONNX graph has {len(ort_slots[0])} merge sites, "
                          f"PyTorch {len(ref_slots[0])}")
    forced_out, sites = replay_reference(model, batches, ort_slots, ort_metrics)
    got_slots = [np.concatenate([s[i] for s in ort_slots]) for i in range(len(sites))]
    judged = compare(np.concatenate(ort_out), np.concatenate(forced_out), "self-check", precision)
    decisions, decision_rows = judge_decisions(sites, got_slots, precision)
    figures = {k: judged.figures[k] for k in FIGURES}
    unforced = {k: v for k, v in metrics(np.concatenate(ort_out), np.concatenate(ref_out), precision).items()
                if k in FIGURES}
    rows = judged.checks + decision_rows
    failed = [r for r in rows if not r["passed"]]
    result = {"passed": not failed, "thresholds": {r["metric"]: r["threshold"] for r in rows}, **figures,
              "merge_decisions": decisions, "without_replay": unforced}
    if failed:
        where = ""
        if any(r in decision_rows for r in failed) and decisions.get("per_site"):
            w = decisions["per_site"][decisions["worst_site"]]
            where = (f" (worst merge site {w['site']}, {w['kind']}: {w['same_destination']} of {w['merging']} "
                     f"merging tokens agree)")
        raise CheckFailed("self-check failed: ONNX Runtime vs PyTorch " + ", ".join(
            describe(r, {**judged.figures, **decisions}) for r in failed) + where)
    return result


def _io(model: onnx.ModelProto) -> tuple[list[dict], list[dict]]:
    def desc(v):
        t = v.type.tensor_type
        return {"name": v.name, "shape": [d.dim_value for d in t.shape.dim],
                "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name}

    return [desc(v) for v in model.graph.input], [desc(v) for v in model.graph.output]


def _versions() -> dict[str, str]:
    import onnxruntime
    import torch

    return {"edgemerge": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__}


def default_out(opts: ExportOptions) -> Path:
    """MODEL-VARIANT, plus whatever differs from the defaults (fp16, HxW, native ops, batch), so
    that a native or 128x128 export does not replace the plugin/512x512 one."""
    from edgemerge.models.registry import get_config

    parts = [opts.model, opts.variant]
    if opts.precision != "fp32":
        parts.append(opts.precision)
    if opts.resolution is not None and tuple(opts.resolution) != tuple(get_config(opts.model).resolution):
        parts.append(f"{opts.resolution[0]}x{opts.resolution[1]}")
    if opts.merge_ops != "plugin":
        parts.append(opts.merge_ops)
    if opts.batch != 1:
        parts.append(f"b{opts.batch}")
    return Path("-".join(parts))


@dataclass
class _Reference:
    """What step 1 leaves for the others: the PyTorch model and its outputs on the reference inputs."""

    model: Any
    cfg: Any
    info: Any  # CheckpointInfo | None
    plan: Any
    calibration: dict | None
    counts: dict[str, Any]
    resolution: tuple[int, int]
    num_classes: int
    batches: list[np.ndarray]
    outputs: list[np.ndarray]
    slots: list[list[np.ndarray]]


def export_bundle(opts: ExportOptions, progress: Callable[[str], None] = lambda s: None, *,
                  build_engine: Callable | None = None) -> dict[str, Any]:
    """Write the bundle for `opts` and return its manifest; raises EdgemergeError on any failure.

    Every option and the output folder are checked before any work; the bundle is written aside
    and renamed into place, so a failure leaves nothing half-written."""
    out = _check_options(opts, build_engine)
    shown = Path(opts.out) if opts.out else out  # a symlink named by --out: written through, said as given
    with output_lock(out, "bundle"):  # a second export to the same folder is refused while this one runs
        remove_stale_leftovers(out)  # temp folders of a killed export to the same folder
        replaced = (out / MANIFEST).is_file()
        ref = _reference(opts, progress)                       # 1. PyTorch
        proto = _export_graph(opts, ref, progress)             # 2. ONNX
        progress("checking the graph (onnx.checker, static shapes, ops)")
        check_graph(proto, opts.merge_ops)                     # 3. self-check
        progress("checking ONNX Runtime against PyTorch")
        figures = self_check(ref.model, proto, ref.batches, ref.outputs, ref.slots, opts.precision)
        progress("writing the bundle")                         # 4. the bundle
        manifest = _write_bundle(out, opts, ref, proto, figures, progress, build_engine)
    return {**manifest.to_dict(), "bundle": str(shown), "replaced": replaced}  # not in manifest.json: what this run did


def plan_table(opts: ExportOptions) -> dict[str, Any] | None:
    """The variant table of a user's plan file (`--plan`, checked against the schema); None for a
    variant of export_configs/. The file names its model and its one variant, which must be the
    ones asked for."""
    if opts.plan_file is None:
        return None
    from edgemerge.merge.plan import read_plan_file

    _, name, table, _ = read_plan_file(opts.plan_file, opts.model)
    if opts.variant != name:
        raise EdgemergeError(f"plan file {opts.plan_file} holds variant {name!r}, not {opts.variant!r}")
    return table


def _plan_file_record(opts: ExportOptions) -> dict[str, Any]:
    """What manifest.json keeps of a plan file: enough to rebuild the reference without the file."""
    from edgemerge.merge.plan import read_plan_file

    _, name, table, extra = read_plan_file(opts.plan_file, opts.model)
    return {"path": str(Path(opts.plan_file).resolve()), "sha256": sha256_file(opts.plan_file), "variant": name,
            "table": table, **extra}


def _check_options(opts: ExportOptions, build_engine: Callable | None) -> Path:
    """Refuse bad options, an unwritable output and an impossible --engine before any work."""
    plan_table(opts)
    if opts.precision not in PRECISIONS:
        raise EdgemergeError(f"unknown precision {opts.precision!r}; known: {', '.join(PRECISIONS)}")
    if opts.merge_ops not in MERGE_OPS:
        raise EdgemergeError(f"unknown merge ops {opts.merge_ops!r}; known: {', '.join(MERGE_OPS)}")
    check_opset(opts.opset)
    if opts.batch < 1:
        raise EdgemergeError(f"batch must be >= 1, got {opts.batch}")
    if opts.seed < 0:
        raise EdgemergeError(f"seed must be >= 0, got {opts.seed}")
    if opts.num_classes is not None and opts.num_classes < 1:
        raise EdgemergeError(f"num_classes must be >= 1, got {opts.num_classes}")
    if opts.checkpoint is not None and not Path(opts.checkpoint).exists():  # before "building the model"
        raise EdgemergeError(f"checkpoint not found: {opts.checkpoint}")
    out = _bundle_folder(Path(opts.out) if opts.out is not None else default_out(opts))
    _check_writable(out)
    if opts.engine:
        if build_engine is None:
            raise EdgemergeError("--engine needs a TensorRT builder (edgemerge.trt.build_engine; `edgemerge export` passes it)")
        check_engine_possible(opts.plugins)  # before the export, not after it
    return out


def _reference(opts: ExportOptions, progress: Callable[[str], None]) -> _Reference:
    """The PyTorch model (model, variant, resolution and checkpoint checked first) and its outputs
    and merge decisions on the reference inputs: one forward per input, reused by the self-check."""
    import torch

    from edgemerge.merge.counts import resolve
    from edgemerge.merge.plan import get_plan, load_calibration, plan_from_table
    from edgemerge.models.registry import get_config

    calibration = load_calibration(opts.calibration)
    table = plan_table(opts)
    plan = (get_plan(opts.model, opts.variant, calibration=calibration) if table is None else
            plan_from_table(opts.model, table, calibration=calibration, checked=True))
    resolve(opts.model, plan, opts.resolution or get_config(opts.model).resolution)  # refuses before any work
    progress("building the PyTorch model")
    model, cfg, info = build_reference(opts.model, opts.variant, checkpoint=opts.checkpoint,
                                       resolution=opts.resolution, seed=opts.seed,
                                       num_classes=opts.num_classes, calibration=calibration, plan_table=table)
    H, W = opts.resolution or cfg.resolution
    counts = resolve(model.config, plan, (H, W))  # the model as built (a checkpoint's DeiT: 2 prefix tokens)
    n_ref = reference_inputs(cfg.family)
    images = normalize(synthetic_images(opts.batch * n_ref, H, W, seed=opts.seed), cfg.mean, cfg.std)
    batches = [images[i * opts.batch:(i + 1) * opts.batch] for i in range(n_ref)]
    outputs, slots = [], []
    with torch.no_grad():
        for b in batches:
            with record_decisions() as decided:
                outputs.append(model(torch.from_numpy(b)).numpy())
            slots.append([s.numpy() for s in decided])
    num_classes = info.num_classes if info else (opts.num_classes or cfg.num_classes)
    return _Reference(model, cfg, info, plan, calibration, counts, (H, W), num_classes, batches, outputs, slots)


def _export_graph(opts: ExportOptions, ref: _Reference, progress: Callable[[str], None]) -> onnx.ModelProto:
    """torch -> ONNX, the merge ops finished (functions or inlined), stamped with what it is."""
    import torch

    from edgemerge.export.exporter import IOCast, finalize, torch_to_onnx

    progress(f"exporting ONNX (opset {opts.opset}, {opts.precision}, merge ops {opts.merge_ops})")
    export_model = IOCast(ref.model, torch.float16) if opts.precision == "fp16" else ref.model
    proto = torch_to_onnx(export_model, torch.from_numpy(ref.batches[0]), opts.opset,
                          optimize=opts.merge_ops == "plugin")  # native: optimized once, after inlining
    proto = finalize(proto, merge_ops=opts.merge_ops, precision=opts.precision)
    H, W = ref.resolution
    stamp(proto, {"model": opts.model, "variant": opts.variant, "resolution": [H, W], "batch": opts.batch,
                  "precision": opts.precision, "merge_ops": opts.merge_ops, "num_classes": ref.num_classes,
                  "seed": opts.seed, "checkpoint": None if ref.info is None else {"sha256": ref.info.sha256},
                  "calibration": ref.calibration,  # what validate cross-checks the manifest against
                  **({"plan_file": {"table": plan_table(opts)}} if opts.plan_file else {})})
    if proto.ByteSize() >= 2 ** 31:
        raise EdgemergeError("the model is over 2 GB; external-data bundles are not supported yet")
    return proto


def _manifest(opts: ExportOptions, ref: _Reference, proto: onnx.ModelProto, onnx_sha256: str,
              figures: dict) -> Manifest:
    from edgemerge.merge.flops import gflops
    from edgemerge.merge.plan import plan_dict

    H, W = ref.resolution
    inputs, outputs = _io(proto)
    info = ref.info
    return Manifest(
        format=1, model=opts.model, family=ref.cfg.family, variant=opts.variant,
        resolution=[H, W], batch=opts.batch, precision=opts.precision,
        merge_ops=opts.merge_ops, opset=opts.opset,
        plan={"model": opts.model, "variant": opts.variant, "resolution": [H, W], "plan": plan_dict(ref.plan),
              **ref.counts,  # counts and FLOPs of the model as built (a checkpoint's classes and tokens)
              "gflops": gflops(ref.model.config, opts.variant, (H, W), calibration=ref.calibration, plan=ref.plan)},
        inputs=inputs, outputs=outputs, mean=list(ref.cfg.mean), std=list(ref.cfg.std),
        num_classes=ref.num_classes,
        checkpoint=None if info is None else {"path": str(Path(info.path).resolve()), "format": info.format,
                                              "sha256": info.sha256},
        seed=opts.seed, calibration=ref.calibration, onnx_sha256=onnx_sha256,
        custom_ops=sorted({n.op_type for n in proto.graph.node if n.domain == "edgemerge"}),
        merge_sites=merge_sites(proto),  # op -> node names: the plugin layers a plugin engine must hold
        reference={"file": "reference.npz", "inputs": len(ref.batches),
                   "images": f"synthetic_images(n={opts.batch * len(ref.batches)}, seed={opts.seed})"},
        versions=_versions(), self_check=figures,
        files=["model.onnx", MANIFEST, "reference.npz"],
        extra={"plan_file": _plan_file_record(opts)} if opts.plan_file else {})


def _write_bundle(out: Path, opts: ExportOptions, ref: _Reference, proto: onnx.ModelProto, figures: dict,
                  progress: Callable[[str], None], build_engine: Callable | None) -> Manifest:
    """model.onnx, reference.npz, manifest.json and the engine or device script, written in a
    temporary folder beside `out` and renamed into place (an old bundle is swapped out)."""
    try:
        # the pid in the name tells a later export whether this folder is a dead process's leftover
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    except OSError as e:
        raise EdgemergeError(f"output directory {out.resolve().parent} is not writable ({e.strerror})") from None
    try:
        onnx_path = tmp / "model.onnx"
        onnx_path.write_bytes(proto.SerializeToString())
        np.savez(tmp / "reference.npz", **{f"input_{i}": b for i, b in enumerate(ref.batches)},
                 **{f"output_{i}": o for i, o in enumerate(ref.outputs)})
        manifest = _manifest(opts, ref, proto, sha256_file(onnx_path), figures)
        (tmp / MANIFEST).write_text(manifest.to_json())
        _finish_engine_or_script(tmp, manifest, opts, progress, build_engine)
        (tmp / MANIFEST).write_text(manifest.to_json())
        os.chmod(tmp, 0o755)
        _replace_dir(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        reraise_out_of_memory(e)
        raise EdgemergeError(f"cannot write the bundle to {out}: {e}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _finish_engine_or_script(tmp: Path, manifest: Manifest, opts: ExportOptions, progress,
                             build_engine: Callable | None) -> None:
    """Build the engine when TensorRT and a GPU are here (and asked for), else the device script."""
    from edgemerge.trt import device_script

    if opts.engine:
        progress("building the TensorRT engine")
        build_engine(tmp / "model.onnx", tmp / "model.plan", plugins=opts.plugins)
        manifest["files"] += ["model.plan", "model.plan.json"]
        return
    if device_script.copy_plugin_sources(tmp) is not None:
        manifest["files"].append("plugins/")
    device_script.write_build_script(tmp, manifest)
    manifest["files"] += [device_script.SCRIPT, device_script.TOOL]


def _bundle_folder(out: Path) -> Path:
    """The folder the bundle replaces. A symlink (to a bundle, or to where one goes) is followed: the
    bundle is written into its target and the link kept. The current folder or one above it (`-o .`)
    is refused: the bundle replaces its folder whole, and this one holds the shell that runs us."""
    if out.is_symlink():
        out = out.resolve()
    here = Path.cwd().resolve()
    absolute = out.resolve()
    if absolute == here or absolute in here.parents:
        raise EdgemergeError(f"--out {out} is the current directory{' or one above it' if absolute != here else ''}: "
                             "a bundle replaces its folder whole; name a new folder (e.g. -o ./bundle)")
    return out


def _check_writable(out: Path) -> None:
    """The bundle's folder: replaceable (empty, or an older bundle) and writable, checked first."""
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise EdgemergeError(f"output directory {out} is not empty and holds no bundle; refusing to replace it")
    parent = out.resolve().parent
    if not parent.is_dir():  # the bundle is written beside it and renamed into place
        raise EdgemergeError(f"output parent directory {parent} does not exist")
    check_output_dir(out, "bundle")


def _replace_dir(tmp: Path, out: Path) -> None:
    """Rename tmp to out; an old bundle at out is swapped out first and removed after."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
