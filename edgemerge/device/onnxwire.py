"""ONNX without the onnx package: the few protobuf fields the device route reads or drops.

A stock JetPack shell has no `onnx`; model.onnx is a ModelProto, so dropping the `edgemerge`
model-local functions (TensorRT < 10.7 with plugins) and reading the derived graph's source hash
are done on the wire format (field numbers from onnx.proto).
"""

from __future__ import annotations

from edgemerge.contracts.errors import EdgemergeError
from edgemerge.contracts.opspec import DOMAIN

# ---- ONNX without the onnx package: drop model-local functions ----------------------------------

_MODEL_FUNCTIONS = 25  # onnx.proto: ModelProto.functions
_FUNCTION_DOMAIN = 10  # onnx.proto: FunctionProto.domain


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise EdgemergeError("not an ONNX file (truncated protobuf)")
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7


def _fields(data: bytes):
    """(field number, wire type, start, value start, end) of each top-level protobuf field."""
    pos = 0
    while pos < len(data):
        start = pos
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, end = _varint(data, pos)
        elif wire == 1:
            end = pos + 8
        elif wire == 2:
            length, pos = _varint(data, pos)
            end = pos + length
        elif wire == 5:
            end = pos + 4
        else:
            raise EdgemergeError(f"not an ONNX file (protobuf wire type {wire})")
        if end > len(data) or number == 0:
            raise EdgemergeError("not an ONNX file (truncated protobuf)")
        yield number, wire, start, pos, end
        pos = end


def _function_domain(body: bytes) -> str:
    for number, wire, _, vstart, end in _fields(body):
        if number == _FUNCTION_DOMAIN and wire == 2:
            return body[vstart:end].decode()
    return ""


def strip_functions(data: bytes, domain: str = DOMAIN) -> tuple[bytes, int]:
    """The serialized ModelProto less its model-local functions of `domain`, and how many went.

    Everything else is kept byte for byte, so the result equals what onnx would serialize for the
    same model with those functions deleted (fields are written in field-number order)."""
    out, dropped = bytearray(), 0
    for number, wire, start, vstart, end in _fields(data):
        if number == _MODEL_FUNCTIONS and wire == 2 and _function_domain(data[vstart:end]) == domain:
            dropped += 1
            continue
        out += data[start:end]
    return bytes(out), dropped


_MODEL_METADATA_PROPS = 14  # onnx.proto: ModelProto.metadata_props (StringStringEntryProto key=1, value=2)
SOURCE_SHA_KEY = "edgemerge.source_onnx_sha256"  # in a derived graph: sha256 of the model.onnx it was made from


def derived_from(data: bytes) -> str | None:
    """The `SOURCE_SHA_KEY` metadata property of a serialized ModelProto (None when absent), read
    without the onnx package: a derived graph is reused only for the model.onnx it was made from."""
    try:
        for number, wire, _, vstart, end in _fields(data):
            if number != _MODEL_METADATA_PROPS or wire != 2:
                continue
            sub = data[vstart:end]
            entry = {n: sub[vs:e] for n, w, _, vs, e in _fields(sub) if w == 2}
            if entry.get(1, b"").decode(errors="replace") == SOURCE_SHA_KEY:
                return entry.get(2, b"").decode(errors="replace")
    except EdgemergeError:
        return None
    return None
