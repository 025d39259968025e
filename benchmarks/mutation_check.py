"""Mutation check of the validator's critical lines: change one thing, run the tests, see one fail.

Each mutant replaces one exact snippet of a file (a sign, a limit, a tie rule, a condition) in a
scratch copy of the repository (the working tree is never touched) and runs the tests named for
it there; a mutant is killed when they fail. A mutant whose snippet is no longer in the file is
reported as stale, not counted.

    python benchmarks/mutation_check.py [--only SUBSTRING] [--out mutants.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Each entry is one pytest invocation; a mutant's tests are a list of them, run until one fails.
FAST = [["tests/test_compare.py", "tests/validate/test_decision_gate.py", "tests/validate/test_validate_units.py"]]
PLANTED = [["tests/validate/test_planted_builds.py", "-k", "tome-fp16 or segformer-fp32"]]
SELF_CHECK = [["tests/export/test_export.py", "-k", "wrong_match or deit-t"]]

# (name, file, old, new, tests)
MUTANTS = [
    ("gate: judge PyTorch's merging tokens only", "edgemerge/contracts/compare.py",
     "judged = (want != -1) | (have != -1)", "judged = want != -1", FAST),
    ("gate: excuse what is far from the threshold", "edgemerge/contracts/compare.py",
     "excused = differ & (margin <= near_tie)", "excused = differ & (margin >= near_tie)", FAST),
    ("gate: excuse an invalid group", "edgemerge/contracts/compare.py",
     "& (margin <= near_tie) & (have != INVALID)", "& (margin <= near_tie)", FAST),
    ("gate: partner and selection margins swapped", "edgemerge/contracts/compare.py",
     "margin = np.where(both, partner, sel)", "margin = np.where(both, sel, partner)", FAST),
    ("gate: two destinations in one group allowed", "edgemerge/contracts/compare.py",
     "anchor[np.bincount(inv, weights=is_dst, minlength=len(vals)) != 1] = INVALID", "pass", FAST),
    ("gate: destinations judged as merging", "edgemerge/contracts/compare.py",
     "out[b] = np.where(grouped & ~is_dst, anchor[inv], -1)", "out[b] = np.where(grouped, anchor[inv], -1)", FAST),
    ("gate: slots out of range allowed", "edgemerge/contracts/compare.py",
     "out[b][(slot[b] < 0) | (slot[b] >= num_out)] = INVALID", "pass", FAST),
    ("margins: threshold at the r-th score, not the midpoint", "edgemerge/contracts/compare.py",
     "(v[count - 1] + v[count]) / 2", "v[count - 1]", FAST),
    ("margins: protected sources not fixed", "edgemerge/contracts/compare.py",
     "    node_max[:, :protect] = -np.inf\n    gap = _threshold_gap", "    gap = _threshold_gap", FAST),
    ("margins: partner margin is the best score", "edgemerge/contracts/compare.py",
     "partner[:, src] = top2[..., -1] - top2[..., -2]", "partner[:, src] = top2[..., -1]", FAST),
    ("margins: window score over all 16 pairs", "edgemerge/contracts/compare.py",
     "(gram.sum((-1, -2)) - np.trace(gram, axis1=-2, axis2=-1)) / 12.0", "gram.sum((-1, -2)) / 16.0", FAST),
    ("gate: best site taken as the worst", "edgemerge/contracts/compare.py",
     "worst = min(per_site, key=lambda p: p[\"merging_same_destination\"])",
     "worst = max(per_site, key=lambda p: p[\"merging_same_destination\"])", FAST),
    ("gate: never judged on the artifact's metric", "edgemerge/contracts/compare.py",
     "exact = bool(sites) and all(\"on_artifact_metric\" in s for s in sites)", "exact = False", FAST + PLANTED),
    ("gate: fp16 metric bound 100x looser", "edgemerge/contracts/compare.py",
     "\"metric_rel_l2\": 2e-2}", "\"metric_rel_l2\": 2.0}", PLANTED),
    ("gate: exact-mode near-tie bound 1e-2", "edgemerge/contracts/compare.py",
     "\"fp16\": {\"near_tie\": 1e-5,", "\"fp16\": {\"near_tie\": 1e-2,", FAST + PLANTED),
    ("limits: artifact fp16 rel_l2 10x looser", "edgemerge/contracts/compare.py",
     "\"rel_l2\": (\"<=\", 5e-3)", "\"rel_l2\": (\"<=\", 5e-2)", FAST + PLANTED),
    ("limits: self-check fp16 without rel_l2", "edgemerge/contracts/compare.py",
     "(\">=\", 0.995), \"rel_l2\": (\"<=\", 4e-3),", "(\">=\", 0.995),", FAST + SELF_CHECK),
    ("check: >= read as >", "edgemerge/contracts/compare.py",
     "passed = bool(value >= limit) if op == \">=\"", "passed = bool(value > limit) if op == \">=\"", FAST),
    ("near-ties: argmax margin < instead of <=", "edgemerge/contracts/compare.py",
     "tie = margin <= bound", "tie = margin < bound", FAST),
    ("near-ties: argmax bound without its cap", "edgemerge/contracts/compare.py",
     "bound = min(NEAR_TIE_FACTOR * max_abs, NEAR_TIE_CAP.get(precision, NEAR_TIE_CAP[\"fp32\"]) * span)",
     "bound = NEAR_TIE_FACTOR * max_abs", FAST),
    ("replay: decide on PyTorch's metric, not the artifact's", "edgemerge/merge/reference.py",
     "site.update(artifact_metric=theirs, on_artifact_metric=decide(e.kind, theirs, e.count, e.args))",
     "site.update(artifact_metric=theirs, on_artifact_metric=e.own.numpy())", FAST + PLANTED),
    ("validate: merge checks dropped", "edgemerge/validate/api.py",
     "checks += [{\"output\": \"merge\", **c} for c in decision_rows]", "pass", PLANTED),
    ("self-check: decision rows dropped", "edgemerge/export/bundle.py",
     "rows = judged.checks + decision_rows", "rows = judged.checks", SELF_CHECK),
]


def run_mutant(name: str, file: str, old: str, new: str, tests: list[list[str]], scratch: Path) -> dict:
    target = scratch / file
    text = target.read_text()
    if text.count(old) != 1:
        return {"mutant": name, "file": file, "status": "stale", "note": f"snippet found {text.count(old)} times"}
    target.write_text(text.replace(old, new))
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(scratch)}
    ran = []
    try:
        for args in tests:
            ran.append(" ".join(args))
            proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *args],
                                  cwd=scratch, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                break
    finally:
        target.write_text(text)
    last = (proc.stdout.strip().splitlines() or [""])[-1]
    return {"mutant": name, "file": file, "status": "killed" if proc.returncode != 0 else "survived",
            "tests": " | ".join(ran), "result": last, "seconds": round(time.perf_counter() - t0, 1)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="", help="run the mutants whose name contains this")
    ap.add_argument("--out", default="mutants.json")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp) / "repo"
        shutil.copytree(ROOT, scratch, ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info"))
        for name, file, old, new, tests in MUTANTS:
            if args.only in name:
                rows.append(run_mutant(name, file, old, new, tests, scratch))
                print(json.dumps(rows[-1]), flush=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))
    counted = [r for r in rows if r["status"] != "stale"]
    killed = sum(r["status"] == "killed" for r in counted)
    print(f"{killed} killed / {len(counted)} mutants ({len(rows) - len(counted)} stale)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
