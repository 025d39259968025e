"""`edgemerge validate` end to end on small segformer-b0 bundles (CPU, ONNX Runtime).

Bundles are exported once per module; each broken bundle is a copy with one deliberate fault and
its manifest's onnx_sha256 updated, so the hash check passes and the comparison must catch it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("polygraphy")

from edgemerge.cli import main  # noqa: E402
from edgemerge.contracts.manifest import ExportOptions
from edgemerge.export.bundle import export_bundle

RES = (128, 128)
pytestmark = pytest.mark.slow


def _export(out: Path, **kw) -> Path:
    opts = ExportOptions(model="segformer-b0", variant="fast", resolution=RES, out=str(out), **kw)
    export_bundle(opts)
    return out


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bundles")
    return {"fp32-plugin": _export(root / "fp32-plugin"),
            "fp32-native": _export(root / "fp32-native", merge_ops="native"),
            "fp16-plugin": _export(root / "fp16-plugin", precision="fp16")}


def _copy(bundle: Path, dst: Path) -> Path:
    shutil.copytree(bundle, dst, ignore=shutil.ignore_patterns("validate_report"))
    return dst


def _save(model: onnx.ModelProto, bundle: Path) -> None:
    """Write a doctored model.onnx and update the manifest's hash, so only the comparison can tell."""
    onnx.save(model, str(bundle / "model.onnx"))
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["onnx_sha256"] = hashlib.sha256((bundle / "model.onnx").read_bytes()).hexdigest()
    (bundle / "manifest.json").write_text(json.dumps(manifest))


ALTERED = "encoder.stages.0.blocks.0.mlp.dwconv.weight"


@pytest.fixture(scope="module")
def weight_altered(bundles, tmp_path_factory) -> Path:
    bundle = _copy(bundles["fp32-plugin"], tmp_path_factory.mktemp("broken") / "weight")
    model = onnx.load(str(bundle / "model.onnx"))
    init = next(t for t in model.graph.initializer if t.name == ALTERED)
    w = onnx.numpy_helper.to_array(init).copy()
    w.flat[0] += 5.0  # one weight
    init.CopyFrom(onnx.numpy_helper.from_array(w, init.name))
    _save(model, bundle)
    return bundle


def overwrite_merge_function(opset: int) -> onnx.FunctionProto:
    """TokenMerge lowered wrongly: ScatterElements without a reduction (last write wins), the bug
    torch's dynamo exporter makes of scatter_reduce(mean), instead of the one-hot sum and division."""
    num_out = helper.make_node("Constant", [], ["num_out_s"])
    ref = onnx.AttributeProto()
    ref.name, ref.type, ref.ref_attr_name = "value_int", onnx.AttributeProto.INT, "num_out"
    num_out.attribute.append(ref)

    def i64(name, values):
        return helper.make_node("Constant", [], [name], value=helper.make_tensor(name, TensorProto.INT64,
                                                                               [len(values)], values))

    def zeros(shape, like, out):
        return [helper.make_node("ConstantOfShape", [shape], [out + "_f"],
                                 value=helper.make_tensor("z", TensorProto.FLOAT, [1], [0.0])),
                helper.make_node("CastLike", [out + "_f", like], [out])]

    nodes = [
        num_out, i64("c0", [0]), i64("c1", [1]), i64("c2", [2]), i64("c3", [3]),
        helper.make_node("Unsqueeze", ["num_out_s", "c0"], ["m"]),
        helper.make_node("Shape", ["x"], ["xs"]),
        helper.make_node("Shape", ["size"], ["ss"]),
        helper.make_node("Slice", ["xs", "c0", "c1"], ["b"]),
        helper.make_node("Slice", ["xs", "c2", "c3"], ["c"]),
        helper.make_node("Concat", ["b", "m", "c"], ["mshape"], axis=0),
        helper.make_node("Concat", ["b", "m", "c1"], ["sshape"], axis=0),
        *zeros("mshape", "x", "zx"), *zeros("sshape", "size", "zs"),
        helper.make_node("Cast", ["slot"], ["s64"], to=TensorProto.INT64),
        helper.make_node("Unsqueeze", ["s64", "c2"], ["s3"]),
        helper.make_node("Expand", ["s3", "xs"], ["ix"]),
        helper.make_node("Expand", ["s3", "ss"], ["is"]),
        helper.make_node("ScatterElements", ["zx", "ix", "x"], ["merged"], axis=1),  # no reduction
        helper.make_node("ScatterElements", ["zs", "is", "size"], ["merged_size"], axis=1),
    ]
    return helper.make_function("edgemerge", "TokenMerge", ["x", "size", "slot"], ["merged", "merged_size"], nodes,
                                opset_imports=[helper.make_opsetid("", opset)],
                                attributes=["num_out", "plugin_namespace"])


@pytest.fixture(scope="module")
def merge_overwrite(bundles, tmp_path_factory) -> Path:
    bundle = _copy(bundles["fp32-plugin"], tmp_path_factory.mktemp("broken") / "overwrite")
    model = onnx.load(str(bundle / "model.onnx"))
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    i = next(i for i, f in enumerate(model.functions) if f.name == "TokenMerge")
    model.functions[i].CopyFrom(overwrite_merge_function(opset))
    _save(model, bundle)
    return bundle


def run(*args: str):
    return CliRunner().invoke(main, ["validate", *map(str, args)], catch_exceptions=False)


def _one_line_error(result) -> str:
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("edgemerge: error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


# ---- a correct export passes ------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["fp32-plugin", "fp32-native", "fp16-plugin"])
def test_correct_export_passes(bundles, tmp_path, kind):
    res = run(bundles[kind], "--out", tmp_path / "rep", "--num", 2)
    assert res.exit_code == 0, res.stderr + res.stdout
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert report["passed"] and report["failure"] is None
    assert report["merge_decisions"]["available"], report["merge_decisions"]
    assert report["merge_decisions"]["sites"] == 8
    assert report["merge_decisions"]["same_destination_worst"] == 1.0
    assert report["merge_decisions"]["judged_on"] == "the artifact's metric"
    if kind.startswith("fp16"):
        assert set(report["thresholds"]) == {"argmax_agreement", "cosine", "rel_l2", "max_abs_rel_range"}
        assert report["thresholds"]["argmax_agreement"]["value"] == 0.99
    else:
        assert report["thresholds"]["max_abs_rel_range"]["value"] == 1e-3
        assert report["reference"]["consistency"]["max_abs_vs_reference_npz"] < 1e-5


def test_report_has_every_field(bundles, tmp_path):
    res = run(bundles["fp32-plugin"], "--out", tmp_path, "--num", 2)
    assert res.exit_code == 0, res.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    for key in ("passed", "artifact", "model", "reference", "inputs", "thresholds", "metrics", "checks",
                "merge_decisions", "labels", "localize", "versions", "report_files", "failure"):
        assert key in report, key
    m = report["metrics"]["logits"]
    for key in ("max_abs", "mean_abs", "max_rel", "mean_rel", "cosine", "argmax_agreement", "miou_vs_reference",
                "max_abs_rel_range"):
        assert isinstance(m[key], float), key
    for c in report["checks"]:
        assert set(c) >= {"output", "metric", "value", "op", "threshold", "passed"}
    assert report["artifact"]["onnx_sha256"] == json.loads((bundles["fp32-plugin"] / "manifest.json").read_text())["onnx_sha256"]
    assert report["inputs"]["kind"] == "synthetic" and report["inputs"]["count"] == 2
    assert report["versions"]["onnxruntime"] and report["versions"]["polygraphy"]
    merge = report["merge_decisions"]
    assert {"same_destination_worst", "metric_rel_l2_worst", "near_ties_excused", "tokens_same_fate",
            "per_site"} <= set(merge)
    assert any(c["output"] == "merge" and c["passed"] for c in report["checks"])  # a check, not information
    assert f"figure: {(tmp_path / 'report.png').resolve()}" in res.stdout  # said, as report.json's path is
    png = (tmp_path / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_stored_reference_without_pytorch_path(bundles, tmp_path):
    res = run(bundles["fp32-plugin"] / "model.onnx", "--reference", "stored", "--out", tmp_path)
    assert res.exit_code == 0, res.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["reference"]["kind"] == "reference.npz" and report["inputs"]["count"] == 2
    assert report["merge_decisions"]["available"] is False


def test_validate_without_torch_uses_reference_npz(bundles, tmp_path):
    """The Jetson path: no torch importable, the stored inputs/outputs are the reference."""
    import subprocess
    import sys

    code = ("import sys, json; sys.modules['torch'] = None\n"
            "from edgemerge.validate.api import validate_artifact\n"
            f"r = validate_artifact({str(bundles['fp32-plugin'])!r}, out={str(tmp_path)!r})\n"
            "print(json.dumps([r['passed'], r['reference']['kind'], 'torch' in sys.modules and sys.modules['torch'] is not None]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [True, "reference.npz", False]


# ---- broken exports fail with exit 1, naming the metric -----------------------------------------

def test_altered_weight_fails(weight_altered, tmp_path):
    res = run(weight_altered, "--out", tmp_path, "--num", 2)
    assert res.exit_code == 1, res.stderr
    line = _one_line_error(res)
    assert "logits.max_abs_rel_range" in line or "logits.argmax_agreement" in line
    report = json.loads((tmp_path / "report.json").read_text())
    assert not report["passed"]


def test_overwrite_merge_fails_and_is_localized_to_a_merge(merge_overwrite, tmp_path):
    res = run(merge_overwrite, "--out", tmp_path, "--num", 1, "--localize")
    assert res.exit_code == 1, res.stderr
    line = _one_line_error(res)
    assert "logits.max_abs_rel_range" in line or "logits.argmax_agreement" in line
    report = json.loads((tmp_path / "report.json").read_text())
    failed = {c["metric"] for c in report["checks"] if not c["passed"]}
    assert "max_abs_rel_range" in failed
    first = report["localize"]["first_divergent"]
    assert first["op_type"] == "TokenMerge" and first["domain"] == "edgemerge"
    assert not report["localize"]["differing_initializers"]  # same weights: the op itself is wrong


def _downstream(model: onnx.ModelProto, tensor: str) -> set[str]:
    """Names of the nodes that read `tensor`, directly or through other nodes."""
    reached, names = {tensor}, set()
    for node in model.graph.node:  # graph order is topological
        if any(i in reached for i in node.input):
            names.add(node.name)
            reached.update(node.output)
    return names


def test_localize_names_a_node_downstream_of_the_altered_weight(weight_altered, tmp_path):
    res = run(weight_altered, "--out", tmp_path, "--num", 1, "--localize")
    assert res.exit_code == 1, res.stderr
    assert "first diverging node" in res.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    first = report["localize"]["first_divergent"]
    model = onnx.load(str(weight_altered / "model.onnx"))
    assert first["name"] in _downstream(model, ALTERED)
    assert first["name"] in res.stdout and first["name"] in _one_line_error(res)
    assert report["localize"]["differing_initializers"][0]["initializer"] == ALTERED


# ---- bad input: exit 2, one line --------------------------------------------------------------

def test_no_manifest(bundles, tmp_path):
    shutil.copy(bundles["fp32-plugin"] / "model.onnx", tmp_path / "model.onnx")
    res = run(tmp_path / "model.onnx")
    assert res.exit_code == 2
    assert "no manifest.json next to" in _one_line_error(res)


def test_edited_onnx_without_new_hash(bundles, tmp_path):
    bundle = _copy(bundles["fp32-plugin"], tmp_path / "b")
    with open(bundle / "model.onnx", "ab") as f:
        f.write(b"\0")
    res = run(bundle)
    assert res.exit_code == 2 and "sha256" in _one_line_error(res)


def test_empty_image_folder(bundles, tmp_path):
    (tmp_path / "imgs").mkdir()
    res = run(bundles["fp32-plugin"], "--images", tmp_path / "imgs", "--out", tmp_path / "rep")
    assert res.exit_code == 2 and "no images" in _one_line_error(res)


def _image_folder(root: Path, n: int = 2) -> Path:
    from PIL import Image

    from edgemerge.contracts.images import synthetic_images

    root.mkdir()
    for i, img in enumerate(synthetic_images(n, 96, 160, seed=3)):
        Image.fromarray((img.transpose(1, 2, 0) * 255).astype(np.uint8)).save(root / f"frame{i:02d}.png")
    return root


def _label_folder(root: Path, stems: list[str]) -> Path:
    from PIL import Image

    root.mkdir()
    rng = np.random.default_rng(0)
    for s in stems:
        lab = rng.integers(0, 12, (96, 160)).astype(np.uint8)
        lab[:10] = 255  # ignored
        Image.fromarray(lab).save(root / f"{s}.png")
    return root


def test_label_folder_that_does_not_match(bundles, tmp_path):
    images = _image_folder(tmp_path / "imgs")
    labels = _label_folder(tmp_path / "labels", ["frame00", "other"])
    res = run(bundles["fp32-plugin"], "--images", images, "--labels", labels, "--out", tmp_path / "rep")
    assert res.exit_code == 2
    line = _one_line_error(res)
    assert "frame01" in line and "label" in line


def test_images_and_labels(bundles, tmp_path):
    images = _image_folder(tmp_path / "imgs")
    labels = _label_folder(tmp_path / "labels", ["frame00", "frame01"])
    res = run(bundles["fp32-plugin"], "--images", images, "--labels", labels, "--out", tmp_path / "rep")
    assert res.exit_code == 0, res.stderr
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert report["inputs"]["files"] == ["frame00.png", "frame01.png"]
    lab = report["labels"]
    assert 0 <= lab["miou_reference"] <= 1 and 0 <= lab["miou_artifact"] <= 1
    assert lab["miou_difference"] == pytest.approx(lab["miou_artifact"] - lab["miou_reference"])
    assert abs(lab["miou_difference"]) < 1e-3  # a correct fp32 export predicts what PyTorch predicts
    # the cost of merging in the same command: the unmerged model (variant none) on the same images
    assert "mIoU unmerged PyTorch" in res.stdout and "merging costs" in res.stdout
    assert lab["miou_unmerged"] == pytest.approx(_unmerged_miou(bundles["fp32-plugin"], images, labels))
    assert lab["miou_cost_of_merging"] == pytest.approx(lab["miou_unmerged"] - lab["miou_reference"])


def _unmerged_miou(bundle: Path, images: Path, labels: Path) -> float:
    """Built here without validate's code: segformer-b0 `none`, same seed and resolution."""
    import torch

    from edgemerge.contracts.compare import confusion, miou
    from edgemerge.contracts.manifest import read_manifest
    from edgemerge.merge.reference import build_reference
    from edgemerge.validate.inputs import folder_inputs

    m = read_manifest(bundle)
    model, _, _ = build_reference("segformer-b0", "none", resolution=RES, seed=m.seed)
    inp = folder_inputs(m, images, labels)
    with torch.no_grad():
        pred = model(torch.from_numpy(np.concatenate(inp.batches))).numpy().argmax(1)
    from edgemerge.validate.metrics import resize_labels

    return miou(confusion(pred, resize_labels(inp.labels, *pred.shape[1:]), m.num_classes))


@pytest.fixture(scope="module")
def checkpoint_bundle(tmp_path_factory) -> Path:
    from edgemerge.models.registry import build_model

    root = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(1)
    torch.save(build_model("segformer-b0").state_dict(), root / "ckpt.pth")
    return _export(root / "bundle", checkpoint=str(root / "ckpt.pth"))


def test_changed_checkpoint_is_refused(checkpoint_bundle, tmp_path):
    ckpt = Path(json.loads((checkpoint_bundle / "manifest.json").read_text())["checkpoint"]["path"])
    original = ckpt.read_bytes()
    try:
        ckpt.write_bytes(original + b"\0")
        res = run(checkpoint_bundle, "--out", tmp_path)
        assert res.exit_code == 2 and "changed since export" in _one_line_error(res)
        ckpt.unlink()
        res = run(checkpoint_bundle, "--out", tmp_path)
        assert res.exit_code == 2 and "gone" in _one_line_error(res)
    finally:
        ckpt.write_bytes(original)
    res = run(checkpoint_bundle, "--out", tmp_path, "--num", 1)
    assert res.exit_code == 0, res.stderr


def test_engine_without_tensorrt(bundles, tmp_path):
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed: this checks the clean refusal without it")
    from edgemerge.device.record import BuildRecord, write_record
    from edgemerge.contracts.files import sha256_file

    bundle = _copy(bundles["fp32-plugin"], tmp_path / "b")
    plan = bundle / "model.plan"
    plan.write_bytes(b"not an engine")
    write_record(plan, BuildRecord(tensorrt_version="10.3.0", gpu_name="Orin", compute_capability="8.7",
                                   plugins="none", plugins_sha256=None, onnx_sha256=sha256_file(bundle / "model.onnx"),
                                   engine_sha256=sha256_file(plan), engine_size=plan.stat().st_size,
                                   edgemerge_version="0", build_time="2025-01-01T00:00:00+00:00"))
    res = run(plan, "--out", tmp_path / "rep")
    assert res.exit_code == 2 and "TensorRT" in _one_line_error(res)


@pytest.mark.parametrize("reference", ["stored", "pytorch"])
def test_engine_path_with_onnxruntime_standing_in_for_tensorrt(bundles, weight_altered, tmp_path, monkeypatch,
                                                               reference):
    """`validate model.plan` as on a device: only TensorRT's engine loader and runner are replaced
    (by ONNX Runtime on the bundle's model.onnx); inputs, feeds, Comparator, metrics and report run
    as they do with a real engine. A correct engine passes, an engine of the altered model fails."""
    import polygraphy.backend.trt as ptrt
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

    import edgemerge.trt.builder as builder
    from edgemerge.device.record import BuildRecord, write_record
    from edgemerge.contracts.files import sha256_file

    monkeypatch.setattr(builder, "load_engine", lambda path, plugins=None: Path(path))
    monkeypatch.setattr(ptrt, "TrtRunner", lambda engine, name: OnnxrtRunner(
        SessionFromOnnx(str(engine.with_name("model.onnx")), providers=["cpu"]), name=name))
    for source, code in ((bundles["fp32-plugin"], 0), (weight_altered, 1)):
        bundle = _copy(source, tmp_path / f"{reference}-{code}")
        plan = bundle / "model.plan"
        plan.write_bytes(b"engine")
        write_record(plan, BuildRecord(
            tensorrt_version="10.3.0", gpu_name="Orin", compute_capability="8.7", plugins="none",
            plugins_sha256=None, onnx_sha256=sha256_file(bundle / "model.onnx"), engine_sha256=sha256_file(plan),
            engine_size=plan.stat().st_size, edgemerge_version="0", build_time="2025-01-01T00:00:00+00:00"))
        res = run(plan, "--reference", reference, "--out", tmp_path / f"rep-{reference}-{code}")
        assert res.exit_code == code, res.output
        report = json.loads((tmp_path / f"rep-{reference}-{code}" / "report.json").read_text())
        assert report["passed"] is (code == 0)
        assert report["merge_decisions"]["available"] is False
