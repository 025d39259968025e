"""A calibration is refused (one line, exit 2, before any work) for another model, another family,
or without its two fractions, instead of being recorded or silently replaced by the defaults."""

from __future__ import annotations

import json

import pytest

from cli_helpers import one_line_error, refuse_work, run_cli, tree

CAL_T = {"model": "segmenter-vit-t", "resolution": [64, 64], "quantile": 0.5,
         "local_fraction": 0.25, "global_fraction": 0.1}


def _cal(tmp_path, **fields):
    path = tmp_path / "cal.json"
    path.write_text(json.dumps({k: v for k, v in {**CAL_T, **fields}.items() if v is not None}))
    return path


def test_calibration_of_the_same_model_accepted(tmp_path):
    res = run_cli("plan", "-m", "segmenter-vit-t", "-v", "algm", "-r", "64x64", "--calibration", _cal(tmp_path),
                  "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["plan"]["local_fraction"] == 0.25


def test_calibration_of_another_model(tmp_path):
    msg = one_line_error(run_cli("plan", "-m", "segmenter-vit-s", "-v", "algm", "--calibration", _cal(tmp_path)))
    assert "made for segmenter-vit-t, not segmenter-vit-s" in msg


def test_calibration_of_another_family_refused_before_export(tmp_path, monkeypatch):
    from edgemerge.export import bundle

    refuse_work(monkeypatch, bundle, "build_reference", "the export")
    cal = _cal(tmp_path)
    msg = one_line_error(run_cli("export", "-m", "segformer-b0", "-v", "fast", "-r", "128x128",
                                 "--calibration", cal, "-o", tmp_path / "b"))
    assert "only segmenter-* models" in msg and "segformer-b0" in msg
    assert tree(tmp_path) == ["cal.json"]


@pytest.mark.parametrize("fields, words", [
    ({"local_fraction": None, "global_fraction": None}, "no local_fraction"),
    ({"global_fraction": None}, "no global_fraction"),
    ({"local_fraction": 1.5}, "local_fraction in [0, 1]"),
    ({"global_fraction": "0.1"}, "global_fraction in [0, 1]"),
])
def test_calibration_without_fractions(tmp_path, fields, words):
    msg = one_line_error(run_cli("plan", "-m", "segmenter-vit-t", "-v", "algm", "--calibration",
                                 _cal(tmp_path, **fields)))
    assert words in msg


def test_calibration_that_is_not_an_object(tmp_path):
    path = tmp_path / "cal.json"
    path.write_text("[0.25, 0.1]")
    assert "no local_fraction" in one_line_error(run_cli("plan", "-m", "segmenter-vit-t", "-v", "algm",
                                                         "--calibration", path))


@pytest.mark.parametrize("model, fields, words", [
    ("segmenter-vit-s", {}, "made for segmenter-vit-t, not segmenter-vit-s"),  # vit-t's file for vit-s
    ("segmenter-vit-t", {"local_fraction": None, "global_fraction": None}, "no local_fraction"),
])
def test_export_refuses_the_calibration_before_exporting(tmp_path, monkeypatch, model, fields, words):
    from edgemerge.export import bundle

    refuse_work(monkeypatch, bundle, "build_reference", "the export")
    cal = _cal(tmp_path, **fields)
    msg = one_line_error(run_cli("export", "-m", model, "-v", "algm", "-r", "64x64", "--calibration", cal,
                                 "-o", tmp_path / "b"))
    assert words in msg
    assert tree(tmp_path) == ["cal.json"]
