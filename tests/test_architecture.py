"""The architecture page (docs/architecture.md) names the modules that exist, and every
layer of the import-linter contract that keeps them in order (CI runs ``lint-imports``)."""

from __future__ import annotations

import re

import pytest

from .conftest import REPO

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
