"""Every zoo family at its default resolution and variants, three seeds each: does the export's
self-check pass, and how many near-tie pixels does the fair argmax judgement excuse?

    python benchmarks/zoo_defaults.py [--seeds 0 1 2] [--out zoo_defaults.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "export"))

from test_zoo_defaults import CONFIGS  # noqa: E402

from edgemerge.contracts.errors import EdgemergeError  # noqa: E402
from edgemerge.contracts.manifest import ExportOptions
from edgemerge.export.bundle import export_bundle


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="zoo_defaults.json")
    args = ap.parse_args()
    rows, failed = [], 0
    for model, variant in CONFIGS:
        for seed in args.seeds:
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    check = export_bundle(ExportOptions(model, variant, seed=seed, out=f"{tmp}/b"))["self_check"]
                    row = {"passed": True, "argmax_agreement": check["argmax_agreement"],
                           "argmax_agreement_all": check["argmax_agreement_all"], "near_ties": check["near_ties"],
                           "max_abs_rel_range": check["max_abs_rel_range"]}
                except EdgemergeError as e:
                    row, failed = {"passed": False, "error": str(e)}, failed + 1
            row.update(model=model, variant=variant, seed=seed, seconds=round(time.perf_counter() - t0, 1))
            rows.append(row)
            ties = row.get("near_ties") or {}
            print(f"{model:16s} {variant:5s} seed {seed}: {'pass' if row['passed'] else 'FAIL'}  "
                  f"near-ties {ties.get('pixels', '-')} (flipped {ties.get('flipped', '-')})  {row['seconds']} s",
                  flush=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))
    print(f"{len(rows) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
