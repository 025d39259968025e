"""What every CLI test of bad input checks: the exit code, exactly one line on stderr, no traceback,
and nothing left behind."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from edgemerge.cli import main


def run_cli(*args, **kw):
    return CliRunner().invoke(main, [str(a) for a in args], **kw)


def one_line_error(res, code: int = 2, *, after_work: bool = False) -> str:
    """The single error line of a refused command (asserting everything else about it): the only
    line on stderr, or (`after_work`: a failure once the work ran) the last, after progress lines."""
    assert res.exit_code == code, (res.exit_code, res.output)
    assert "Traceback" not in res.output, res.output
    lines = res.stderr.splitlines()
    if after_work:
        assert all(ln.startswith("edgemerge: ") and "error" not in ln for ln in lines[:-1]), res.stderr
        lines = lines[-1:]
    assert len(lines) == 1 and lines[0].startswith("edgemerge: error: "), res.stderr
    return lines[0]


def tree(folder: Path) -> list[str]:
    """Every path under `folder` (hidden temp files included), to assert nothing was left behind."""
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*"))


def refuse_work(monkeypatch, module, name: str, what: str) -> None:
    """Make `module.name` fail the test when called: a refusal must come before that work starts."""
    def started(*a, **k):
        raise AssertionError(f"{what} started before the input was refused")

    monkeypatch.setattr(module, name, started)
