"""The import graph points down only (docs/ARCHITECTURE.md, "Layers").

Every module under fad/, search/ (fad.search) and augment/ (fad.augment) is parsed with `ast`;
every import counts, at any depth (inside functions, under `if TYPE_CHECKING:`), relative ones
resolved, and `importlib.import_module("...")` / `__import__("...")` with a literal name too.
A failure names each offending module, file and line.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROOTS = {"fad": REPO / "fad", "fad.search": REPO / "search", "fad.augment": REPO / "augment"}
STAGES = ("fad.search", "fad.augment")


@dataclass(frozen=True)
class Import:
    """One import statement: `module` (file `path`, line `line`) imports `target`."""

    module: str
    path: Path
    line: int
    target: str

    def __str__(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}: {self.module} imports {self.target}"


def module_name(root_name: str, root: Path, path: Path) -> tuple[str, bool]:
    """(dotted name of the file `path` under `root`, whether it is a package __init__)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts = parts[:-1]
    return ".".join([root_name, *parts]), is_package


def _resolve(module: str, is_package: bool, level: int, name: str | None) -> str:
    """The absolute module of `from <level dots><name> import ...` inside `module`."""
    if level == 0:
        return name or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    base = package[:len(package) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def imports_of(source: str, module: str, path: Path, is_package: bool = False) -> list[Import]:
    """Every project-relevant import in `source`: for `from a import b` both `a` and `a.b` (b
    may be a submodule), so `from fad import cli` is seen as an import of fad.cli."""
    found = []
    for node in ast.walk(ast.parse(source, filename=str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, is_package, node.level, node.module)
            targets = [base] + [f"{base}.{a.name}" for a in node.names if a.name != "*"]
        elif (isinstance(node, ast.Call) and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                   or (isinstance(node.func, ast.Name) and node.func.id == "__import__"))):
            targets = [node.args[0].value]
        found += [Import(module, path, node.lineno, t) for t in targets if t]
    return found


def _all_imports() -> list[Import]:
    found = []
    for root_name, root in ROOTS.items():
        for path in sorted(root.rglob("*.py")):
            module, is_package = module_name(root_name, root, path)
            found += imports_of(path.read_text(encoding="utf-8"), module, path, is_package)
    return found


ALL_IMPORTS = _all_imports()


def within(name: str, *prefixes: str) -> bool:
    """Whether module `name` is one of `prefixes` or inside one of them."""
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def in_library(name: str) -> bool:
    """Modules of the library `fad` (folder fad/): not the stages, which share the name."""
    return within(name, "fad") and not within(name, *STAGES)


# (rule, whose imports it checks, which targets it forbids)
RULES = [
    ("fad.ops is the bottom layer: it imports from fad only fad.ops, fad.errors and fad.utils",
     lambda m: within(m, "fad.ops"),
     lambda t: within(t, *STAGES) or (in_library(t) and t != "fad" and not within(
         t, "fad.ops", "fad.errors", "fad.utils"))),
    ("fad.modeling never imports fad.engine, fad.cli or a stage",
     lambda m: within(m, "fad.modeling"),
     lambda t: within(t, "fad.engine", "fad.cli", *STAGES)),
    ("fad (outside fad.cli) never imports fad.cli, fad.search or fad.augment",
     lambda m: in_library(m) and not within(m, "fad.cli"),
     lambda t: within(t, "fad.cli", *STAGES)),
    ("fad.search imports only fad (never fad.cli or fad.augment)",
     lambda m: within(m, "fad.search"),
     lambda t: within(t, "fad.cli", "fad.augment")),
    ("fad.augment imports only fad (never fad.cli or fad.search)",
     lambda m: within(m, "fad.augment"),
     lambda t: within(t, "fad.cli", "fad.search")),
]


def violations(imports: list[Import], rule: int) -> list[Import]:
    """The imports that break RULES[rule], one per statement (its first forbidden target),
    sorted by file and line."""
    _, checks, forbids = RULES[rule]
    first: dict[tuple[Path, int], Import] = {}
    for i in imports:
        if checks(i.module) and forbids(i.target):
            first.setdefault((i.path, i.line), i)
    return sorted(first.values(), key=lambda i: (str(i.path), i.line))


def test_every_tree_is_parsed():
    """The walk sees all three trees and resolves relative imports (a broken walk checks
    nothing)."""
    modules = {i.module for i in ALL_IMPORTS}
    for name in ("fad.ops", "fad.modeling", "fad.engine.launch", "fad.search", "fad.augment"):
        assert name in modules
    assert any(i.target.startswith("fad.ops.") for i in ALL_IMPORTS
               if i.module.startswith("fad.ops."))


def test_checker_finds_violations():
    """Relative, nested and dynamic imports that break a rule are all reported, with the line."""
    source = ("import torch\n"
              "from fad.errors import OpError\n"
              "def f():\n"
              "    from ...modeling import build_detector\n"
              "    import importlib\n"
              "    return importlib.import_module('fad.engine.trainer')\n"
              "from fad import cli\n")
    path = REPO / "fad" / "ops" / "x" / "y.py"
    found = violations(imports_of(source, "fad.ops.x.y", path), 0)
    assert [(i.line, i.target) for i in found] == [
        (4, "fad.modeling"), (6, "fad.engine.trainer"), (7, "fad.cli")]
    assert str(found[0]) == "fad/ops/x/y.py:4: fad.ops.x.y imports fad.modeling"
    package = imports_of("from . import cells\n", "fad.search", REPO / "search" / "__init__.py",
                         is_package=True)
    assert [i.target for i in package] == ["fad.search", "fad.search.cells"]


@pytest.mark.parametrize("rule", range(len(RULES)), ids=[r[0].split(":")[0] for r in RULES])
def test_layer_rule(rule):
    bad = violations(ALL_IMPORTS, rule)
    assert not bad, RULES[rule][0] + "; offending imports:\n" + "\n".join(map(str, bad))
