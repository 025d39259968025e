"""Helpers for the plugin tests: locating nvcc and building the kernels' ctypes test library."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PLUGINS = REPO / "plugins"
KERNEL_DIR = PLUGINS / "kernels"
KERNEL_SOURCES = sorted(KERNEL_DIR.glob("*.cu"))
CAPI_SOURCE = Path(__file__).resolve().parent / "kernels_capi.cu"


def find_nvcc() -> str | None:
    """nvcc on PATH, else $CUDA_HOME/bin/nvcc, else /usr/local/cuda/bin/nvcc."""
    found = shutil.which("nvcc")
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and (Path(root) / "bin" / "nvcc").is_file():
            return str(Path(root) / "bin" / "nvcc")
    return None


@pytest.fixture(scope="session")
def nvcc() -> str:
    path = find_nvcc()
    if path is None:
        pytest.skip("nvcc not found (not on PATH, not in $CUDA_HOME/bin or /usr/local/cuda/bin)")
    return path


def build_capi(nvcc_path: str, out_dir: Path, arch: str) -> Path:
    """Compile every kernel .cu plus kernels_capi.cu into one shared library for ctypes."""
    out = out_dir / f"libedgemerge_kernels_capi_{arch}.so"
    cmd = [
        nvcc_path,
        "-std=c++17",
        "-O2",
        "-shared",
        "-Xcompiler",
        "-fPIC",
        f"-arch={arch}",
        f"-I{KERNEL_DIR}",
        *map(str, KERNEL_SOURCES),
        str(CAPI_SOURCE),
        "-o",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}"
    return out
