"""`edgemerge export`: a merged zoo model -> a self-checked, deterministic bundle directory.

The bundle is written into a temporary sibling directory and renamed into place at the end, so a
failure anywhere (bad input, a failed self-check) leaves no bundle behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx

from edgemerge import __version__
from edgemerge.errors import CheckFailed, EdgemergeError
from edgemerge.files import sha256_file
from edgemerge.images import normalize, synthetic_images
from edgemerge.merge.core import record_decisions

PRECISIONS = ("fp32", "fp16")
MERGE_OPS = ("plugin", "native")
FORBIDDEN_NATIVE = ("ScatterND",)  # and ScatterElements with a reduction, TopK with K > 3840
TOPK_LIMIT = 3840
FP32_TOLERANCE = 1e-4  # max abs error relative to the logits' range
FP16_MIN_AGREEMENT = 0.995
# Merge decisions, as the fraction of tokens whose slot equals PyTorch's at the same site. Near-ties
# (sources whose candidate destinations are near-identical tokens) flip with rounding: measured on
# segformer-b5 fast at 1024x1024 with random weights, 0.996 on average and 0.990 at the worst of
# 52 sites. A wrong lowering decides differently nearly everywhere.
MIN_DECISION_AGREEMENT = 0.98  # mean over sites
MIN_DECISION_AGREEMENT_SITE = 0.95  # worst site
N_REFERENCE = 2


@dataclass
class ExportOptions:
    model: str
    variant: str
    checkpoint: str | None = None
    resolution: tuple[int, int] | None = None
    batch: int = 1
    precision: str = "fp32"
    merge_ops: str = "plugin"
    opset: int = 18
    out: str | None = None
    seed: int = 0
    num_classes: int | None = None
    calibration: str | None = None
    engine: bool = False
    plugins: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def parse_resolution(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        h, w = (int(v) for v in text.lower().split("x"))
        if h <= 0 or w <= 0:
            raise ValueError
    except ValueError:
        raise EdgemergeError(f"resolution must look like 512x512 (HxW), got {text!r}") from None
    return h, w


def build_reference(model_name: str, variant: str, *, checkpoint: str | None = None,
                    resolution: tuple[int, int] | None = None, seed: int = 0,
                    num_classes: int | None = None, calibration: dict | None = None, mode: str | None = None):
    """The merged PyTorch model a bundle is made from (or checked against); eval mode, fp32.

    Returns (model, config, checkpoint_info or None).
    """
    import torch

    from edgemerge.merge import apply_merging, get_plan
    from edgemerge.models import build_model, get_config, load_checkpoint

    cfg = get_config(model_name)
    plan = get_plan(model_name, variant, calibration=calibration, mode=mode)
    info = None
    if checkpoint is not None:
        model, info = load_checkpoint(model_name, checkpoint, num_classes=num_classes, resolution=resolution)
    else:
        torch.manual_seed(seed)
        model = build_model(model_name, num_classes=num_classes, resolution=resolution)
        _randomize_norm_stats(model, seed)
    if info is not None:
        _require_learned_metric(model_name, variant, plan, info)
    apply_merging(model, plan, dtem_state=info.merge_state if info else None)
    return model.eval(), cfg, info


def _require_learned_metric(model_name: str, variant: str, plan, info) -> None:
    """A learned-metric variant on a checkpoint without the metric is a mistake, not a reason to
    fall back to the keys/tokens (without a checkpoint, the metric starts as today's)."""
    from edgemerge.merge.patch import learned_metric_keys

    want = learned_metric_keys(model_name, plan)
    missing = [k for k in want if k not in info.merge_state]
    if missing:
        have = "none of them" if len(missing) == len(want) else f"{len(want) - len(missing)} of {len(want)}"
        raise EdgemergeError(f"--variant {variant} needs a learned merge metric ({missing[0].replace('.weight', '.*')} "
                             f"...), but {info.path} ({info.format} layout) has {have} (DTEM files: "
                             f"attn.qkv.metric_layer.*); train one with edgemerge train-metric, or use the "
                             f"variant without it (tome / hq / fast)")


def _randomize_norm_stats(model, seed: int) -> None:
    """Random BatchNorm statistics and norm affines, so a random-weight model is not degenerate.

    With torch's default init every LayerNorm is the identity affine and the class scores of a
    random model differ by little more than fp16 rounding; trained models have neither property.
    """
    import torch

    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            if isinstance(m, (torch.nn.LayerNorm, torch.nn.BatchNorm2d)) and m.weight is not None:
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))


def compare_logits(got: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Figures every check uses: errors relative to the logits' range, argmax agreement."""
    got = got.astype(np.float32)
    ref = ref.astype(np.float32)
    span = float(ref.max() - ref.min()) or 1.0
    err = np.abs(got - ref)
    agree = float((got.argmax(1) == ref.argmax(1)).mean())
    return {"max_abs": float(err.max()), "mean_abs": float(err.mean()), "range": span,
            "max_abs_rel_range": float(err.max()) / span, "argmax_agreement": agree}


def check_graph(model: onnx.ModelProto, merge_ops: str) -> None:
    """The exported file as TensorRT will see it: checker, static shapes, no forbidden ops."""
    try:
        onnx.checker.check_model(model, full_check=True)
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except Exception as e:
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
            elif int(np.asarray(k).reshape(-1)[0]) > TOPK_LIMIT:
                out.append(f"TopK {n.name} with K={int(np.asarray(k).reshape(-1)[0])} > {TOPK_LIMIT}")
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
    sess = ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return [sess.run(None, {name: b}) for b in batches]


def self_check(model, proto: onnx.ModelProto, batches: list[np.ndarray], ref_out: list[np.ndarray],
               ref_slots: list[list[np.ndarray]], precision: str) -> dict[str, Any]:
    """ONNX Runtime against PyTorch, numerics and merge decisions told apart.

    ORT's merge decisions (its `slot` tensors) are replayed in PyTorch, and the logits must then
    meet the precision's limits: that is what the graph computes. Separately, at every merge site
    ORT's decision must agree token for token (>= MIN_DECISION_AGREEMENT) with the one PyTorch
    makes there given the same history: a near-tie may flip a few tokens (ORT and PyTorch round
    the similarities differently), a wrong lowering flips many. Comparing with PyTorch's unforced
    run instead would let one early flip compound through every later site. Figures without
    replay are reported too.
    """
    import torch

    from edgemerge.merge.core import replay_decisions
    from edgemerge.validate.runners import slot_tensors, with_outputs

    names = slot_tensors(proto) or []
    run_bytes = with_outputs(proto, names).SerializeToString() if names else proto.SerializeToString()
    ort_out, forced_out, same_tokens, same_sites = [], [], [], []
    for b, unforced, outs in zip(batches, ref_slots, _onnxruntime_runs(run_bytes, batches)):
        ort_out.append(outs[0])
        ort_slots = outs[1:]
        if len(ort_slots) != len(unforced):
            raise CheckFailed(f"self-check failed: the ONNX graph has {len(ort_slots)} merge sites, "
                              f"PyTorch {len(unforced)}")
        with torch.no_grad(), record_decisions() as own, replay_decisions([torch.from_numpy(s) for s in ort_slots]):
            forced_out.append(model(torch.from_numpy(b)).numpy())
        for got, want in zip(ort_slots, own):
            same_tokens.append(float(np.mean(got == want.numpy())))
            same_sites.append(float(np.array_equal(got, want.numpy())))
    figures = compare_logits(np.concatenate(ort_out), np.concatenate(forced_out))
    unforced = compare_logits(np.concatenate(ort_out), np.concatenate(ref_out))
    decisions = {"sites": len(same_sites) // max(len(batches), 1),
                 "sites_identical": float(np.mean(same_sites)) if same_sites else 1.0,
                 "tokens_same_slot": float(np.mean(same_tokens)) if same_tokens else 1.0,
                 "tokens_same_slot_worst_site": float(np.min(same_tokens)) if same_tokens else 1.0,
                 "tokens_same_slot_per_site": [round(t, 6) for t in same_tokens]}
    limits: dict[str, float] = {"tokens_same_slot": MIN_DECISION_AGREEMENT,
                                "tokens_same_slot_worst_site": MIN_DECISION_AGREEMENT_SITE}
    if precision == "fp32":
        limits.update(max_abs_rel_range=FP32_TOLERANCE, argmax_agreement=1.0)
    else:
        limits.update(argmax_agreement=FP16_MIN_AGREEMENT)
    failed = [k for k, lim in limits.items()
              if (figures.get(k, decisions.get(k)) > lim if k == "max_abs_rel_range" else
                  figures.get(k, decisions.get(k)) < lim)]
    result = {"passed": not failed, "thresholds": limits, **figures, "merge_decisions": decisions,
              "without_replay": unforced}
    if failed:
        raise CheckFailed("self-check failed: ONNX Runtime vs PyTorch " + ", ".join(
            f"{k} = {figures.get(k, decisions.get(k)):.4g} (limit {limits[k]})" for k in failed))
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


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def default_out(opts: ExportOptions) -> Path:
    suffix = "" if opts.precision == "fp32" else f"-{opts.precision}"
    return Path(f"{opts.model}-{opts.variant}{suffix}")


def export_bundle(opts: ExportOptions, progress: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Write the bundle for `opts` and return its manifest; raises EdgemergeError on any failure."""
    import torch

    from edgemerge.export.exporter import IOCast, finalize, torch_to_onnx
    from edgemerge.merge import get_plan, resolve
    from edgemerge.merge.plan import load_calibration, plan_dict
    from edgemerge.merge.flops import gflops

    if opts.precision not in PRECISIONS:
        raise EdgemergeError(f"unknown precision {opts.precision!r}; known: {', '.join(PRECISIONS)}")
    if opts.merge_ops not in MERGE_OPS:
        raise EdgemergeError(f"unknown merge ops {opts.merge_ops!r}; known: {', '.join(MERGE_OPS)}")
    if opts.opset < 17:
        raise EdgemergeError(f"opset {opts.opset} is too old: LayerNormalization needs opset >= 17")
    if opts.batch < 1:
        raise EdgemergeError(f"batch must be >= 1, got {opts.batch}")
    out = Path(opts.out) if opts.out else default_out(opts)
    _check_writable(out)

    # 1. the PyTorch reference (checks model, variant, resolution and checkpoint first)
    calibration = load_calibration(opts.calibration)
    plan = get_plan(opts.model, opts.variant, calibration=calibration)
    from edgemerge.models import get_config

    counts = resolve(opts.model, plan, opts.resolution or get_config(opts.model).resolution)
    progress("building the PyTorch model")
    model, cfg, info = build_reference(opts.model, opts.variant, checkpoint=opts.checkpoint,
                                       resolution=opts.resolution, seed=opts.seed,
                                       num_classes=opts.num_classes, calibration=calibration)
    H, W = opts.resolution or cfg.resolution
    num_classes = info.num_classes if info else (opts.num_classes or cfg.num_classes)
    images = normalize(synthetic_images(opts.batch * N_REFERENCE, H, W, seed=opts.seed), cfg.mean, cfg.std)
    batches = [images[i * opts.batch:(i + 1) * opts.batch] for i in range(N_REFERENCE)]
    ref_out, ref_slots = [], []
    with torch.no_grad():
        for b in batches:
            with record_decisions() as slots:
                ref_out.append(model(torch.from_numpy(b)).numpy())
            ref_slots.append([s.numpy() for s in slots])

    # 2. export and finish the graph
    progress(f"exporting ONNX (opset {opts.opset}, {opts.precision}, merge ops {opts.merge_ops})")
    dtype = torch.float16 if opts.precision == "fp16" else torch.float32
    export_model = IOCast(model, dtype) if opts.precision == "fp16" else model
    proto = torch_to_onnx(export_model, torch.from_numpy(batches[0]), opts.opset,
                          optimize=opts.merge_ops == "plugin")  # native: optimized once, after inlining
    proto = finalize(proto, merge_ops=opts.merge_ops, precision=opts.precision)
    model_bytes = proto.SerializeToString()
    if len(model_bytes) >= 2 ** 31:
        raise EdgemergeError("the model is over 2 GB; external-data bundles are not supported yet")

    # 3. self-check: the file as TensorRT/ORT will read it, and ORT against PyTorch
    progress("checking the graph (onnx.checker, static shapes, ops)")
    check_graph(proto, opts.merge_ops)
    progress("checking ONNX Runtime against PyTorch")
    figures = self_check(model, proto, batches, ref_out, ref_slots, opts.precision)

    # 4. the bundle, written aside and renamed into place
    progress("writing the bundle")
    plan_json = {"model": opts.model, "variant": opts.variant, "resolution": [H, W], "plan": plan_dict(plan),
                 **counts, "gflops": gflops(opts.model, opts.variant, (H, W), calibration=calibration)}
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as e:
        raise EdgemergeError(f"output directory {out.resolve().parent} is not writable ({e.strerror})") from None
    try:
        onnx_path = tmp / "model.onnx"
        onnx_path.write_bytes(model_bytes)
        np.savez(tmp / "reference.npz", **{f"input_{i}": b for i, b in enumerate(batches)},
                 **{f"output_{i}": o for i, o in enumerate(ref_out)})
        inputs, outputs = _io(proto)
        manifest = {
            "format": 1, "model": opts.model, "family": cfg.family, "variant": opts.variant,
            "resolution": [H, W], "batch": opts.batch, "precision": opts.precision,
            "merge_ops": opts.merge_ops, "opset": opts.opset, "plan": plan_json,
            "inputs": inputs, "outputs": outputs, "mean": list(cfg.mean), "std": list(cfg.std),
            "num_classes": num_classes,
            "checkpoint": None if info is None else {"path": str(Path(info.path).resolve()), "format": info.format,
                                                     "sha256": info.sha256},
            "seed": opts.seed, "calibration": calibration,
            "onnx_sha256": sha256_file(onnx_path),
            "custom_ops": sorted({n.op_type for n in proto.graph.node if n.domain == "edgemerge"}),
            "reference": {"file": "reference.npz", "inputs": N_REFERENCE,
                          "images": f"synthetic_images(n={opts.batch * N_REFERENCE}, seed={opts.seed})"},
            "versions": _versions(), "self_check": figures,
            "files": ["model.onnx", "manifest.json", "reference.npz"],
        }
        _write_json(tmp / "manifest.json", manifest)
        _finish_engine_or_script(tmp, manifest, opts, progress)
        _write_json(tmp / "manifest.json", manifest)
        os.chmod(tmp, 0o755)
        _replace_dir(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise EdgemergeError(f"cannot write the bundle to {out}: {e}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    manifest["bundle"] = str(out)
    return manifest


def _finish_engine_or_script(tmp: Path, manifest: dict, opts: ExportOptions, progress) -> None:
    """Build the engine when TensorRT and a GPU are here (and asked for), else the device script."""
    from edgemerge.trt import device_script

    if opts.engine:
        from edgemerge.trt.builder import build_engine

        progress("building the TensorRT engine")
        build_engine(tmp / "model.onnx", tmp / "model.plan", plugins=[opts.plugins] if opts.plugins else None)
        manifest["files"] += ["model.plan", "model.plan.json"]
        return
    if device_script.copy_plugin_sources(tmp) is not None:
        manifest["files"].append("plugins/")
    device_script.write_build_script(tmp, manifest)
    manifest["files"].append("build_on_device.sh")


def _check_writable(out: Path) -> None:
    parent = out.resolve().parent
    if out.exists() and not out.is_dir():
        raise EdgemergeError(f"output {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / "manifest.json").is_file():
        raise EdgemergeError(f"output directory {out} is not empty and holds no bundle; refusing to replace it")
    if not parent.is_dir():
        raise EdgemergeError(f"output parent directory {parent} does not exist")
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as e:
        raise EdgemergeError(f"output directory {parent} is not writable ({e.strerror})") from None


def _replace_dir(tmp: Path, out: Path) -> None:
    """Rename tmp to out; an old bundle at out is swapped out first and removed after."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
