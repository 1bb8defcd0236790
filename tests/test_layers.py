"""The packages import one way: utils at the bottom; dataset and models on utils only; the patch
pipeline on those; the engine on the pipeline; the command line (option.py, train_deep_globe.py,
tools/) on top. Every import in every module, also those inside functions, is checked. Besides: no
module uses a private name of another (``from m import _x``, ``m._x``), and every module of the
product packages is imported by some module outside tests/."""

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


# --- Private names stay inside their module; product code is not there for the tests only ------------

PRODUCT = set(ALLOWED)
PRODUCT_PACKAGES = ("utils", "dataset", "models", "pipeline", "engine")


def module_name(path: Path, root: Path = ROOT) -> str:
    """The dotted name of the module at ``path`` (a package's ``__init__.py`` is the package)."""
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str, root: Path = ROOT) -> bool:
    """True when the dotted ``name`` is a project module or package under ``root``."""
    base = root.joinpath(*name.split("."))
    return name.split(".")[0] in PRODUCT and (base.with_suffix(".py").is_file() or (base / "__init__.py").is_file())


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _dotted(node: ast.expr) -> str | None:
    """``a.b.c`` for a chain of attributes on a name, else None."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return None if inner is None else f"{inner}.{node.attr}"
    return None


def private_uses(path: Path, own: str, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, ``module._name``) of every private name of another project module that the module
    ``own`` at ``path`` imports (``from m import _name``) or reads from an imported module
    (``m._name``, ``import m as alias; alias._name``)."""
    tree = ast.parse(path.read_text(), str(path))
    bound: dict[str, str] = {}  # local name -> the project module it is bound to by an import
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PRODUCT:
                    local = alias.asname or alias.name.split(".")[0]
                    bound[local] = alias.name if alias.asname else local
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] in PRODUCT:
            for alias in node.names:
                if _is_private(alias.name) and node.module != own:
                    found.append((node.lineno, f"{node.module}.{alias.name}"))
                elif is_module(f"{node.module}.{alias.name}", root):
                    bound[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and _is_private(node.attr)):
            continue
        dotted = _dotted(node.value)
        if dotted is None or dotted.split(".")[0] not in bound:
            continue
        first, _, rest = dotted.partition(".")
        target = bound[first] + (f".{rest}" if rest else "")
        if target != own and is_module(target, root):
            found.append((node.lineno, f"{target}.{node.attr}"))
    return sorted(found)


@pytest.mark.parametrize("layer, path", modules(), ids=lambda v: str(v.relative_to(ROOT)) if isinstance(v, Path) else v)
def test_no_module_reaches_a_private_name_of_another(layer: str, path: Path) -> None:
    wrong = private_uses(path, module_name(path))
    assert not wrong, f"{path.relative_to(ROOT)} uses private names of other modules (make them public): {wrong}"


def imported_modules(path: Path, root: Path = ROOT) -> set[str]:
    """The project modules that the module at ``path`` imports, by dotted name (``from p import m``
    names the module ``p.m`` when that is a module, else ``p``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if is_module(alias.name, root)}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and is_module(node.module, root):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names if is_module(f"{node.module}.{a.name}", root)}
    return found


def used_only_by_tests(candidates: dict[str, Path], importers: dict[str, Path], root: Path = ROOT) -> list[str]:
    """The ``candidates`` (dotted name -> path) that no module of ``importers`` other than themselves
    imports."""
    used = set()
    for name, path in importers.items():
        used |= imported_modules(path, root) - {name}
    return sorted(set(candidates) - used)


def test_product_code_is_not_there_for_the_tests_only() -> None:
    importers = {module_name(path): path for _, path in modules()}
    candidates = {module_name(path): path for package in PRODUCT_PACKAGES
                  for path in sorted((ROOT / package).glob("*.py")) if path.name != "__init__.py"}
    unused = used_only_by_tests(candidates, importers)
    assert not unused, (f"imported by no product module, tool, option.py or train_deep_globe.py: {unused}; "
                        f"code that only tests use belongs in tests/ (or tools/ when tools use it too)")


def test_the_checkers_see_private_names_and_modules_only_tests_use(tmp_path: Path) -> None:
    planted = tmp_path / "planted.py"
    planted.write_text(
        "import dataset.io\nimport dataset.io as dio\nfrom dataset import io\n"
        "from dataset.io import _check_file, read_image\nfrom utils.errors import DataError\n\n"
        "def f():\n    from tools.prepare_deepglobe import _up_to_date\n"
        "    return dataset.io._DECODE_ERRORS, dio._check_file, io._opened, io.__name__, read_image._x\n"
    )
    assert private_uses(planted, "tools.planted") == [
        (4, "dataset.io._check_file"), (8, "tools.prepare_deepglobe._up_to_date"),
        (9, "dataset.io._DECODE_ERRORS"), (9, "dataset.io._check_file"), (9, "dataset.io._opened")]
    assert private_uses(planted, "dataset.io") == [(8, "tools.prepare_deepglobe._up_to_date")]
    assert imported_modules(planted) == {"dataset", "dataset.io", "utils.errors", "tools.prepare_deepglobe"}
    candidates = {"dataset.io": ROOT / "dataset" / "io.py", "utils.errors": ROOT / "utils" / "errors.py",
                  "dataset.scenes": ROOT / "dataset" / "scenes.py"}
    assert used_only_by_tests(candidates, {"tools.planted": planted}) == ["dataset.scenes"]
    assert used_only_by_tests(candidates, {"dataset.io": planted}) == ["dataset.io", "dataset.scenes"]


# --- What a mode reads besides its patches is asked in one place --------------------------------------

# ``Mode.extra_inputs`` is declared in models/modes.py, checked by the value itself (models/inputs.py) and turned
# into tensors by the one builder (pipeline/inputs.py); every other module goes through those.
READS_WHAT_A_MODE_NEEDS = {"models.modes", "models.inputs", "pipeline.inputs"}
NEEDS_ATTRIBUTES = {"extra_inputs", "needs_medium", "needs_global", "needs_large_window"}


def asks_what_a_mode_reads(path: Path) -> list[int]:
    """Lines of ``path`` that read one of ``NEEDS_ATTRIBUTES`` of an object."""
    return sorted({node.lineno for node in ast.walk(ast.parse(path.read_text(), str(path)))
                   if isinstance(node, ast.Attribute) and node.attr in NEEDS_ATTRIBUTES})


@pytest.mark.parametrize("layer, path", modules(), ids=lambda v: str(v.relative_to(ROOT)) if isinstance(v, Path) else v)
def test_only_the_builder_asks_which_contexts_a_mode_reads(layer: str, path: Path) -> None:
    if module_name(path) in READS_WHAT_A_MODE_NEEDS:
        return
    lines = asks_what_a_mode_reads(path)
    assert not lines, (f"{path.relative_to(ROOT)} asks which contexts a mode reads (lines {lines}); build the inputs "
                       f"with pipeline.inputs.InputBuilder or size windows with pipeline.inputs.window_sides")


def test_the_reads_checker_sees_attribute_reads(tmp_path: Path) -> None:
    planted = tmp_path / "planted.py"
    planted.write_text("x = net.spec.extra_inputs\ny = 'extra_inputs'\nif model.needs_global:\n    pass\n")
    assert asks_what_a_mode_reads(planted) == [1, 3]
