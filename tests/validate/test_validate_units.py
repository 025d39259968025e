"""Validation pieces that need no model: metrics, limits, merge-decision agreement, the torch-free path."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from edgemerge.contracts.compare import check
from edgemerge.validate import metrics as M


def test_thresholds_per_precision_and_overrides():
    assert M.thresholds_for("fp32") == {"argmax_agreement": (">=", 0.999), "max_abs_rel_range": ("<=", 1e-3)}
    assert M.thresholds_for("fp16") == {"argmax_agreement": (">=", 0.99), "cosine": (">=", 0.9999),
                                        "rel_l2": ("<=", 5e-3), "max_abs_rel_range": ("<=", 5e-3)}
    # an engine's decisions cannot be replayed: a flipped near-tie moves every later token
    assert M.thresholds_for("fp16", replayed=False) == {"argmax_agreement": (">=", 0.99), "cosine": (">=", 0.999)}
    t = M.thresholds_for("fp16", atol=0.5, rtol=0.01, min_agreement=0.9)
    assert t["max_abs"] == ("<=", 0.5) and t["max_abs_rel_range"] == ("<=", 0.01)
    assert t["argmax_agreement"] == (">=", 0.9) and t["cosine"] == (">=", 0.9999)


def test_output_metrics_and_checks():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(2, 5, 8, 8)).astype(np.float32)
    same = M.output_metrics(ref, ref)
    assert same["max_abs"] == 0 and same["argmax_agreement"] == 1 and same["miou_vs_reference"] == 1
    assert same["cosine"] == pytest.approx(1.0)
    got = ref.copy()
    got[0, :, 0, 0] = ref[0, ::-1, 0, 0] + 10  # one pixel's class changes
    m = M.output_metrics(got, ref)
    assert m["argmax_agreement"] == pytest.approx(1 - 1 / 128)
    rows = {r["metric"]: r for r in check(m, M.thresholds_for("fp32"))}
    assert not rows["max_abs_rel_range"]["passed"] and not rows["argmax_agreement"]["passed"]
    inf = ref.copy()
    inf[1, 0, 0, 0] = np.inf  # fp16 overflow
    m = M.output_metrics(inf, ref)
    assert not m["finite"] and not check(m, M.thresholds_for("fp16"))[1]["passed"]


def test_miou_ignores_out_of_range_labels():
    target = np.array([[0, 1, 255, 7]])
    pred = np.array([[0, 1, 1, 1]])
    conf = M.confusion(pred, target, num_classes=3)
    assert conf.sum() == 2 and M.miou(conf) == 1.0
    assert M.miou(M.confusion(np.array([0, 0]), np.array([0, 1]), 2)) == pytest.approx(0.25)
    labs = M.label_metrics(np.array([[0, 1]]), np.array([[0, 0]]), np.array([[0, 1]]), 2)
    assert labs["miou_reference"] == 1.0 and labs["miou_difference"] == pytest.approx(0.25 - 1.0)


def test_resize_labels_nearest():
    lab = np.arange(16).reshape(1, 4, 4)
    assert M.resize_labels(lab, 2, 2).tolist() == [[[5, 7], [13, 15]]]


def test_device_side_imports_without_torch(tmp_path):
    """On a Jetson there is no torch (nor, maybe, onnx): the validate package must import without them."""
    code = ("import sys; sys.modules['torch'] = None; sys.modules['onnx'] = None\n"
            "import edgemerge.validate, edgemerge.validate.runners\n"
            "import edgemerge.cli.validate\n"
            "from edgemerge.validate.reference import torch_available\n"
            "assert not torch_available()\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_report_json_has_no_nan(tmp_path):
    from edgemerge.validate.report import write_json

    write_json(tmp_path / "r.json", {"a": float("inf"), "b": np.float32(1.5), "c": np.arange(2)})
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": "inf", "b": 1.5, "c": [0, 1]}
