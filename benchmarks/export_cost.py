"""Where an export's time and memory go: `export_bundle` with a progress callback that prints the
elapsed time, the step's time and the peak RSS so far at every step.

    PYTHONPATH=. /usr/bin/time -v python benchmarks/export_cost.py segformer-b5 fast 1024x1024 /tmp/b5

Random weights, fp32, plugin merge ops (the defaults). A benchmark, not a test: the goal it is held
to (issue 12: segformer-b5 fast 1024x1024 under 120 s and 6 GB on the 2-core VM) lives in
benchmarks/README.md with the figures.
"""

from __future__ import annotations

import resource
import sys
import time

from edgemerge.contracts.manifest import ExportOptions
from edgemerge.export.bundle import export_bundle
from edgemerge.contracts.manifest import parse_resolution


def main(argv: list[str]) -> None:
    model, variant, resolution, out = argv
    t0 = last = time.perf_counter()
    previous = "start"

    def progress(step: str) -> None:
        nonlocal last, previous
        now = time.perf_counter()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # kB -> GB
        print(f"{now - t0:7.1f} s  (+{now - last:6.1f} s for {previous})  peak {peak:5.2f} GB  -> {step}",
              flush=True)
        last, previous = now, step

    export_bundle(ExportOptions(model, variant, resolution=parse_resolution(resolution), out=out), progress=progress)
    progress("done")


if __name__ == "__main__":
    main(sys.argv[1:])
