"""The whole path: a lead list's columns become merge fields, the run is reviewed and
approved, and its emails are exported for every lead — through the CLI and the Python API."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from bridgic_coldmail import Brief, ColdMailAgent, InvalidInput, RunConflict
from bridgic_coldmail.cli import main
from bridgic_coldmail.testing import Reply, ScriptedOpenAIServer

FEEDBACK = "Controllers at manufacturing firms"
ADDRESS = "Ledgerly Inc., 1 Main St, Springfield, IL 62701"
OPT_OUT = "Not the right person? Reply 'stop' and I won't write again."


def _lead_list(path: Path, count: int) -> list[dict[str, str]]:
    leads = []
    for number in range(count):
        leads.append(
            {
                "Email": f"lead{number}@example.com",
                "First Name": "" if number % 10 == 0 else f"Name{number}",
                "Company": f'=HYPERLINK("http://evil.example","Co {number}")'
                if number == 7
                else f"Company {number}",
            }
        )
    with path.open("w", newline="", encoding="utf-8-sig") as handle:  # with a BOM, as Excel
        writer = csv.DictWriter(handle, fieldnames=["Email", "First Name", "Company"])
        writer.writeheader()
        writer.writerows(leads)
    return leads


def test_a_thousand_leads_from_start_to_export(
    server: ScriptedOpenAIServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    leads_path = tmp_path / "leads.csv"
    leads = _lead_list(leads_path, 1000)
    start = ["start", "--product", "Ledgerly", "--offer", "reconciles invoices",
             "--sender", "Sam Roy", "--review", "--leads", str(leads_path), "--json",
             "--postal-address", ADDRESS, "--opt-out", OPT_OUT]  # fmt: skip
    assert main(start) == 0
    rid = json.loads(capsys.readouterr().out)["interaction_id"]
    assert "Merge fields available: {{email}}, {{first_name}}, {{company}}" in (
        server.requests[-1].user_text
    )
    assert main(["resume", rid, "--feedback", FEEDBACK]) == 0
    out = tmp_path / "campaign.csv"
    assert (
        main(["export", rid, "--leads", str(leads_path), "--out", str(out)])
        == RunConflict.exit_code
    )
    assert "awaiting review at round 1; approve it" in capsys.readouterr().err
    assert not out.exists()
    assert main(["approve", rid, "--reviewer", "Ann"]) == 0
    capsys.readouterr()

    assert main(["export", rid, "--leads", str(leads_path), "--out", str(out)]) == 0
    summary = capsys.readouterr().out
    assert f"Wrote 1000 lead(s) to {out} (csv)." in summary

    with out.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 1000
    assert list(rows[0]) == [
        "Email", "First Name", "Company",
        "step1_subject", "step1_body", "step2_subject", "step2_body", "step2_delay_days",
    ]  # fmt: skip
    for lead, row in zip(leads, rows, strict=True):
        greeting = f"Hi {lead['First Name'] or 'there'},"
        assert row["Email"] == lead["Email"]
        assert row["step1_body"].startswith(greeting)
        assert "{{" not in row["step1_body"] + row["step2_body"] + row["step1_subject"]
        assert FEEDBACK in row["step1_subject"]
        assert row["step2_subject"] == ""  # blank: the follow-up threads as a reply
        assert row["step2_delay_days"] == "4"
        for body in (row["step1_body"], row["step2_body"]):  # the brief's footer, by code
            assert body.endswith(f"\n\n{ADDRESS}\n{OPT_OUT}")
    assert rows[7]["Company"].startswith("'=HYPERLINK")  # never run as a formula

    summary_json = tmp_path / "again.csv"
    assert main(["export", rid, "--leads", str(leads_path), "--out", str(summary_json),
                 "--json"]) == 0  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    assert report == {
        "out": str(summary_json),
        "format": "csv",
        "profile": "generic",
        "template": None,
        "rows_written": 1000,
        "variants": {},
        "skipped": [],
        "lint": [],
        "lead_findings": [],
    }

    as_json = tmp_path / "campaign.json"
    args = ["export", rid, "--leads", str(leads_path), "--out", str(as_json), "--format", "json"]
    assert main(args) == 0
    exported = json.loads(as_json.read_text(encoding="utf-8"))
    assert len(exported) == 1000 and exported[1]["step1_body"].startswith("Hi Name1,")
    assert server.count("draft") == 1 and server.count("refine") == 1


async def test_export_through_the_python_api_reports_what_it_skipped(
    server: ScriptedOpenAIServer, db_path: Path, tmp_path: Path
) -> None:
    leads_path = tmp_path / "leads.csv"
    leads_path.write_text(
        "email,first_name\nann@example.com,Ann\nnot-an-email,Bob\nann@example.com,Ann again\n",
        encoding="utf-8",
    )
    brief = Brief(product="Ledgerly", offer="reconciles invoices", sender="Sam Roy")
    # The footer from the settings' defaults (the brief has none): the CAN-SPAM rules pass.
    async with ColdMailAgent.open(db_path, postal_address=ADDRESS, opt_out=OPT_OUT) as agent:
        run = await agent.start(brief, fields=["email", "first_name"])
        await agent.resume(run.interaction_id, FEEDBACK)
        report = await agent.export(run.interaction_id, leads_path, tmp_path / "out.csv")
        assert report.rows_written == 1
        assert [(s.row, s.email) for s in report.skipped] == [
            (3, "not-an-email"),
            (4, "ann@example.com"),
        ]
        with pytest.raises(InvalidInput, match="row 3"):
            await agent.export(run.interaction_id, leads_path, tmp_path / "strict.csv", strict=True)
        assert not (tmp_path / "strict.csv").exists()
        issues = await agent.lint(run.interaction_id)
    assert issues == []


def test_start_with_a_lead_list_without_an_email_column_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    leads_path = tmp_path / "leads.csv"
    leads_path.write_text("name,company\nAnn,Acme\n", encoding="utf-8")
    code = main(["start", "--product", "A", "--offer", "B", "--sender", "C", "--leads",
                 str(leads_path)])  # fmt: skip
    assert code == InvalidInput.exit_code
    assert "email" in capsys.readouterr().err


def test_export_json_reports_lint_issues_with_their_severity(
    server: ScriptedOpenAIServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    leads_path = tmp_path / "leads.csv"
    leads_path.write_text("email\nann@example.com\n", encoding="utf-8")
    shouting = {
        "opener": {"subject": "FREE OFFER inside", "body": "Hi,\n\nAct now.\n\nSam"},
        "follow_up": {"subject": "s", "body": "b", "wait_days": 3},
    }
    server.enqueue(Reply(kind="refine", content=json.dumps(shouting)))
    assert main(["start", "--product", "Ledgerly", "--offer", "o", "--sender", "Sam",
                 "--json"]) == 0  # fmt: skip
    rid = json.loads(capsys.readouterr().out)["interaction_id"]
    assert main(["resume", rid, "--feedback", FEEDBACK]) == 0
    capsys.readouterr()
    out = tmp_path / "o.csv"
    assert main(["export", rid, "--leads", str(leads_path), "--out", str(out), "--json"]) == 0
    lint = json.loads(capsys.readouterr().out)["lint"]
    assert {(i["code"], i["severity"]) for i in lint} >= {("capitals", "warning")}
