"""The package's import rules: imports run one way, from the interface down to the vocabulary.

cli -> demo -> measure/report -> inference/training -> data/model -> transforms/evaluation -> io ->
vocabulary (labels, config, errors). A module may import its own package and anything below it,
never a package of its own level or above; inference never imports training; transforms and
evaluation never import torch. The public API (``flareseg/__init__.py``) re-exports lazily and is exempt.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "flareseg"
LEVELS = {
    "errors": 0, "labels": 0, "config": 0.5,
    "io": 1,
    "transforms": 2, "evaluation": 2,
    "data": 3, "model": 3,
    "training": 4, "inference": 4,
    "measure": 5, "report": 5,
    "outputs": 5.5,
    "demo": 6,
    "cli": 7,
}


def _unit(module: str) -> str:
    """'flareseg.io.read' -> 'io'; 'flareseg.labels' -> 'labels'."""
    return module.split(".")[1]


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out.append((".".join(parts), path))
    return out


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}: relative import; the package uses absolute imports")
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_every_unit_has_a_level():
    units = {_unit(name) for name, _ in _modules() if name != "flareseg"}
    assert units <= set(LEVELS), f"modules without a layer: {sorted(units - set(LEVELS))}"


@pytest.mark.parametrize("name,path", [(n, p) for n, p in _modules() if n != "flareseg"], ids=lambda v: str(v))
def test_imports_run_downwards(name, path):
    own = _unit(name)
    bad = []
    for target in _imports(path):
        if not target.startswith("flareseg.") and target != "flareseg":
            continue
        if target == "flareseg":
            continue  # `from flareseg import __version__`
        unit = _unit(target)
        if unit != own and LEVELS[unit] >= LEVELS[own]:
            bad.append(target)
    assert not bad, f"{name} imports upward or sideways: {sorted(bad)}"


def test_inference_never_imports_training():
    for name, path in _modules():
        if name.startswith("flareseg.inference"):
            assert not any(t.startswith("flareseg.training") for t in _imports(path)), name


@pytest.mark.parametrize("package", ["flareseg.transforms", "flareseg.evaluation", "flareseg.io", "flareseg.data.cohort", "flareseg.measure", "flareseg.report"])
def test_numpy_only_packages_do_not_load_torch(package):
    modules = [n for n, _ in _modules() if n == package or n.startswith(package + ".")]
    code = f"import sys; import {', '.join(modules)}; sys.exit(3 if 'torch' in sys.modules else 0)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr or f"importing {package} loaded torch"


def test_extras_are_imported_lazily():
    """`pip install flareseg` alone predicts and evaluates: no module imports an extra at module level.

    (Checked in the source, not in sys.modules: torch and MONAI themselves import matplotlib, pynvml
    or pydicom when those happen to be installed.)"""
    extras = ("dynamic_network_architectures", "matplotlib", "markdown", "pynvml", "highdicom", "pydicom", "ray", "onnxruntime", "openvino", "onnx")
    bad = []
    for name, path in _modules():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module]
            else:
                continue
            bad += [f"{name}: {t}" for t in targets if t.split(".")[0] in extras]
    assert not bad, f"extras imported at module level: {bad}"
