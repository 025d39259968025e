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

from edgemerge.errors import EdgemergeError

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


def check_manifest(manifest: dict[str, Any], onnx_path: str | Path, manifest_path: str | Path) -> None:
    """Refuse a manifest that no longer describes its model.onnx. ONNX files exported before the
    stamp existed (or without onnx installed, on a device) are let through."""
    try:
        import onnx
    except ImportError:
        return
    model = onnx.load(str(onnx_path), load_external_data=False)
    recorded = next((p.value for p in model.metadata_props if p.key == METADATA_KEY), None)
    if recorded is None:
        return
    want = json.loads(recorded)
    have = export_identity(manifest)
    diffs = [k for k in want if want[k] != have.get(k)]
    if diffs:
        shown = "; ".join(f"{k} {have.get(k)!r} in the manifest, {want[k]!r} in {Path(onnx_path).name}"
                          for k in diffs[:3])
        raise EdgemergeError(f"{manifest_path} no longer matches its {Path(onnx_path).name} ({shown}): the "
                             "manifest was edited after export; re-export the bundle")
