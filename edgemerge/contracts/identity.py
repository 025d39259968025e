"""What a bundle's model.onnx was exported as, recorded inside the ONNX (its metadata_props) so
that a manifest.json edited afterwards (model, variant, resolution, ...) is caught by the tools
that trust it, instead of being blamed on the ONNX file later ("argmax 0.057").

manifest.json holds the ONNX's sha256 (the file cannot hold its own hash); the ONNX holds the
manifest fields that decide what the file computes. Pure JSON: needs no torch and no TensorRT.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgemerge.contracts.errors import EdgemergeError

METADATA_KEY = "edgemerge.export"
FIELDS = ("model", "variant", "resolution", "batch", "precision", "merge_ops", "num_classes", "seed")


def export_identity(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest fields the ONNX must agree with (checkpoint by hash, calibration by fractions)."""
    ident = {k: manifest.get(k) for k in FIELDS}
    ident["resolution"] = list(ident["resolution"] or [])
    ck = manifest.get("checkpoint")
    ident["checkpoint_sha256"] = ck.get("sha256") if isinstance(ck, dict) else None
    cal = manifest.get("calibration")
    ident["calibration"] = ({k: cal.get(k) for k in ("local_fraction", "global_fraction")}
                            if isinstance(cal, dict) else None)
    plan_file = manifest.get("plan_file")  # exported with --plan: the variant is the file's table
    if isinstance(plan_file, dict):
        ident["plan_table"] = plan_file.get("table")
    return ident


def stamp(proto, manifest: dict[str, Any]) -> None:
    """Record `export_identity(manifest)` in an onnx.ModelProto's metadata_props (deterministic)."""
    value = json.dumps(export_identity(manifest), sort_keys=True)
    for p in proto.metadata_props:
        if p.key == METADATA_KEY:
            p.value = value
            return
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, value


def check_onnx_file(manifest: dict[str, Any], onnx_path: str | Path, manifest_path: str | Path) -> str:
    """The one check that a bundle's model.onnx is the file its manifest describes, before any tool
    (bench, validate, the engine builder) loads it: its sha256 against the manifest's `onnx_sha256`
    (a copy cut short, an edit, another export's file), then its stamp (`check_manifest`). Returns
    the sha256."""
    from edgemerge.contracts.files import sha256_file

    got = sha256_file(onnx_path)
    want = manifest.get("onnx_sha256")
    if want and got != want:
        size = Path(onnx_path).stat().st_size
        raise EdgemergeError(f"{onnx_path}: sha256 {got[:16]} ({size} bytes) differs from {Path(manifest_path).name}'s "
                             f"onnx_sha256 {want[:16]}: a truncated or partial copy (copy the bundle again), or the "
                             "file was edited or comes from another export (re-export the bundle)")
    check_manifest(manifest, onnx_path, manifest_path)
    return got


def check_manifest(manifest: dict[str, Any], onnx_path: str | Path, manifest_path: str | Path) -> None:
    """Refuse a manifest that no longer describes its model.onnx, and a model.onnx without the
    stamp (every export writes one: an ONNX without it was not written by `edgemerge export`, or by
    one from before the stamp, and nothing would catch a manifest edited since). Reads the stamp
    with onnx where it is installed, else with `read_metadata_props` (the device side)."""
    name = Path(onnx_path).name
    recorded = next((v for k, v in _metadata_props(onnx_path) if k == METADATA_KEY), None)
    if recorded is None:
        raise EdgemergeError(f"{onnx_path} has no edgemerge export stamp (metadata_props {METADATA_KEY!r}), so "
                             f"{manifest_path} cannot be checked against it: not written by `edgemerge export` "
                             "(or by one from before the stamp); re-export the bundle")
    try:
        want = json.loads(recorded)
    except json.JSONDecodeError as e:
        want = None
        err = e.msg
    if not isinstance(want, dict):
        raise EdgemergeError(f"{onnx_path}: its edgemerge export stamp is not valid JSON "
                             f"({err if want is None else 'not an object'}); re-export the bundle")
    have = export_identity(manifest)
    diffs = [k for k in want if want[k] != have.get(k)]
    if diffs:
        shown = "; ".join(f"{k} {have.get(k)!r} in the manifest, {want[k]!r} in {name}" for k in diffs[:3])
        raise EdgemergeError(f"{manifest_path} no longer matches its {name} ({shown}): the "
                             "manifest was edited after export; re-export the bundle")


def _metadata_props(onnx_path: str | Path) -> list[tuple[str, str]]:
    try:
        import onnx
    except ImportError:
        return read_metadata_props(onnx_path)
    model = onnx.load(str(onnx_path), load_external_data=False)
    return [(p.key, p.value) for p in model.metadata_props]


# ---- ModelProto.metadata_props without onnx: a protobuf wire reader ----------------------------------
# ModelProto field 14 is `repeated StringStringEntryProto metadata_props` (onnx.proto), an entry
# being {1: key, 2: value}, both strings. Every other top-level field is skipped by seeking past it,
# so the graph and its weights are never read into memory.

_METADATA_PROPS, _KEY, _VALUE = 14, 1, 2
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


class _Truncated(Exception):
    pass


def _varint(read) -> int | None:
    """A base-128 varint from `read(1)`; None at a clean end of input (before its first byte)."""
    value, shift = 0, 0
    while True:
        b = read(1)
        if not b:
            if shift == 0:
                return None
            raise _Truncated("a varint runs past the end")
        value |= (b[0] & 0x7F) << shift
        if not b[0] & 0x80:
            return value
        shift += 7
        if shift >= 64:
            raise _Truncated("a varint longer than 10 bytes")


def _fields(read, skip):
    """(field number, wire type, payload bytes for the length-delimited fields we ask for) of one
    message; `skip(n)` moves past n bytes (raising _Truncated past the end)."""
    while True:
        tag = _varint(read)
        if tag is None:
            return
        field, wire = tag >> 3, tag & 7
        if field == 0:
            raise _Truncated("field number 0")
        if wire == _VARINT:
            if _varint(read) is None:
                raise _Truncated("a varint field runs past the end")
            continue
        if wire in (_I64, _I32):
            skip(8 if wire == _I64 else 4)
            continue
        if wire != _LEN:
            raise _Truncated(f"wire type {wire} (groups are not used by ONNX)")
        n = _varint(read)
        if n is None:
            raise _Truncated("a length runs past the end")
        yield field, n


def read_metadata_props(onnx_path: str | Path) -> list[tuple[str, str]]:
    """ModelProto.metadata_props of an ONNX file as (key, value) pairs, in file order, with the
    standard library only (for devices without the onnx package); one-line EdgemergeError for a
    file that is not a protobuf."""
    path = Path(onnx_path)
    size = path.stat().st_size
    props: list[tuple[str, str]] = []
    try:
        with open(path, "rb") as f:
            def skip(n: int) -> None:
                if f.tell() + n > size:
                    raise _Truncated("a field runs past the end")
                f.seek(n, 1)

            for field, n in _fields(f.read, skip):
                if field != _METADATA_PROPS:
                    skip(n)
                    continue
                entry = f.read(n)
                if len(entry) != n:
                    raise _Truncated("a metadata entry runs past the end")
                props.append(_entry(entry))
    except (_Truncated, UnicodeDecodeError) as e:
        raise EdgemergeError(f"{path}: not a readable ONNX file ({e})") from None
    return props


def _entry(data: bytes) -> tuple[str, str]:
    pos = 0

    def read(k: int) -> bytes:
        nonlocal pos
        out = data[pos:pos + k]
        pos += len(out)
        return out

    def skip(k: int) -> None:
        nonlocal pos
        if pos + k > len(data):
            raise _Truncated("a metadata entry's field runs past its end")
        pos += k

    found = {_KEY: "", _VALUE: ""}
    for field, n in _fields(read, skip):
        if n > len(data) - pos:
            raise _Truncated("a metadata string runs past its entry")
        raw = read(n)
        if field in found:
            found[field] = raw.decode("utf-8")
    return found[_KEY], found[_VALUE]
