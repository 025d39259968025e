"""edgemerge/contracts/manifest.py: the typed manifest, its one reader, and the export options it gives back."""

import json

import pytest

from edgemerge.contracts.errors import EdgemergeError
from edgemerge.contracts.manifest import ExportOptions, Manifest, read_manifest

BASE = {"model": "segformer-b0", "variant": "fast", "resolution": [512, 512], "precision": "fp16", "onnx_sha256": "00",
        "checkpoint": {"path": "/ck", "format": "hf", "sha256": "ab"}, "seed": 3, "future_field": 1}


def test_round_trip_keeps_unknown_fields(tmp_path):
    m = Manifest.from_dict(BASE)
    assert m.to_dict()["future_field"] == 1 and Manifest.from_dict(m.to_dict()) == m
    (tmp_path / "manifest.json").write_text(m.to_json())
    assert read_manifest(tmp_path) == m and read_manifest(tmp_path / "model.onnx") == m


def test_defaults_are_the_exporters():
    """One place for defaults: an old manifest without `inputs` means the exporter's `images`, fp32
    (bench used to fall back to `pixel_values` in fp16)."""
    m = Manifest.from_dict({k: BASE[k] for k in ("model", "variant", "resolution", "onnx_sha256")})
    assert m.input_spec() == ("images", (1, 3, 512, 512), "float32")
    assert (m.precision, m.merge_ops, m.batch, m.opset, m.seed) == ("fp32", "plugin", 1, 18, 0)


def test_export_options_come_back():
    opts = Manifest.from_dict(BASE).export_options(variant="none", out="x")
    assert opts == ExportOptions(model="segformer-b0", variant="none", checkpoint="/ck", resolution=(512, 512),
                                 precision="fp16", seed=3, out="x")


@pytest.mark.parametrize("data,match", [({"model": "m", "variant": "v"}, "no 'resolution'"),
                                        ({**BASE, "precision": "int8"}, "precision must be"),
                                        ({**BASE, "resolution": [512]}, r"resolution must be \[H, W\]")])
def test_bad_manifests_are_one_line(tmp_path, data, match):
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(EdgemergeError, match=match):
        read_manifest(tmp_path)
