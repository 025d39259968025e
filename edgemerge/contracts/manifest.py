"""The bundle's manifest.json, typed, and the export options it is made from and turns back into.

One owner: the exporter writes a `Manifest`, every reader (validate, bench, build) calls
`read_manifest`, and whoever re-exports a bundle's model (bench's unmerged baseline, validate's
fp32 reference graph) asks the manifest for its `ExportOptions`. Defaults live here and nowhere
else. Standard library only: the device tool (edgemerge.device) reads manifests through it too.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from edgemerge.contracts.errors import EdgemergeError, EdgemergeNote

MANIFEST = "manifest.json"
FORMAT = 1
PRECISIONS = ("fp32", "fp16")
MERGE_OPS = ("plugin", "native")
DEFAULT_OPSET = 18
REQUIRED = ("model", "variant", "resolution", "onnx_sha256")  # what every reader may rely on
# Fields of manifest.json that are not Manifest attributes but that this version writes (in `extra`).
KNOWN_EXTRA = ("plan_file",)


@dataclass
class ExportOptions:
    """What `edgemerge export` is asked for; `Manifest.export_options()` gives them back."""

    model: str
    variant: str
    checkpoint: str | None = None
    resolution: tuple[int, int] | None = None
    batch: int = 1
    precision: str = "fp32"
    merge_ops: str = "plugin"
    opset: int = DEFAULT_OPSET
    out: str | None = None
    seed: int = 0
    num_classes: int | None = None
    calibration: str | None = None
    engine: bool = False
    plugins: list[str] | None = None  # C++ plugin libraries for --engine
    plan_file: str | None = None  # a user's plan file (one variant; `variant` is its name)
    extra: dict[str, Any] = field(default_factory=dict)


def parse_resolution(text: str | None) -> tuple[int, int] | None:
    """'512x1024' -> (512, 1024) (HxW); a one-line error otherwise."""
    if text is None:
        return None
    try:
        h, w = (int(v) for v in text.lower().split("x"))
        if h <= 0 or w <= 0:
            raise ValueError
    except ValueError:
        raise EdgemergeError(f"resolution must look like 512x512 (HxW), got {text!r}") from None
    return h, w


@dataclass
class Manifest:
    """manifest.json, with the defaults every reader shares (`REQUIRED` fields must be present)."""

    model: str = ""
    variant: str = ""
    resolution: list[int] = field(default_factory=list)  # [H, W]
    format: int = FORMAT
    family: str | None = None
    batch: int = 1
    precision: str = "fp32"
    merge_ops: str = "plugin"
    opset: int = DEFAULT_OPSET
    plan: dict = field(default_factory=dict)
    inputs: list[dict] = field(default_factory=list)
    outputs: list[dict] = field(default_factory=list)
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    num_classes: int | None = None
    checkpoint: dict | None = None  # {"path", "format", "sha256"}
    seed: int = 0
    calibration: dict | None = None
    onnx_sha256: str | None = None
    custom_ops: list[str] = field(default_factory=list)
    merge_sites: dict[str, list[str]] = field(default_factory=dict)  # op -> node names
    reference: dict = field(default_factory=lambda: {"file": "reference.npz"})
    versions: dict[str, str] = field(default_factory=dict)
    self_check: dict | None = None
    files: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # fields this version does not know

    # -- the mapping view readers used before the type existed; new code uses the attributes --
    def __getitem__(self, key: str) -> Any:
        if key in _NAMES:
            return getattr(self, key)
        return self.extra[key]

    def get(self, key: str, default: Any = None) -> Any:
        try:
            value = self[key]
        except KeyError:
            return default
        return default if value is None and key not in _NAMES else value

    def __contains__(self, key: str) -> bool:
        return key in _NAMES or key in self.extra

    def __setitem__(self, key: str, value: Any) -> None:
        if key in _NAMES:
            setattr(self, key, value)
        else:
            self.extra[key] = value

    @classmethod
    def from_dict(cls, data: dict, source: str = MANIFEST, required: tuple[str, ...] = REQUIRED) -> "Manifest":
        missing = [k for k in required if k not in data]
        if missing:
            raise EdgemergeError(f"{source}: manifest has no {missing[0]!r}; re-export the bundle")
        known = {k: v for k, v in data.items() if k in _NAMES and k != "extra"}
        m = cls(**known, extra={k: v for k, v in data.items() if k not in _NAMES})
        _note_unknown(data, source)
        if m.precision not in PRECISIONS:
            raise EdgemergeError(f"{source}: precision must be 'fp32' or 'fp16', not {m.precision!r}")
        if m.merge_ops not in MERGE_OPS:
            raise EdgemergeError(f"{source}: merge_ops must be 'plugin' or 'native', not {m.merge_ops!r}")
        if "resolution" in data and not (isinstance(m.resolution, (list, tuple)) and len(m.resolution) == 2):
            raise EdgemergeError(f"{source}: resolution must be [H, W], not {m.resolution!r}")
        return m

    def to_dict(self) -> dict:
        data = asdict(self)
        extra = data.pop("extra")
        return {**data, **extra}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    def input_spec(self) -> tuple[str, tuple[int, ...], str]:
        """(name, shape, numpy dtype) of the model input: the exporter writes `images`, fp32."""
        if self.inputs:
            i = self.inputs[0]
            return i["name"], tuple(i["shape"]), i.get("dtype", "float32")
        H, W = self.resolution
        return "images", (int(self.batch), 3, int(H), int(W)), "float32"

    def export_options(self, **overrides) -> ExportOptions:
        """The options this bundle was exported with (checkpoint by path), with `overrides`."""
        opts = ExportOptions(
            model=self.model, variant=self.variant,
            checkpoint=self.checkpoint["path"] if self.checkpoint else None,
            resolution=(int(self.resolution[0]), int(self.resolution[1])), batch=int(self.batch),
            precision=self.precision, merge_ops=self.merge_ops, opset=int(self.opset), seed=int(self.seed),
            num_classes=self.num_classes)
        return replace(opts, **overrides)


_NAMES = {f.name for f in fields(Manifest)}


def _note_unknown(data: dict, source: str) -> None:
    """A manifest of a newer format, or with fields this version does not know, is read as far as
    it is understood, and said (an EdgemergeNote: one `edgemerge: note:` line), never silently."""
    from edgemerge import __version__

    unknown = sorted(k for k in data if k not in _NAMES and k not in KNOWN_EXTRA)
    fmt = data.get("format", FORMAT)
    shown = ", ".join(unknown[:6]) + (f" and {len(unknown) - 6} more" if len(unknown) > 6 else "")
    if isinstance(fmt, int) and not isinstance(fmt, bool) and fmt > FORMAT:
        warnings.warn(f"{source} was written by a newer edgemerge (manifest format {fmt}; edgemerge {__version__} "
                      f"reads format {FORMAT}){f' and has fields it does not know: {shown}' if unknown else ''}: "
                      "read as far as this version understands it; upgrade edgemerge to read it as written",
                      EdgemergeNote, stacklevel=3)
    elif unknown:
        warnings.warn(f"{source} has fields edgemerge {__version__} does not know: {shown} (ignored: written by a "
                      "newer edgemerge, or edited)", EdgemergeNote, stacklevel=3)


def manifest_path(path: str | os.PathLike) -> Path:
    """The manifest of a bundle directory, or the one beside a file of the bundle."""
    p = Path(path)
    return p / MANIFEST if p.is_dir() else p.with_name(MANIFEST)


def read_manifest(path: str | os.PathLike) -> Manifest:
    """The manifest of a bundle (its directory, or any file in it), refused with one line when it
    is missing, not JSON or lacks a `required` field."""
    mpath = manifest_path(path)
    if not mpath.is_file():
        raise EdgemergeError(f"no {MANIFEST} next to {path}: use an `edgemerge export` bundle "
                             "(its directory, model.onnx or model.plan)")
    try:
        data = json.loads(mpath.read_text())
    except json.JSONDecodeError as e:
        raise EdgemergeError(f"{mpath}: not valid JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(data, dict):
        raise EdgemergeError(f"{mpath}: not a manifest (a JSON object is expected)")
    return Manifest.from_dict(data, str(mpath))
