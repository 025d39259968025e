"""validate's report.png: up to --rows inputs, ground truth with labels, a class legend (checked on the
matplotlib figure: the axes, their titles and the legend's entries)."""

from __future__ import annotations

import numpy as np
import pytest

from edgemerge.validate.report import MAX_LEGEND_CLASSES, class_names, png_bytes, report_figure


def inputs(n=5, k=4, H=24, W=32, seed=0):
    g = np.random.default_rng(seed)
    images = g.random((n, 3, H, W)).astype(np.float32)
    ref = g.integers(0, k, (n, H // 4, W // 4))
    got = ref.copy()
    got[0, 0, 0] = (got[0, 0, 0] + 1) % k
    labels = g.integers(0, k, (n, H, W))
    labels[:, 0] = 255  # an ignored row
    return images, ref, got, labels


def rows_and_titles(fig):
    axes = [ax for ax in fig.axes]
    titles = [ax.get_title() for ax in axes]
    return axes, titles


@pytest.mark.parametrize("rows, want", [(1, 1), (3, 3), (5, 5), (9, 5)])
def test_rows_follow_the_option(rows, want):
    images, ref, got, _ = inputs()
    fig = report_figure(images, ref, got, 4, "onnx (fp32)", rows=rows)
    axes, titles = rows_and_titles(fig)
    assert len(axes) == want * 4
    assert titles.count("PyTorch (reference)") == want and titles.count("ground truth") == 0


def test_labels_add_a_ground_truth_column_and_the_legend_names_the_classes():
    images, ref, got, labels = inputs()
    names = ["road", "sky", "car", "tree"]
    fig = report_figure(images, ref, got, 4, "onnx (fp16)", rows=2, labels=labels, classes=names,
                        names=[f"f{i}.png" for i in range(5)])
    axes, titles = rows_and_titles(fig)
    assert len(axes) == 2 * 5 and titles[:5] == ["f0.png", "ground truth", "PyTorch (reference)", "onnx (fp16)",
                                                 titles[4]]
    assert titles[4].startswith("disagreement ")
    (legend,) = fig.legends
    entries = [t.get_text() for t in legend.get_texts()]
    assert entries == names + ["ignored (label 255 / >= K)"]
    assert png_bytes(images, ref, got, 4, "onnx", labels=labels)[:8] == b"\x89PNG\r\n\x1a\n"


def test_legend_without_names_and_with_many_classes():
    images, ref, got, _ = inputs(n=2, k=40, H=64, W=64)
    fig = report_figure(images, ref, got, 40, "onnx (fp32)")
    (legend,) = fig.legends
    entries = [t.get_text() for t in legend.get_texts()]
    assert len(entries) == MAX_LEGEND_CLASSES and all(e.startswith("class ") for e in entries)
    assert "most frequent" in legend.get_title().get_text()
    assert "ignored" not in " ".join(entries)  # no labels, nothing ignored


def test_class_names_from_a_hugging_face_checkpoint(tmp_path):
    import json

    (tmp_path / "config.json").write_text(json.dumps({"id2label": {"0": "sky", "1": "road"}}))
    assert class_names({"checkpoint": {"path": str(tmp_path)}}) == ["sky", "road"]
    assert class_names({"checkpoint": None}) is None
    assert class_names({"checkpoint": {"path": str(tmp_path / "w.pth")}}) is None
