"""The CUDA kernels compile for Orin (sm_87) and Hopper (sm_90); the CMake kernel library builds."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import KERNEL_SOURCES, PLUGINS, build_capi

ARCHS = ["sm_87", "sm_90"]


def test_kernel_sources_present():
    names = {p.name for p in KERNEL_SOURCES}
    assert names == {
        "tokenMatchBipartiteKernel.cu",
        "tokenMatchCellKernel.cu",
        "tokenMatchWindowKernel.cu",
        "tokenMergeKernel.cu",
        "tokenMergeCellKernel.cu",
        "tokenUnmergeKernel.cu",
    }


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("source", KERNEL_SOURCES, ids=lambda p: p.name)
def test_kernel_compiles(nvcc: str, source: Path, arch: str, tmp_path: Path):
    out = tmp_path / (source.stem + ".o")
    cmd = [nvcc, "-std=c++17", f"-arch={arch}", f"-I{source.parent}", "-c", str(source), "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr}"
    assert out.stat().st_size > 0


@pytest.mark.parametrize("source", KERNEL_SOURCES, ids=lambda p: p.name)
def test_kernel_compiles_to_ptx(nvcc: str, source: Path, tmp_path: Path):
    """The Python plugin compiles the same .cu to PTX; the extern "C" entry points must survive."""
    out = tmp_path / (source.stem + ".ptx")
    cmd = [nvcc, "-std=c++17", "-arch=sm_87", f"-I{source.parent}", "-ptx", str(source), "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr}"
    ptx = out.read_text()
    assert ".entry em_" in ptx  # unmangled names


def test_capi_library_builds(nvcc: str, tmp_path: Path):
    """The ctypes test library used by test_kernels_cuda.py builds; its symbols resolve."""
    lib_path = build_capi(nvcc, tmp_path, "sm_87")
    proc = subprocess.run(["nm", "-D", "--defined-only", str(lib_path)], capture_output=True, text=True)
    if proc.returncode == 0:
        for sym in (
            "em_capi_match_bipartite",
            "em_capi_match_bipartite_workspace",
            "em_capi_match_cell",
            "em_capi_match_cell_workspace",
            "em_capi_match_window",
            "em_capi_match_window_workspace",
            "em_capi_token_merge",
            "em_capi_token_merge_cell",
            "em_capi_token_unmerge",
        ):
            assert sym in proc.stdout
    # Loading needs only the CUDA runtime (statically linked by nvcc), not a GPU.
    lib = ctypes.CDLL(str(lib_path))
    lib.em_capi_match_bipartite_workspace.restype = ctypes.c_size_t
    assert lib.em_capi_match_bipartite_workspace(1, 8, 4, 4) > 0
    lib.em_capi_match_cell_workspace.restype = ctypes.c_size_t
    assert lib.em_capi_match_cell_workspace(1, 16) > 0


@pytest.mark.slow
def test_cmake_kernel_library(nvcc: str, tmp_path: Path):
    if shutil.which("cmake") is None:
        pytest.skip("cmake not found")
    build = tmp_path / "build"
    configure = [
        "cmake", "-S", str(PLUGINS), "-B", str(build),
        f"-DCMAKE_CUDA_COMPILER={nvcc}", "-DCMAKE_CUDA_ARCHITECTURES=87",
    ]
    proc = subprocess.run(configure, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "kernels only" in proc.stdout
    proc = subprocess.run(["cmake", "--build", str(build), "-j2"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (build / "libedgemerge_kernels.a").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["include", "include/aarch64-linux-gnu"])
def test_cmake_finds_tensorrt_headers(nvcc: str, tmp_path: Path, layout: str):
    """-DTENSORRT_ROOT=/usr must find JetPack's /usr/include/aarch64-linux-gnu/NvInfer.h too;
    missing it silently builds no plugin library (configure only: an empty NvInfer.h will do)."""
    if shutil.which("cmake") is None:
        pytest.skip("cmake not found")
    root = tmp_path / "usr"
    (root / layout).mkdir(parents=True)
    (root / layout / "NvInfer.h").write_text("")
    configure = ["cmake", "-S", str(PLUGINS), "-B", str(tmp_path / "build"), f"-DCMAKE_CUDA_COMPILER={nvcc}",
                 "-DCMAKE_CUDA_ARCHITECTURES=87", f"-DTENSORRT_ROOT={root}"]
    proc = subprocess.run(configure, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"TensorRT headers in {root / layout}" in proc.stdout
