"""The layers: export, validate, bench, trt, show and train sit on the contracts below them
(manifest, compare, reference, record, device_tool, graphs, merge, models) and never import one
another; the CLI wires them together (it hands validate and bench the TensorRT loader and the
exporter). Each top package is imported, with all of its modules, in a fresh interpreter where the
other top packages cannot be imported at all."""

import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import edgemerge

TOP = ("export", "validate", "bench", "trt", "show", "train")


def modules_of(name: str) -> list[str]:
    path = Path(edgemerge.__file__).parent / name
    if not path.is_dir():
        return [f"edgemerge.{name}"]
    return [f"edgemerge.{name}"] + [f"edgemerge.{name}.{m.name}" for m in pkgutil.iter_modules([str(path)])]


@pytest.mark.parametrize("name", TOP)
def test_top_package_imports_none_of_the_others(name):
    blocked = [f"edgemerge.{other}" for other in TOP if other != name] + ["edgemerge.cli"]
    code = ("import sys\n"
            f"for b in {blocked!r}: sys.modules[b] = None\n"
            "import importlib\n"
            f"for m in {modules_of(name)!r}: importlib.import_module(m)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr.strip().splitlines()[-1]


def test_contracts_import_no_top_package():
    lower = ["edgemerge.manifest", "edgemerge.compare", "edgemerge.reference", "edgemerge.record",
             "edgemerge.device_tool", "edgemerge.device_script", "edgemerge.graphs", "edgemerge.files",
             "edgemerge.progress", "edgemerge.identity", "edgemerge.images", "edgemerge.trtlib",
             "edgemerge.merge", "edgemerge.models"]
    blocked = [f"edgemerge.{t}" for t in TOP] + ["edgemerge.cli"]
    code = ("import sys\n"
            f"for b in {blocked!r}: sys.modules[b] = None\n"
            f"for m in {lower!r}: __import__(m)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr.strip().splitlines()[-1]


def imported_names(path: Path) -> set[str]:
    """Every module an edgemerge file imports, at the top or inside a function."""
    import ast

    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


@pytest.mark.parametrize("name", TOP)
def test_no_function_local_import_crosses_the_layer_either(name):
    """Function-local imports hide a cycle from the import test above: read every import."""
    root = Path(edgemerge.__file__).parent
    files = sorted((root / name).glob("*.py")) if (root / name).is_dir() else [root / f"{name}.py"]
    others = [f"edgemerge.{o}" for o in TOP if o != name] + ["edgemerge.cli"]
    crossing = {f"{f.name}: {m}" for f in files for m in imported_names(f)
                if any(m == o or m.startswith(o + ".") for o in others)}
    assert not crossing, sorted(crossing)
