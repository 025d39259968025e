"""The floor plan, as a test: packages in layers, each importing only from its own layer and the
ones below; the command packages side by side never import one another; the CLI alone wires them.

    cli
    tune                                            (drives export and bench)
    export  validate  bench  show  train            (commands: never one another)
    trt                                             (the TensorRT backend)
    merge                                           (merging in PyTorch, family adapters, reference)
    models                                          (the zoo: modules, configs, checkpoints)
    device                                          (the device route: standard library only)
    contracts                                       (manifest, comparison, op spec, files, ...)

Every import is read (module level and inside functions: a local import hides a cycle from an
import-time test), and each command package is also imported whole in a fresh interpreter where
the others cannot be imported at all.
"""

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import edgemerge

ROOT = Path(edgemerge.__file__).parent
LAYERS = [("contracts",), ("device",), ("models",), ("merge",), ("trt",),
          ("export", "validate", "bench", "show", "train"), ("tune",), ("cli",)]
LEVEL = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer if (ROOT / pkg / "__init__.py").is_file()}
COMMANDS = tuple(p for p in LAYERS[5] if p in LEVEL)  # side by side: never one another


def test_every_package_has_a_layer_and_says_what_it_owns():
    """A new folder must be placed in the floor plan, and its docstring must say what it owns."""
    packages = sorted(p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file())
    placed = {pkg for layer in LAYERS for pkg in layer}
    assert set(packages) <= placed, set(packages) - placed
    flat = sorted(p.name for p in ROOT.glob("*.py") if p.name != "__init__.py")
    assert flat == [], f"modules outside a package: {flat}"
    for pkg in packages:
        doc = ast.get_docstring(ast.parse((ROOT / pkg / "__init__.py").read_text()))
        assert doc and len(doc.split()) >= 20, f"edgemerge/{pkg}/__init__.py: say what it owns and may import"


def imported_names(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return {n for n in names if n.startswith("edgemerge.")}


def crossings(pkg: str) -> list[str]:
    bad = []
    for f in sorted((ROOT / pkg).rglob("*.py")):
        for name in imported_names(f):
            other = name.split(".")[1]
            if other == pkg or other not in LEVEL:  # edgemerge.__version__ and friends
                continue
            if LEVEL[other] > LEVEL[pkg] or (pkg in COMMANDS and other in COMMANDS):
                bad.append(f"{f.relative_to(ROOT)}: {name}")
    return bad


@pytest.mark.parametrize("pkg", sorted(LEVEL))
def test_imports_run_down_only(pkg):
    assert not crossings(pkg)


def test_the_rule_catches_a_planted_crossing(tmp_path, monkeypatch):
    """The check is not vacuous: an import upward, or sideways between commands, is reported."""
    fake = tmp_path / "edgemerge"
    for pkg, text in {"merge": "from edgemerge.export.bundle import x\n",
                      "bench": "import edgemerge.validate.api\n", "models": "from edgemerge.merge import core\n"}.items():
        (fake / pkg).mkdir(parents=True)
        (fake / pkg / "m.py").write_text(text)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", fake)
    monkeypatch.setattr(sys.modules[__name__], "LEVEL", {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer})
    assert crossings("merge") and crossings("bench") and crossings("models")


def modules_of(name: str) -> list[str]:
    return [f"edgemerge.{name}"] + [f"edgemerge.{name}.{m.name}" for m in pkgutil.iter_modules([str(ROOT / name)])]


@pytest.mark.parametrize("name", COMMANDS)
def test_command_package_imports_without_the_others(name):
    blocked = [f"edgemerge.{other}" for other in COMMANDS if other != name] + ["edgemerge.cli"]
    code = ("import sys\n"
            f"for b in {blocked!r}: sys.modules[b] = None\n"
            "import importlib\n"
            f"for m in {modules_of(name)!r}: importlib.import_module(m)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr.strip().splitlines()[-1]


def test_no_function_runs_over_sixty_lines():
    """Functions split along their own steps (a long one hides the steps a reader needs named)."""
    long = []
    for f in sorted(ROOT.rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                long.append(f"{f.relative_to(ROOT)}::{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, long


def test_the_wheel_lists_every_package():
    """pyproject's explicit package list: a package missing there is missing from an installed wheel."""
    import sys

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    listed = set(tomllib.loads((ROOT.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"edgemerge." + ".".join(p.parent.relative_to(ROOT).parts) if p.parent != ROOT else "edgemerge"
             for p in ROOT.rglob("__init__.py") if "__pycache__" not in p.parts}
    assert found <= listed, found - listed
