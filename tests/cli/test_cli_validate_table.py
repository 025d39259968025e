"""validate's table shows the merge-decision agreement with what it means and no limit: informative,
not a check (the validation is stubbed: this is about the table)."""

from __future__ import annotations

import pytest

import edgemerge.validate as validate_pkg
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


def test_merge_agreement_rows_say_informative_and_are_explained(monkeypatch):
    merge = {"available": True, "sites": 8, "site_agreement": 0.875, "token_agreement": 0.9991,
             "differing": [{"site": 3, "kind": "kv", "tokens_differing": 2, "tokens": 2048}]}
    out = table_of(monkeypatch, merge)
    sites = row(out, "merge sites identical")
    assert "0.875 (7/8)" in sites and "informative" in sites and "info" in sites
    assert "pass" not in sites and "FAIL" not in sites  # not a check
    tokens = row(out, "merge tokens same slot")
    assert "0.9991" in tokens and "informative" in tokens
    flat = " ".join(out.split())
    assert "every token, in every input, went to the same merged slot as in PyTorch" in flat
    assert "Informative, not a check" in flat


@pytest.mark.parametrize("merge, says", [
    ({"available": True, "sites": 0, "site_agreement": None, "token_agreement": None, "differing": []},
     "the artifact has no merge sites"),
    ({"available": False, "reason": "the artifact does not expose its slot tensors"}, "does not expose"),
])
def test_no_agreement_figures_say_why(monkeypatch, merge, says):
    out = table_of(monkeypatch, merge)
    assert "merge sites identical" not in out and "Informative, not a check" not in " ".join(out.split())
    assert says in " ".join(out.split())


def test_rows_option_reaches_the_report_and_is_checked(monkeypatch):
    seen = {}
    merge = {"available": False, "reason": "x"}
    monkeypatch.setattr(validate_pkg, "validate_artifact", lambda *a, **k: seen.update(k) or fake_report(merge))
    assert run_cli("validate", "b", "--rows", "6").exit_code == 0 and seen["rows"] == 6
    assert run_cli("validate", "b").exit_code == 0 and seen["rows"] == 3
    res = run_cli("validate", "b", "--rows", "0")
    assert res.exit_code == 2 and "--rows" in res.stderr
