"""The layers depend one way (DESIGN.md): runtime → bus, handlers; handlers → bridges; bridges →
drivers. Checked on the imports of every module, type-only imports included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).parent.parent

# package -> the l8 packages it must not import
FORBIDDEN = {
    "bus": {"handlers", "bridges", "runtime"},
    "handlers": {"bus", "runtime"},
    "bridges": {"bus", "handlers", "runtime"},
}


def imported_packages(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_layer_imports_no_layer_above_it(package: str) -> None:
    offenders = {
        str(path.relative_to(REPO)): sorted(imported_packages(path) & FORBIDDEN[package])
        for path in sorted((REPO / package).rglob("*.py"))
        if imported_packages(path) & FORBIDDEN[package]
    }
    assert not offenders, offenders


def test_the_handlers_spelling_of_a_subject_token_is_the_bus_one() -> None:
    from bus.subjects import TOKEN as BUS_TOKEN
    from handlers.base import TOKEN as HANDLERS_TOKEN

    assert HANDLERS_TOKEN.pattern == BUS_TOKEN.pattern
