"""README and `--help` agree with the behaviour: every option the README gives a command exists in
that command, and the limits and ranges the README and `--help` state are the ones the code uses."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgemerge.cli import main
from edgemerge.contracts.compare import LIMITS
from edgemerge.export.bundle import MAX_OPSET, MIN_OPSET

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def flat(text: str) -> str:
    return " ".join(text.split())


def help_of(command: str) -> str:
    res = CliRunner().invoke(main, [command, "--help"], terminal_width=200)
    assert res.exit_code == 0, res.output
    return flat(res.output)


def options_of(command: str) -> set[str]:
    return {o for p in main.commands[command].params for o in (*p.opts, *p.secondary_opts)}


def readme_command_lines() -> list[str]:
    """The README's command lines: each line of its code blocks (less comments), each inline span."""
    blocks = re.findall(r"```[^\n]*\n(.*?)```", README, re.S)
    prose = re.sub(r"```.*?```", "", README, flags=re.S)
    lines = [ln.split("#")[0] for b in blocks for ln in b.splitlines()]
    return [flat(x) for x in lines + re.findall(r"`([^`]+)`", prose)]


def readme_options() -> list[tuple[str, str]]:
    found = []
    for line in readme_command_lines():
        for m in re.finditer(r"edgemerge ([a-z-]+)((?: [^|;&]*)?)", line):
            if m.group(1) in main.commands:
                found += [(m.group(1), f) for f in re.findall(r"(?<![\w-])(--[a-z][a-z-]*|-[a-zA-Z])\b", m.group(2))]
    return found


def test_every_option_in_the_readme_exists():
    found = readme_options()
    assert len(found) >= 25, found  # the parser still finds the README's commands
    assert {c for c, _ in found} >= {"export", "validate", "bench", "calibrate", "show", "plan"}
    assert [(c, f) for c, f in found if f not in options_of(c)] == []


def test_export_options_paragraph_names_export_options():
    para = flat(README.split("`export` options:", 1)[1].split("\n\n", 1)[0])
    named = set(re.findall(r"`(--[a-z-]+)", para))
    assert named >= {"--merge-ops", "--precision", "--opset", "--calibration", "--engine"}
    assert named <= options_of("export")


def test_opset_range_is_the_one_refused():
    span = f"{MIN_OPSET}..{MAX_OPSET}"
    assert f"`--opset` ({span}" in flat(README)
    assert f"ONNX opset, {span}" in help_of("export")


def pct(x: float) -> str:
    return f"{x * 100:g}%"


def sci(x: float) -> str:
    """1e-3 as the README and --help write it (not Python's 0.001 or 1e-03)."""
    mantissa, exp = f"{x:.0e}".split("e")
    return f"{mantissa}e{int(exp)}"


def test_readme_judging_table_is_the_code_limits():
    """One set of numbers: the README's table of limits (the fp16 argmax 99.5% of the export's
    self-check, 99% of validate's default) reads them from edgemerge.contracts.compare's table."""
    rows = {ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[2:4]]
            for ln in README.splitlines() if ln.startswith("| export self-check") or ln.startswith("| `validate`")}
    (check_row,), (validate_row,) = ([v for k, v in rows.items() if k.startswith(s)] for s in ("export", "`validate`"))
    sc32, sc16 = LIMITS["self-check", "fp32"], LIMITS["self-check", "fp16"]
    a32, a16 = LIMITS["artifact", "fp32"], LIMITS["artifact", "fp16"]
    assert check_row == [f"max error <= {sci(sc32['max_abs_rel_range'][1])} of the logits' range, argmax "
                         f"{pct(sc32['argmax_agreement'][1])}",
                         f"argmax >= {pct(sc16['argmax_agreement'][1])}, rel. L2 error <= {sci(sc16['rel_l2'][1])}, "
                         f"max error <= {sci(sc16['max_abs_rel_range'][1])} of the range, cosine >= {sc16['cosine'][1]:g}"]
    assert validate_row == [f"max error <= {sci(a32['max_abs_rel_range'][1])} of the range, argmax >= "
                            f"{pct(a32['argmax_agreement'][1])}",
                            f"argmax >= {pct(a16['argmax_agreement'][1])}, cosine >= {a16['cosine'][1]:g}, "
                            f"rel. L2 error <= {sci(a16['rel_l2'][1])}, max error <= "
                            f"{sci(a16['max_abs_rel_range'][1])} of the range"]
    assert "The two fp16 argmax numbers differ on purpose" in README  # and why


def test_validate_help_states_the_default_limits_and_what_rtol_means():
    text = help_of("validate")
    a32, a16 = LIMITS["artifact", "fp32"], LIMITS["artifact", "fp16"]
    assert (f"(default: fp32 {a32['argmax_agreement'][1]:g}, fp16 {a16['argmax_agreement'][1]:g})") in text
    assert f"fraction of the reference logits' range, >= 0 (fp32 default {sci(a32['max_abs_rel_range'][1])})" in text
    assert "unlike polygraphy's per-element rtol" in text
    assert "`--rtol` is relative to the logits' range, not polygraphy's per-element rtol" in flat(README)


@pytest.mark.parametrize("command, says", [
    ("bench", ["--iters, --iterations", "a count of iterations, not trtexec's milliseconds",
               "bench.json next to ARTIFACT"]),
    ("build", ["--out, --save-engine", "NVIDIA GPU", "pip install -e '.[trt]'", "bundle directory"]),
    ("export", ["an existing bundle there is replaced, and said so", "-HxW"]),
])
def test_help_says_what_the_issue_asked(command, says):
    text = help_of(command)
    for s in says:
        assert s in text, (command, s)
