"""The notebook runs top to bottom against the scripted server and a real database."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from bridgic_coldmail.testing import ScriptedOpenAIServer

from ..conftest import REPO

NOTEBOOK = REPO / "examples" / "cold_email.ipynb"


@pytest.mark.slow
def test_notebook_runs_start_to_finish(server: ScriptedOpenAIServer, db_path: Path) -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        notebook,
        timeout=120,
        kernel_name="python3",
        resources={"metadata": {"path": str(REPO / "examples")}},
    ).execute()

    outputs = [
        "".join(
            o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for o in cell.outputs
        )
        for cell in notebook.cells
        if cell.cell_type == "code"
    ]
    assert str(db_path) in outputs[0]
    assert (
        "awaiting_feedback" in outputs[1]
        and "Subject: A faster way with Acme Scheduler" in outputs[1]
    )
    assert outputs[2].startswith("awaiting_review round 1")
    assert outputs[3].startswith("awaiting_review round 2") and "Lead with the 30%" in outputs[3]
    assert outputs[4] == "(False, False)"  # every object gone, as after a kernel restart
    assert outputs[5] == "('completed', 2)"
    html = notebook.cells[-1].outputs[0]["data"]["text/html"]
    assert "Approved" in html and "CTOs at mid-size hospitals" in html
    assert "revised (round 1) by Ann" in html and "approved (round 2) by Bo" in html
    assert [r.kind for r in server.requests] == ["draft", "refine", "revise"]
