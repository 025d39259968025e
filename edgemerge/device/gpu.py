"""The GPU this runs on (name, compute capability), from the CUDA driver, nvidia-smi or Jetson's
device tree: robust to Jetson's `nvidia-smi` answering [N/A]. The one probe of the package."""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
from pathlib import Path

def _gpu_from_driver() -> tuple[str, str] | None:
    """libcuda's driver API through ctypes: present wherever a GPU driver is (Jetson included)."""
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            cuda = ctypes.CDLL(name)
            break
        except OSError:
            continue
    else:
        return None
    dev = ctypes.c_int()
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGet(ctypes.byref(dev), 0) != 0:
        return None
    buf = ctypes.create_string_buffer(256)
    major, minor = ctypes.c_int(), ctypes.c_int()
    if cuda.cuDeviceGetName(buf, 256, dev) != 0:
        return None
    # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75, _MINOR = 76
    if (cuda.cuDeviceGetAttribute(ctypes.byref(major), 75, dev) != 0
            or cuda.cuDeviceGetAttribute(ctypes.byref(minor), 76, dev) != 0):
        return None
    return buf.value.decode(errors="replace"), f"{major.value}.{minor.value}"


_CC = re.compile(r"^\d+\.\d+$")


def _gpu_from_nvidia_smi() -> tuple[str, str] | None:
    """Desktop nvidia-smi; Jetson's answers `[N/A]` for most fields, which is not a GPU."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return None
    line = out.strip().splitlines()[0] if out.strip() else ""
    if "," not in line:
        return None
    name, cc = (s.strip() for s in line.rsplit(",", 1))
    return (name, cc) if _CC.match(cc) else None


def _gpu_from_tegra(root: str = "/") -> tuple[str, str] | None:
    """Jetson Orin (tegra234, sm_87) from the device tree when no driver call answers."""
    try:
        compatible = (Path(root) / "proc/device-tree/compatible").read_bytes()
    except OSError:
        return None
    if b"tegra234" in compatible:
        return "Orin (nvgpu)", "8.7"
    return None


def query_gpu() -> tuple[str | None, str | None]:
    """(name, compute capability) of GPU 0 from the CUDA driver, nvidia-smi or Jetson's device tree."""
    for probe in (_gpu_from_driver, _gpu_from_nvidia_smi, _gpu_from_tegra):
        try:
            found = probe()
        except Exception:  # a probe must never break a build; the next one may work
            found = None
        if found:
            return found
    return None, None


def cuda_arch(default: str = "87") -> str:
    """CMake's CUDA architecture for this GPU ("87"); `default` (Orin) when nothing answers."""
    _, cc = query_gpu()
    return cc.replace(".", "") if cc else default
