"""Learned metrics on Segformer++'s sites: identity at step 0 (today's decisions), training lowers
the distillation loss on generated images, the result exports as a MatMul feeding the match op."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from edgemerge.cli import main
from edgemerge.contracts.manifest import ExportOptions
from edgemerge.export.bundle import export_bundle
from edgemerge.merge.reference import _randomize_norm_stats, build_reference
from edgemerge.contracts.images import synthetic_images
from edgemerge.merge import core
from edgemerge.models.registry import build_model
from edgemerge.train.metric import TrainOptions, train_metric

RES = (128, 128)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("seg")
    torch.manual_seed(0)
    model = build_model("segformer-b0", resolution=RES)
    _randomize_norm_stats(model, 0)
    model.decode_head.classifier.weight.data *= 10  # class scores far from uniform
    torch.save(model.state_dict(), d / "b0.pth")
    (d / "img").mkdir()
    for i, im in enumerate(synthetic_images(8, *RES, seed=1)):
        Image.fromarray((im.transpose(1, 2, 0) * 255).astype(np.uint8)).save(d / "img" / f"{i:02d}.png")
    return d


def _slots(model, x):
    with torch.no_grad(), core.record_decisions() as slots:
        model(x)
    return slots


@pytest.mark.parametrize("base,sites", [("fast", 8), ("hq-pa", 8), ("xfast-ffn-pa", 12)])
def test_identity_metric_is_todays(base, sites):
    """Without a trained metric the -lm variant decides exactly what its base variant does."""
    x = torch.randn(1, 3, *RES, generator=torch.Generator().manual_seed(0))
    learned, _, _ = build_reference("segformer-b0", f"{base}-lm", resolution=RES)
    plain, _, _ = build_reference("segformer-b0", base, resolution=RES)
    a, b = _slots(learned, x), _slots(plain, x)
    assert len(a) == len(b) == sites and all(torch.equal(s, t) for s, t in zip(a, b))


def test_train_lowers_the_loss_and_exports_a_matmul_metric(data, tmp_path):
    """xfast-ffn-pa-lm: learned kv and query sites, pooled queries, proportional attention and the
    MixFFN sites (cosine, no metric) together."""
    run = tmp_path / "run"
    res = CliRunner().invoke(main, ["train-metric", "-m", "segformer-b0", "-v", "xfast-ffn-pa-lm", "-c",
                                    str(data / "b0.pth"), "-i", str(data / "img"), "-o", str(run), "--steps", "6",
                                    "--batch", "4", "--lr", "1e-3", "-r", "128x128"])
    assert res.exit_code == 0, res.output
    record = json.loads((run / "train_record.json").read_text())
    assert record["eval_after"]["soft_kl"] < record["eval_before"]["soft_kl"]
    assert len(record["picked_mass_last_step"]) == 8  # kv in stages 1-2, queries in 3-4, 2 blocks each
    for site in record["picked_mass_last_step"]:
        assert 0 < site["mass"] <= site["r"] * 1.05
    x = torch.randn(1, 3, *RES, generator=torch.Generator().manual_seed(0))
    trained, _, info = build_reference("segformer-b0", "xfast-ffn-pa-lm", checkpoint=str(run / "checkpoint.pth"),
                                       resolution=RES)
    assert len(info.merge_state) == 16
    plain, _, _ = build_reference("segformer-b0", "xfast-ffn-pa", checkpoint=str(run / "checkpoint.pth"),
                                  resolution=RES)
    assert any(not torch.equal(s, t) for s, t in zip(_slots(trained, x), _slots(plain, x)))
    m = export_bundle(ExportOptions("segformer-b0", "xfast-ffn-pa-lm", checkpoint=str(run / "checkpoint.pth"),
                                    resolution=RES, out=str(tmp_path / "bundle")))
    assert m["self_check"]["passed"]
    proto = onnx.load(tmp_path / "bundle" / "model.onnx")
    producer = {o: n for n in proto.graph.node for o in n.output}
    matches = [n for n in proto.graph.node if n.op_type == "TokenMatchBipartite"]
    assert len(matches) == 12  # 8 attention sites + 4 MixFFN sites

    def learned(n) -> bool:  # metric = x @ W + b, straight into the existing match op
        add = producer[n.input[0]]
        return add.op_type == "Add" and any(producer.get(i) is not None and producer[i].op_type == "MatMul"
                                            for i in add.input)

    assert sum(learned(n) for n in matches) == 8


def test_learned_variant_needs_the_metric(data, tmp_path):
    res = CliRunner().invoke(main, ["export", "-m", "segformer-b0", "-v", "fast-lm", "-c", str(data / "b0.pth"),
                                    "-r", "128x128", "-o", str(tmp_path / "out")])
    assert res.exit_code == 2
    errors = [ln for ln in res.output.splitlines() if ln.startswith("edgemerge: error:")]
    assert len(errors) == 1 and "train-metric" in errors[0]


def test_labels_add_the_task_loss(data, tmp_path):
    """Same start, same batch: with label maps the first loss is the KL plus a positive cross-entropy."""
    labels = tmp_path / "labels"
    labels.mkdir()
    rng = np.random.default_rng(0)
    for f in sorted((data / "img").iterdir()):
        lab = rng.integers(0, 19, RES, dtype=np.uint8)
        lab[:8] = 255  # ignored (ids 19..254 are refused, as validate refuses them)
        Image.fromarray(lab).save(labels / f.name)
    kw = dict(model="segformer-b0", variant="fast-lm", checkpoint=str(data / "b0.pth"), images=str(data / "img"),
              steps=1, batch=4, resolution=RES)
    plain = train_metric(TrainOptions(out=str(tmp_path / "a"), **kw))
    task = train_metric(TrainOptions(out=str(tmp_path / "b"), labels=str(labels), **kw))
    assert task["losses"][0] > plain["losses"][0] + 0.1  # CE of a random-label map is ~log(19)
    assert "cross-entropy" in task["loss"] and "cross-entropy" not in plain["loss"]
    (labels / Path(plain["train_files"][0]).name).unlink()  # only the training images need a label map
    res = CliRunner().invoke(main, ["train-metric", "-m", "segformer-b0", "-v", "fast-lm", "-c", str(data / "b0.pth"),
                                    "-i", str(data / "img"), "--labels", str(labels), "-o", str(tmp_path / "c"),
                                    "--steps", "1", "-r", "128x128"])
    assert res.exit_code == 2 and "no label map for" in res.output


def test_pooled_query_stages_pool_in_training_as_at_inference():
    """xfast-pa-lm pools stage 1-2 queries (no metric there): the soft forward pools them too, so
    the kv metrics of those stages train under what inference runs."""
    from edgemerge.merge.plan import get_plan
    from edgemerge.merge.families.segformer import apply_soft_segformer, segformer_soft_metrics

    torch.manual_seed(0)
    model = build_model("segformer-b0", resolution=(64, 64)).eval()
    plan = get_plan("segformer-b0", "xfast-pa-lm")
    apply_soft_segformer(model, plan, segformer_soft_metrics(model, plan, {}), tau=0.01, top_k=3)
    x = torch.randn(1, 16 * 16, 32)
    pooled, restore = model.encoder.stages[0].blocks[0].attn.reduce_queries(x, (16, 16))
    assert pooled.shape == (1, 64, 32) and restore(pooled).shape == x.shape
    assert torch.allclose(pooled[0, 0], x[0, [0, 1, 16, 17]].mean(0))
