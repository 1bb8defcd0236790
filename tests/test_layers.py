"""The packages import one way: utils at the bottom; dataset and models on utils only; the patch
pipeline on those; the engine on the pipeline; the command line (option.py, train_deep_globe.py,
tools/) on top. Every import in every module, also those inside functions, is checked."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLI = {"option", "train_deep_globe", "tools"}
# What each layer may import from the project (besides itself).
ALLOWED = {
    "utils": set(),
    "dataset": {"utils"},
    "models": {"utils"},
    "pipeline": {"utils", "dataset", "models"},
    "engine": {"utils", "dataset", "models", "pipeline"},
    "option": {"utils", "dataset", "models", "pipeline", "engine"},
    "train_deep_globe": {"utils", "dataset", "models", "pipeline", "engine", "option"},
    "tools": {"utils", "dataset", "models", "pipeline", "engine", "option", "train_deep_globe"},
}
PROJECT = set(ALLOWED) | {"tests"}


def project_imports(path: Path) -> list[tuple[int, str]]:
    """(line, top-level project package) of every import in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [(node.lineno, name.split(".")[0]) for name in names if name.split(".")[0] in PROJECT]
    return found


def modules() -> list[tuple[str, Path]]:
    pairs = [(p.stem, p) for p in (ROOT / "option.py", ROOT / "train_deep_globe.py")]
    for package in ("utils", "dataset", "models", "pipeline", "engine", "tools"):
        pairs += [(package, p) for p in sorted((ROOT / package).glob("*.py"))]
    return pairs


@pytest.mark.parametrize("layer, path", modules(), ids=lambda v: str(v.relative_to(ROOT)) if isinstance(v, Path) else v)
def test_no_import_goes_up_a_layer(layer: str, path: Path) -> None:
    wrong = [f"line {line}: imports {name}" for line, name in project_imports(path)
             if name != layer and name not in ALLOWED[layer]]
    assert not wrong, f"{path.relative_to(ROOT)} ({layer}) may import only {sorted(ALLOWED[layer])}: {wrong}"


def test_the_checker_sees_imports_inside_functions(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import os\n\ndef f():\n    from engine.training import Trainer\n    import utils.errors\n")
    assert project_imports(module) == [(4, "engine"), (5, "utils")]
