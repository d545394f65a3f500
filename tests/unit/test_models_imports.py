"""The table models import without a cycle: :mod:`sts.db.models` holds the declarative base and
every table, and imports nothing of the modules that use them (:mod:`sts.broker`,
:mod:`sts.mappings`), at any level; those re-export their tables from it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import sts

ROOT = Path(sts.__file__).resolve().parent
MODELS = ("sts.db.models", "sts.broker.models", "sts.mappings.models")
TABLES = {
    "issuance_events",
    "role_mappings",
    "mapping_revision",
    "mapping_changes",
    "signing_keys",
    "revocations",
    "revocation_revision",
}


def module_file(module: str) -> Path:
    path = ROOT.parent.joinpath(*module.split("."))
    package = path / "__init__.py"
    return package if package.exists() else path.with_suffix(".py")


def resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".")
    # A package's __init__ is its own package; a module's package is its parent.
    if module_file(module).name != "__init__.py":
        package = package[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imported(module: str, *, top_level_only: bool) -> set[str]:
    """The ``sts`` modules (and packages) ``module`` imports: everywhere in the file, or only
    what runs when it is imported (not inside functions or ``if TYPE_CHECKING:``)."""
    tree = ast.parse(module_file(module).read_text(), str(module_file(module)))
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if top_level_only and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            return
        if (
            top_level_only
            and isinstance(node, ast.If)
            and "TYPE_CHECKING" in ast.unparse(node.test)
        ):
            for statement in node.orelse:
                visit(statement)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = resolve(module, node)
            found.add(base)
            # ``from sts.x import y`` may import the submodule sts.x.y.
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                if module_file(candidate).exists():
                    found.add(candidate)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {name for name in found if name == "sts" or name.startswith("sts.")}


def test_db_models_imports_no_owner_of_a_table_at_any_level() -> None:
    names = imported("sts.db.models", top_level_only=False)
    offending = sorted(
        name for name in names if name.split(".")[:2] in (["sts", "broker"], ["sts", "mappings"])
    )
    assert offending == []


def _closure(start: str) -> dict[str, set[str]]:
    """The graph of imports reachable from ``start``: module-level ones, and for the model
    modules every import, inside functions too (packages' ``__init__`` included: importing
    ``sts.a.b`` runs ``sts.a`` first)."""
    graph: dict[str, set[str]] = {}
    pending = [start]
    while pending:
        module = pending.pop()
        if module in graph or not module_file(module).exists():
            continue
        edges: set[str] = set()
        for name in imported(module, top_level_only=module not in MODELS):
            parts = name.split(".")
            edges.update(".".join(parts[:i]) for i in range(2, len(parts) + 1))
        edges.discard(module)
        graph[module] = edges
        pending.extend(edges)
    return graph


@pytest.mark.parametrize("start", MODELS)
def test_no_import_cycle_through_the_models(start: str) -> None:
    graph = _closure(start)
    # Every cycle through one of the model modules, by depth-first search from it.
    cycles = []
    for model in (m for m in MODELS if m in graph):
        stack = [(model, [model])]
        seen = set()
        while stack:
            node, path = stack.pop()
            for nxt in graph.get(node, ()):
                if nxt == model:
                    cycles.append([*path, nxt])
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
    assert cycles == []


@pytest.mark.parametrize("first", MODELS)
def test_each_models_module_imports_first_and_registers_every_table(first: str) -> None:
    """In a fresh interpreter, whichever models module comes first, the metadata Alembic compares
    against holds every table."""
    code = (
        f"import {first}\n"
        "from sts.db.models import Base, all_tables\n"
        "assert all_tables() is Base.metadata\n"
        "print(' '.join(sorted(Base.metadata.tables)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert set(result.stdout.split()) == TABLES


def test_the_owners_re_export_the_same_classes() -> None:
    from sts.broker import models as broker_models
    from sts.db import models
    from sts.mappings import models as mapping_models

    assert broker_models.SigningKeyRow is models.SigningKeyRow
    assert mapping_models.RoleMapping is models.RoleMapping
    assert mapping_models.MappingRevision is models.MappingRevision
    assert mapping_models.MappingChange is models.MappingChange
    assert mapping_models.Base is models.Base
