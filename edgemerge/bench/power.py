"""Board power on Jetson from `tegrastats`, sampled in a background thread during a timed loop.

tegrastats prints one line per interval; the board's input rail is `VDD_IN 5012mW/4980mW` on
Orin (JetPack 5/6) and `POM_5V_IN 4012/3980` on Xavier/Nano; the first number is the instant
reading in mW. Energy per frame = mean power x time per frame.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time

from edgemerge.contracts.errors import EdgemergeError

_RAIL = re.compile(r"\b(VDD_IN|POM_5V_IN)\s+(\d+)(?:mW)?/(\d+)(?:mW)?")


def parse_tegrastats(line: str) -> float | None:
    """Instant board input power in mW from one tegrastats line, or None if the line has no input rail."""
    m = _RAIL.search(line)
    return float(m.group(2)) if m else None


def find_tegrastats() -> str:
    path = shutil.which("tegrastats")
    if path is None:
        raise EdgemergeError("--power: tegrastats not found on PATH (power is measured on Jetson boards only)")
    return path


class PowerSampler:
    """Context manager: runs `tegrastats --interval MS`, keeps (time, mW) samples while open."""

    def __init__(self, interval_ms: int = 100, exe: str | None = None):
        self.interval_ms = interval_ms
        self.exe = exe or find_tegrastats()
        self.samples: list[tuple[float, float]] = []
        self._proc = None
        self._thread = None

    def __enter__(self) -> "PowerSampler":
        try:
            self._proc = subprocess.Popen([self.exe, "--interval", str(self.interval_ms)], stdout=subprocess.PIPE,
                                          stderr=subprocess.DEVNULL, text=True, bufsize=1)
        except OSError as e:
            raise EdgemergeError(f"--power: cannot start tegrastats: {e}") from None
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        for line in self._proc.stdout:
            mw = parse_tegrastats(line)
            if mw is not None:
                self.samples.append((time.perf_counter(), mw))

    def __exit__(self, *exc) -> None:
        self._proc.terminate()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
        self._thread.join(timeout=5)

    def mean_mw(self, start: float | None = None, end: float | None = None) -> float | None:
        vals = [mw for t, mw in self.samples if (start is None or t >= start) and (end is None or t <= end)]
        if not vals:  # a window shorter than one interval: take every sample
            vals = [mw for _, mw in self.samples]
        return sum(vals) / len(vals) if vals else None
