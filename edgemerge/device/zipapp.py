"""The device package as one file for the bundle: a zipapp (`python3 edgemerge_device.py ...`;
Python runs a zip archive whatever its suffix), built from the package at export.

It carries `edgemerge/__init__.py`, `edgemerge/contracts/` and `edgemerge/device/` as they are
installed, so the device runs the very code the tests ran. Entries are stored uncompressed with a
fixed date and mode, in name order: the same sources give the same bytes on every machine.
"""

from __future__ import annotations

import zipfile
from io import BytesIO
from pathlib import Path

import edgemerge

PACKAGES = ("contracts", "device")  # standard-library-only modules (tests/device holds them to it)
_MAIN = b"import sys\n\nfrom edgemerge.device.cli import main\n\nsys.exit(main())\n"


def sources() -> dict[str, bytes]:
    """Archive name -> bytes of every file the zipapp carries, __main__.py included."""
    root = Path(edgemerge.__file__).parent
    files = {"edgemerge/__init__.py": (root / "__init__.py").read_bytes(), "__main__.py": _MAIN}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).glob("*.py")):
            files[f"edgemerge/{pkg}/{path.name}"] = path.read_bytes()
    return files


def build() -> bytes:
    """The zipapp's bytes (deterministic)."""
    buf = BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, data in sorted(sources().items()):
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            z.writestr(info, data)
    return buf.getvalue()
