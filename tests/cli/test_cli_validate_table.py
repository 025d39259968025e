"""validate's table: the merge-decision gate is a check row (merge.*), the token-level figure and the
near-ties it excused are information with what they mean (the validation is stubbed: this is about
the table)."""

from __future__ import annotations

import pytest

import edgemerge.validate.api as validate_pkg
from cli_helpers import run_cli


def fake_report(merge, passed=True):
    return {"artifact": {"kind": "onnx", "precision": "fp16"}, "reference": {"kind": "pytorch"},
            "inputs": {"count": 2}, "passed": passed, "failure": None if passed else "validation failed: x",
            "checks": [{"output": "logits", "metric": "argmax_agreement", "value": 0.998, "op": ">=",
                        "threshold": 0.99, "passed": True}],
            "metrics": {"logits": {"max_abs": 0.01}}, "merge_decisions": merge,
            "report_files": {"json": "/x/report.json"}}


def table_of(monkeypatch, merge):
    monkeypatch.setattr(validate_pkg, "validate_artifact", lambda *a, **k: fake_report(merge))
    res = run_cli("validate", "anything")
    assert res.exit_code == 0, res.output
    return res.stdout


def row(out, name):
    return next(ln for ln in out.splitlines() if name in ln)


def test_merge_gate_is_a_check_and_the_token_figure_informative(monkeypatch):
    merge = {"available": True, "sites": 8, "near_tie": 1e-5, "near_ties_excused": 2, "tokens_same_fate": 0.9991,
             "same_destination_worst": 1.0, "judged_on": "the artifact's metric"}
    report = fake_report(merge)
    report["checks"].append({"output": "merge", "metric": "same_destination_worst", "value": 1.0,
                             "op": ">=", "threshold": 1.0, "passed": True})
    monkeypatch.setattr(validate_pkg, "validate_artifact", lambda *a, **k: report)
    res = run_cli("validate", "anything")
    assert res.exit_code == 0, res.output
    out = res.stdout
    gate = next(ln for ln in out.splitlines() if "merge.same_destination_worst" in ln and ">= 1" in ln)
    assert "pass" in gate
    ties = row(out, "merge near-ties excused")
    assert "2 (bound 1e-05)" in ties and "8 sites" in ties
    tokens = row(out, "merge tokens same fate")
    assert "0.9991" in tokens and "informative" in tokens
    flat = " ".join(out.split())
    assert "unrelated matchings agree on most kept tokens" in flat


@pytest.mark.parametrize("merge, says", [
    ({"available": True, "sites": 0}, "the artifact has no merge sites"),
    ({"available": False, "reason": "the artifact does not expose its slot tensors"}, "does not expose"),
])
def test_no_agreement_figures_say_why(monkeypatch, merge, says):
    out = table_of(monkeypatch, merge)
    assert "merge tokens same fate" not in out and "unrelated matchings" not in " ".join(out.split())
    assert says in " ".join(out.split())


def test_rows_option_reaches_the_report_and_is_checked(monkeypatch):
    seen = {}
    merge = {"available": False, "reason": "x"}
    monkeypatch.setattr(validate_pkg, "validate_artifact", lambda *a, **k: seen.update(k) or fake_report(merge))
    assert run_cli("validate", "b", "--rows", "6").exit_code == 0 and seen["rows"] == 6
    assert run_cli("validate", "b").exit_code == 0 and seen["rows"] == 3
    res = run_cli("validate", "b", "--rows", "0")
    assert res.exit_code == 2 and "--rows" in res.stderr
