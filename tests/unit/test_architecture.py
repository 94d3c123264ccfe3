"""The architecture page (docs/architecture.md) names the modules that exist, and every
layer of the import-linter contract that keeps them in order (CI runs ``lint-imports``)."""

from __future__ import annotations

import re

import pytest

from ..conftest import REPO

tomllib = pytest.importorskip("tomllib", reason="Python 3.11 reads pyproject.toml")

PAGE = (REPO / "docs" / "architecture.md").read_text()
PACKAGE = REPO / "bridgic_coldmail"


def _diagram() -> str:
    return PAGE.split("```")[1]


def test_every_module_and_folder_the_page_names_exists() -> None:
    named = set(re.findall(r"`([\w/]+\.py|[\w]+/)`", PAGE))  # the table's paths
    named |= set(re.findall(r"(?<![\w.])(\w+\.py|\w+/)", _diagram()))  # the drawing's
    assert len(named) > 20, named
    everywhere = {path.relative_to(PACKAGE).as_posix() for path in PACKAGE.rglob("*")}
    names = {path.name for path in PACKAGE.rglob("*")}
    missing = sorted(
        name
        for name in named
        if name.rstrip("/") not in names
        and name.rstrip("/") not in everywhere
        and not (REPO / name).exists()  # tests/…
    )
    assert not missing, f"docs/architecture.md names modules that do not exist: {missing}"


def test_every_layer_of_the_contract_is_on_the_page() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    (layers,) = [c["layers"] for c in config["contracts"] if c["type"] == "layers"]
    modules = [name.strip() for layer in layers for name in layer.split("|")]
    drawing = _diagram()
    absent = [m for m in modules if not re.search(rf"(?<![\w.]){re.escape(m)}\b", drawing)]
    assert not absent, f"layers of the import-linter contract missing from the drawing: {absent}"


def test_tests_and_benchmarks_share_only_the_testbed() -> None:
    """Neither imports the other; what both need is in testbed/, which imports neither."""
    import ast

    def imported(folder: str) -> set[tuple[str, str]]:
        found = set()
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                found |= {(path.name, name.split(".")[0]) for name in names}
        return found

    tests, benchmarks, testbed = imported("tests"), imported("benchmarks"), imported("testbed")
    assert any(top == "testbed" for _, top in tests)
    assert any(top == "testbed" for _, top in benchmarks)
    assert not [where for where, top in tests if top == "benchmarks"]
    assert not [where for where, top in benchmarks if top == "tests"]
    assert not [where for where, top in testbed if top in ("tests", "benchmarks")]
