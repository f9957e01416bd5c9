"""The house plan of ray_cora/STRUCTURE.md, enforced: the import-linter contracts in pyproject.toml
(layers, no Ray in the core, no cycles) and the rules import-linter cannot express."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.support import REPO_ROOT

PACKAGE = REPO_ROOT / "ray_cora"
# Modules that may import package modules inside functions, each for a reason written beside it.
LAZY_INTERNAL_IMPORTS = {
    "ray_cora/encoders/__init__.py",  # an encoder module (torch, transformers, mUSE) loads with its spec
}


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _function_level_imports(tree: ast.Module) -> list[ast.ImportFrom | ast.Import]:
    top = set()
    for node in tree.body:
        for inner in ast.walk(node) if isinstance(node, (ast.If, ast.Try)) else [node]:
            top.add(id(inner))
    return [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) and id(n) not in top]


def test_import_contracts_hold():
    """Layers point down, the core and configs never import Ray, no import cycles (lint-imports)."""
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--config", str(REPO_ROOT / "pyproject.toml")], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "3 kept, 0 broken" in result.stdout


def test_no_job_modules_at_the_package_root():
    """Configs live in ray_cora/configs, drivers in their layers: no ``*_job.py`` entry modules."""
    assert sorted(p.name for p in PACKAGE.glob("*_job.py")) == []


def test_package_imports_sit_at_module_top():
    """An import of a package module inside a function hides a dependency from the contracts."""
    hidden = []
    for path in _modules():
        rel = path.relative_to(REPO_ROOT).as_posix()
        if rel in LAZY_INTERNAL_IMPORTS:
            continue
        for node in _function_level_imports(ast.parse(path.read_text(encoding="utf-8"))):
            name = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
            if (name or "").startswith("ray_cora"):
                hidden.append(f"{rel}:{node.lineno}: {name}")
    assert hidden == []


def test_no_private_names_cross_modules():
    """``from ray_cora.x import _name`` couples a module to another's internals: make it public."""
    crossing = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ray_cora"):
                crossing += [f"{path.relative_to(REPO_ROOT)}:{node.lineno}: {node.module}.{a.name}"
                             for a in node.names if a.name.startswith("_") and a.name != "__version__"]
    assert crossing == []


def test_structure_map_names_every_package_folder():
    """ray_cora/STRUCTURE.md has a line for every folder of the package."""
    text = (PACKAGE / "STRUCTURE.md").read_text(encoding="utf-8")
    folders = sorted(p.parent.relative_to(PACKAGE).as_posix() for p in PACKAGE.glob("*/__init__.py"))
    missing = [f for f in folders if f"{f}/" not in text]
    assert missing == []
