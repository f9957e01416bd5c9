"""pyproject.toml declares what the package imports, and nothing it does not (boto3 and tqdm once
sat in `dependencies` unused, while fastapi, starlette and huggingface_hub were imported undeclared)."""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import re
import sys
import tomllib

from packaging.requirements import Requirement

from tests.support import REPO_ROOT

PACKAGE = REPO_ROOT / "ray_cora"
# Imported, but shipped by another dependency rather than as a distribution of its own.
VENDORED = {"psutil": "ray (ray/thirdparty_files, put on sys.path by `import ray`)"}


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", Requirement(requirement).name).lower()


def _pyproject() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]


def _imports() -> dict[str, set[str]]:
    """Top-level module -> files of ray_cora that import it (absolute imports, any depth)."""
    found: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(REPO_ROOT)))
    return {module: files for module, files in found.items()
            if module not in sys.stdlib_module_names and module != "ray_cora"}


@functools.cache
def _module_distributions() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()  # scans every installed distribution


def _distributions_of(module: str) -> set[str]:
    """The distributions that install ``module``; for one not installed here (an optional extra
    the test environment lacks), the distribution named like the module."""
    return {_name(d) for d in _module_distributions().get(module, [])} or {_name(module)}


def test_every_imported_package_is_declared():
    project = _pyproject()
    declared = {_name(r) for r in project["dependencies"]}
    declared |= {_name(r) for extra in project["optional-dependencies"].values() for r in extra}
    undeclared = {module: sorted(files) for module, files in _imports().items()
                  if module not in VENDORED and not _distributions_of(module) & declared}
    assert not undeclared, f"imported but not in pyproject.toml: {undeclared}"


def test_every_dependency_is_imported_by_the_package():
    imported = set().union(*(_distributions_of(module) for module in _imports()))
    unused = [r for r in _pyproject()["dependencies"] if _name(r) not in imported]
    assert not unused, f"declared in [project] dependencies but never imported by ray_cora: {unused}"


def test_transformers_comes_with_what_mt5s_tokenizer_needs():
    # transformers 5 builds a tokenizer from spiece.model (mT5 checkpoints without tokenizer.json)
    # through sentencepiece and protobuf: its `sentencepiece` extra.
    (transformers,) = [Requirement(r) for r in _pyproject()["dependencies"] if _name(r) == "transformers"]
    assert "sentencepiece" in transformers.extras
    extra_needs = [Requirement(r) for r in importlib.metadata.requires("transformers") or []]
    wanted = {_name(str(r.name)) for r in extra_needs if r.marker and r.marker.evaluate({"extra": "sentencepiece"})}
    assert {"sentencepiece", "protobuf"} <= wanted
