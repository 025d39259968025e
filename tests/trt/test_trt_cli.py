from click.testing import CliRunner

from edgemerge.cli import main
from trt_helpers import write_bundle


def test_build_missing_onnx_exits_2_with_one_line(tmp_path):
    result = CliRunner().invoke(main, ["build", str(tmp_path / "missing.onnx")])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "missing.onnx" in lines[0] and lines[0].startswith("edgemerge: error:")


def test_build_onnx_without_manifest_exits_2(tmp_path):
    onnx_path = write_bundle(tmp_path, manifest=False)
    result = CliRunner().invoke(main, ["build", str(onnx_path)])
    assert result.exit_code == 2
    assert "manifest.json" in result.output and len(result.output.strip().splitlines()) == 1


def test_build_help_lists_options():
    result = CliRunner().invoke(main, ["build", "--help"])
    assert result.exit_code == 0
    for opt in ("--out", "--plugins", "--workspace", "--timing-cache"):
        assert opt in result.output
