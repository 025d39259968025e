"""identity: the export stamp in model.onnx's metadata_props, and check_manifest, which refuses a
manifest that no longer describes its ONNX, an ONNX without the stamp, and does both on a machine
without the onnx package (a standard-library reader of the protobuf's metadata_props)."""

from __future__ import annotations

import builtins
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgemerge.contracts import identity
from edgemerge.contracts.errors import EdgemergeError
from edgemerge.contracts.identity import METADATA_KEY, check_manifest, read_metadata_props, stamp

MANIFEST = {"model": "segformer-b0", "variant": "fast", "resolution": [128, 128], "batch": 1,
            "precision": "fp32", "merge_ops": "plugin", "num_classes": 19, "seed": 0,
            "checkpoint": {"sha256": "ab" * 32}, "calibration": None}


def _model(big: bool = False) -> onnx.ModelProto:
    """A small real ModelProto with fields before and after metadata_props (14): ir_version (1),
    producer (2, 3), opset_import (8), graph (7, with an initializer), functions (25)."""
    w = np.arange(200_000 if big else 6, dtype=np.float32).reshape(-1, 2 if not big else 1000)
    init = numpy_helper.from_array(w, "w")
    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, w.shape[0]])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, w.shape[1]])], [init])
    fn = helper.make_function("custom", "Twice", ["a"], ["b"], [helper.make_node("Add", ["a", "a"], ["b"])],
                              [helper.make_opsetid("", 18)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("custom", 1)],
                              functions=[fn], ir_version=10, producer_name="edgemerge")
    model.doc_string = "é" * 300  # non-ASCII, a length needing a two-byte varint
    return model


def _save(model: onnx.ModelProto, path) -> str:
    onnx.save(model, str(path))
    return str(path)


@pytest.fixture
def no_onnx(monkeypatch):
    """A device without the onnx package: `import onnx` raises ImportError."""
    real = builtins.__import__

    def fake(name, *args, **kwargs):
        if name == "onnx" or name.startswith("onnx."):
            raise ImportError(f"No module named {name!r}")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake)


def test_stamp_round_trips(tmp_path):
    model = _model()
    stamp(model, MANIFEST)
    path = _save(model, tmp_path / "model.onnx")
    check_manifest(MANIFEST, path, tmp_path / "manifest.json")  # passes
    with pytest.raises(EdgemergeError, match="variant 'hq' in the manifest, 'fast' in model.onnx"):
        check_manifest({**MANIFEST, "variant": "hq"}, path, tmp_path / "manifest.json")


@pytest.mark.parametrize("onnx_present", [True, False], ids=["onnx", "no-onnx"])
def test_unstamped_onnx_is_refused(tmp_path, request, onnx_present):
    path = _save(_model(), tmp_path / "model.onnx")
    if not onnx_present:
        request.getfixturevalue("no_onnx")
    with pytest.raises(EdgemergeError) as e:
        check_manifest(MANIFEST, path, tmp_path / "manifest.json")
    msg = str(e.value)
    assert "\n" not in msg and "no edgemerge export stamp" in msg and "re-export" in msg


def test_other_metadata_is_not_a_stamp(tmp_path):
    model = _model()
    helper.set_model_props(model, {"author": "someone", "edgemerge.exportx": "{}"})
    path = _save(model, tmp_path / "model.onnx")
    with pytest.raises(EdgemergeError, match="no edgemerge export stamp"):
        check_manifest(MANIFEST, path, tmp_path / "manifest.json")


def test_without_onnx_an_edited_manifest_is_still_caught(tmp_path, no_onnx):
    model = _model()
    stamp(model, MANIFEST)
    path = tmp_path / "model.onnx"
    path.write_bytes(model.SerializeToString())
    check_manifest(MANIFEST, path, tmp_path / "manifest.json")  # passes
    with pytest.raises(EdgemergeError) as e:
        check_manifest({**MANIFEST, "resolution": [256, 256]}, path, tmp_path / "manifest.json")
    assert "resolution [256, 256] in the manifest, [128, 128] in model.onnx" in str(e.value)
    assert "edited after export" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("big", [False, True], ids=["small", "4MB-initializer"])
def test_reader_agrees_with_onnx(tmp_path, big):
    model = _model(big)
    helper.set_model_props(model, {"a": "1", "ünïcode": "välue", "empty": ""})
    stamp(model, MANIFEST)
    path = _save(model, tmp_path / "model.onnx")
    want = [(p.key, p.value) for p in onnx.load(path).metadata_props]
    assert read_metadata_props(path) == want
    assert dict(want)[METADATA_KEY] == json.dumps(identity.export_identity(MANIFEST), sort_keys=True)


def test_reader_on_an_exported_bundle(tmp_path):
    """The real thing: a model.onnx that `edgemerge export` wrote (torch's exporter, functions, stamp)."""
    import torch

    from edgemerge.export.exporter import finalize, torch_to_onnx
    from edgemerge.merge.patch import merged_model

    model = merged_model("segformer-b0", "fast-pa", resolution=(128, 128))
    proto = finalize(torch_to_onnx(model, torch.randn(1, 3, 128, 128), 18), merge_ops="plugin", precision="fp32")
    stamp(proto, MANIFEST)
    path = _save(proto, tmp_path / "model.onnx")
    assert read_metadata_props(path) == [(p.key, p.value) for p in onnx.load(path).metadata_props]


@pytest.mark.parametrize("data", [b"", b"\x0a", b"\x72\x05ab", b"\xff" * 12, b"\x0b\x01", b"not an onnx file\n"])
def test_reader_refuses_garbage_in_one_line(tmp_path, data):
    path = tmp_path / "model.onnx"
    path.write_bytes(data)
    try:
        props = read_metadata_props(path)
    except EdgemergeError as e:
        assert "\n" not in str(e) and "model.onnx" in str(e)
    else:
        assert props == []  # an empty file is a valid, empty ModelProto


def test_garbled_stamp_is_one_line(tmp_path, no_onnx):
    model = _model()
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, "{not json"
    path = tmp_path / "model.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(EdgemergeError, match="not valid JSON"):
        check_manifest(MANIFEST, path, tmp_path / "manifest.json")


def test_reader_skips_fields_of_every_wire_type(tmp_path):
    """Unknown top-level fields (a newer onnx's, or anyone's) of each wire type before the stamp:
    varint, fixed64, length-delimited, fixed32 - skipped as protobuf (and onnx) does."""
    model = _model()
    stamp(model, MANIFEST)
    def varint(n: int) -> bytes:
        out = b""
        while n >= 0x80:
            out, n = out + bytes([n & 0x7F | 0x80]), n >> 7
        return out + bytes([n])

    unknown = (varint(99 << 3 | 0) + varint(300)  # varint
               + varint(98 << 3 | 1) + b"\x72" * 8  # fixed64: 8 bytes (0x72 = metadata_props' tag)
               + varint(96 << 3 | 5) + b"\x72" * 4  # fixed32: 4 bytes
               + varint(97 << 3 | 2) + varint(3) + b"\x72\x72\x72")  # length-delimited
    path = tmp_path / "model.onnx"
    path.write_bytes(unknown + model.SerializeToString())
    parsed = onnx.load_from_string(path.read_bytes())  # onnx reads it: a valid ModelProto
    assert read_metadata_props(path) == [(p.key, p.value) for p in parsed.metadata_props] != []
