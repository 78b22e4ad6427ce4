"""The import-layer rule of docs/architecture.md: no module imports a layer above its own or a
layer its row forbids (e.g. serving importing the test-data generator), and every module has
a layer. The layer table is read from the document, so the rule and its description are one."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SRC = REPO_ROOT / "src"
DOC = REPO_ROOT / "docs" / "architecture.md"
ROW = re.compile(r"^\|\s*(\d+) ([^|]+?)\s*\|([^|]*)\|([^|]*)\|\s*$")


@dataclass(frozen=True)
class Layer:
    rank: int
    name: str
    prefixes: tuple[str, ...]
    forbidden: frozenset[int]


def read_layers(text: str) -> list[Layer]:
    layers = []
    for line in text.splitlines():
        m = ROW.match(line)
        if m:
            prefixes = tuple(re.findall(r"`([\w.]+)`", m[3]))
            forbidden = frozenset(int(n) for n in re.findall(r"(\d+) [a-z]", m[4]))
            layers.append(Layer(int(m[1]), m[2], prefixes, forbidden))
    return layers


def layer_of(module: str, layers: list[Layer]) -> Layer | None:
    """The layer whose longest prefix matches ``module`` (a prefix matches itself and its children)."""
    best: tuple[int, Layer] | None = None
    for layer in layers:
        for prefix in layer.prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), layer)
    return best[1] if best else None


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, package: str) -> set[str]:
    """Every vlsearch module ``path`` imports, at module level or inside a function; for
    ``from X import name`` the submodule ``X.name`` when that is a module, else ``X``."""
    out: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "vlsearch")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] != "vlsearch":
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.add(sub if _is_module(sub) else base)
    return out


def _runtime_nodes(tree: ast.AST):
    """Every node but those under ``if TYPE_CHECKING:`` (annotations only, never imported at run time)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                stack.extend(child.orelse)
            else:
                stack.append(child)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _is_module(name: str) -> bool:
    path = SRC.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def violations(layers: list[Layer]) -> list[str]:
    problems = []
    for path in sorted((SRC / "vlsearch").rglob("*.py")):
        name = module_name(path)
        own = layer_of(name, layers)
        if own is None:
            problems.append(f"{name}: in no layer of docs/architecture.md")
            continue
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for target in sorted(imported_modules(path, package)):
            other = layer_of(target, layers)
            if other is None:
                problems.append(f"{name} imports {target}, which is in no layer")
            elif other.rank > own.rank:
                problems.append(f"{name} ({own.rank} {own.name}) imports {target} ({other.rank} {other.name}), a layer above")
            elif other.rank in own.forbidden:
                problems.append(f"{name} ({own.rank} {own.name}) imports {target} ({other.rank} {other.name}), forbidden to it")
    return problems


@pytest.fixture(scope="module")
def layers() -> list[Layer]:
    layers = read_layers(DOC.read_text())
    assert [layer.rank for layer in layers] == list(range(1, len(layers) + 1)) and len(layers) >= 8
    return layers


def test_no_module_imports_a_layer_above_or_a_forbidden_one(layers):
    assert violations(layers) == []


def test_the_rule_catches_serving_importing_the_generator(layers, tmp_path):
    """The check itself can fail: the modules of a made-up breach are placed and judged."""
    assert layer_of("vlsearch.serving.engine", layers).rank > layer_of("vlsearch.queries.generator", layers).rank
    serving, generator = layer_of("vlsearch.serving.engine", layers), layer_of("vlsearch.queries.generator", layers)
    assert generator.rank in serving.forbidden
    assert layer_of("vlsearch.queries.relevance", layers).rank not in serving.forbidden
    index = layer_of("vlsearch.index.builder", layers)
    assert layer_of("vlsearch.serving.app", layers).rank > index.rank  # index importing serving is "above"
    breach = tmp_path / "breach.py"
    breach.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from vlsearch.cli import main\n"
                      "def f():\n    from vlsearch.queries.generator import generate_queries\n    from vlsearch import serving\n")
    assert imported_modules(breach, "vlsearch.index") == {"vlsearch.queries.generator", "vlsearch.serving"}
