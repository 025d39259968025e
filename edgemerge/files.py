"""File helpers every side shares: content hashes, and writes that never leave half a file.

They live in `edgemerge.device_tool`, the standard-library-only file that bundles carry to the
device, so the device script and the package hash and write files the same way.
"""

from edgemerge.device_tool import atomic_write_bytes, sha256_file

__all__ = ["atomic_write_bytes", "sha256_file"]
