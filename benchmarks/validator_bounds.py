"""The validator's bounds, measured: what a correct export scores, and what planted wrong builds score.

For every zoo family at its default resolution and variant, fp32 and fp16, several seeds: the
export's self-check figures (logits against PyTorch replaying ONNX Runtime's merge decisions;
the merge-decision gate). Then, on seed 0's bundle, `edgemerge validate` on planted builds
(tests/validate/plants.py): logits x1.01, an offset of 1% of the logits' range, the largest
weight of the last layer negated, the first match site fed a metric that merges the least similar
tokens, merged sources sent to the wrong destination. A bound is honest when every correct row
passes it and every planted row fails it.

    python benchmarks/validator_bounds.py [--seeds 0 1 2] [--out validator_bounds.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "export"))
sys.path.insert(0, str(ROOT / "tests" / "validate"))

import onnx  # noqa: E402
import plants  # noqa: E402
from test_zoo_defaults import CONFIGS  # noqa: E402

from edgemerge.contracts.errors import EdgemergeError  # noqa: E402
from edgemerge.contracts.manifest import ExportOptions
from edgemerge.export.bundle import export_bundle
from edgemerge.validate.api import validate_artifact

PLANTS = {
    "logits x1.01": lambda m, rng: plants.scale_logits(m, 1.01),
    "offset 1% of range": lambda m, rng: plants.offset_logits(m, 0.01 * rng),
    "one weight negated": lambda m, rng: plants.change_one_weight(m),
    "least-similar matching (site 0)": lambda m, rng: plants.least_similar(m, 0),
    "wrong destinations": lambda m, rng: plants.destinations_permuted(m),
}


def _row(check: dict) -> dict:
    d = check["merge_decisions"]
    return {k: check.get(k) for k in ("rel_l2", "max_abs_rel_range", "cosine", "argmax_agreement")} | {
        "decisions_worst": d.get("same_destination_worst"), "near_ties_excused": d.get("near_ties_excused"),
        "largest_excused_margin": d.get("largest_excused_margin"), "tokens_same_fate": d.get("tokens_same_fate")}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "fp16"])
    ap.add_argument("--models", nargs="+", default=None, help="only these zoo models")
    ap.add_argument("--out", default="validator_bounds.json")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model, variant in [c for c in CONFIGS if args.models is None or c[0] in args.models]:
            for precision in args.precisions:
                for seed in args.seeds:
                    out = Path(tmp) / f"{model}-{variant}-{precision}-{seed}"
                    t0 = time.perf_counter()
                    try:
                        check = export_bundle(ExportOptions(model, variant, seed=seed, precision=precision,
                                                            out=str(out)))["self_check"]
                        row = {"kind": "self-check", "passed": True, **_row(check)}
                    except EdgemergeError as e:
                        row = {"kind": "self-check", "passed": False, "error": str(e)}
                    rows.append({"model": model, "variant": variant, "precision": precision, "seed": seed,
                                 "seconds": round(time.perf_counter() - t0, 1), **row})
                    print(json.dumps(rows[-1]), flush=True)
                    if seed != args.seeds[0] or not row["passed"]:
                        continue
                    for name, plant in {"correct": None, **PLANTS}.items():
                        bundle = plants.copy_bundle(out, Path(tmp) / "planted")
                        try:
                            if plant is not None:
                                m = onnx.load(str(bundle / "model.onnx"))
                                ref = json.loads((bundle / "manifest.json").read_text())["self_check"]["range"]
                                plant(m, ref)
                                plants.save(m, bundle)
                            rep = validate_artifact(bundle, out=Path(tmp) / "rep")
                            met = next(iter(rep["metrics"].values()))
                            md = rep["merge_decisions"]
                            prow = {"passed": rep["passed"], "failure": rep["failure"],
                                    **{k: met.get(k) for k in ("rel_l2", "max_abs_rel_range", "cosine",
                                                               "argmax_agreement")},
                                    "decisions_worst": md.get("same_destination_worst"),
                                    "near_ties_excused": md.get("near_ties_excused"),
                                    "tokens_same_fate": md.get("tokens_same_fate")}
                        except (StopIteration, ValueError, IndexError) as e:  # no site of that kind
                            prow = {"passed": None, "failure": f"not applicable: {e}"}
                        finally:
                            import shutil
                            shutil.rmtree(bundle, ignore_errors=True)
                        rows.append({"model": model, "variant": variant, "precision": precision, "seed": seed,
                                     "kind": f"validate: {name}", **prow})
                        print(json.dumps(rows[-1]), flush=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))
    bad = [r for r in rows if (r["kind"] in ("self-check", "validate: correct") and r["passed"] is False)
           or (r["kind"] not in ("self-check", "validate: correct") and r["passed"] is True)]
    print(f"{len(rows) - len(bad)} as expected, {len(bad)} not")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
