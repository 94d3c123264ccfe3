"""Each sending tool's profile against a fixture written from that tool's documentation
(tests/data/profiles/*.json, each with the page and the words it was written from), never
from our own output; and every way a profile can be misused."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bridgic_coldmail import Brief, ColdMailAgent, InvalidInput
from bridgic_coldmail.compliance import Footer
from bridgic_coldmail.export.lint import COMPLIANCE_RULES, Severity
from bridgic_coldmail.export.profiles import (
    CONCEPTS,
    NAMES,
    PROFILES,
    bare_domain,
    profile_named,
)
from bridgic_coldmail.export.writer import export_sequence, preview_export
from bridgic_coldmail.models import EmailSequence, EmailStep
from bridgic_coldmail.testing import ScriptedOpenAIServer

from ..conftest import Completed

FIXTURES = Path(__file__).parent.parent / "data" / "profiles"
FOOTER = Footer(
    postal_address="Acme Inc., 1 Main St, Springfield, IL 62701",
    opt_out="Not interested? Reply 'stop' and I won't write again.",
)
LEADS = (
    "Email,First Name,Last Name,Company,Phone,Website,Location,LinkedIn,Company URL,"
    "Job Title,Industry\n"
    "ana@acme.com,Ana,Lopez,Acme Health,+1 555 0100,https://www.acmehealth.com/about,"
    "Boston,https://linkedin.com/in/ana,https://acmehealth.com,COO,Health\n"
    "bo@beta.io,Bo,Kim,Beta,,beta.io,,,,CTO,Software\n"
)


def fixture(tool: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"{tool}.json").read_text(encoding="utf-8"))
    return data


def sequence(wait_days: int = 3) -> EmailSequence:
    return EmailSequence(
        opener=EmailStep(
            subject="A question for {{company|your team}}",
            body=(
                "Hi {{first_name|there}},\n\nAs {{job_title|a leader}} at {{company|your "
                "company}}, how do you handle no-shows?\n\nDana"
            ),
            wait_days=0,
        ),
        follow_up=EmailStep(
            subject="Re",
            body="Hi {{first_name|there}}, one more idea.\n\nDana",
            wait_days=wait_days,
        ),
    )


PLAIN = EmailSequence(
    opener=EmailStep(subject="A question", body="Hello,\n\nA question.\n\nDana", wait_days=0),
    follow_up=EmailStep(subject="Re", body="Hello again.\n\nDana", wait_days=3),
)
"""No merge fields, for lead lists with few columns."""


def write_leads(tmp_path: Path, text: str = LEADS) -> Path:
    path = tmp_path / "leads.csv"
    path.write_text(text, encoding="utf-8")
    return path


def export(tmp_path: Path, tool: str, **kwargs: Any) -> tuple[list[dict[str, str]], str, Any]:
    out = tmp_path / "campaign.csv"
    report = export_sequence(
        kwargs.pop("sequence", sequence()),
        kwargs.pop("leads", None) or write_leads(tmp_path),
        out,
        profile=tool,
        footer=kwargs.pop("footer", FOOTER),
        **kwargs,
    )
    with out.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    template = report.template.read_text(encoding="utf-8") if report.template else ""
    return rows, template, report


def step_lines(template: str) -> dict[int, str]:
    """The campaign's steps (section 3) by number: the text after 'Step N · '."""
    section = template.split("3. The campaign's steps")[1].split("\n4. ")[0]
    return {int(n): rest for n, rest in re.findall(r"Step (\d) · (.*)", section)}


def own_variables(template: str) -> str:
    """The section with the sequence in the tool's own variables."""
    return template.split("own variables")[1].split("Check (not in")[0]


# --- Smartlead ------------------------------------------------------------------------------


def test_smartlead_columns_are_its_documented_lead_fields_then_custom_fields(
    tmp_path: Path,
) -> None:
    doc = fixture("smartlead")
    rows, _, report = export(tmp_path, "smartlead")
    documented = doc["lead_fields"]["names"]
    standard = [c for c in report.columns if c in documented]
    assert standard == documented  # every field the list has, under Smartlead's own name
    custom = [c for c in report.columns if c not in documented]
    example = doc["lead_fields"]["custom_field_examples"]
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", name) for name in custom + example)
    assert custom == ["job_title", "industry", "step1_subject", "step1_body", "step2_body"]
    ana = rows[0]
    assert (ana["email"], ana["first_name"], ana["company_name"], ana["phone_number"]) == (
        "ana@acme.com",
        "Ana",
        "Acme Health",
        "'+1 555 0100",  # a cell starting with + is neutralised like any other
    )
    assert (ana["linkedin_profile"], ana["location"], ana["job_title"]) == (
        "https://linkedin.com/in/ana",
        "Boston",
        "COO",
    )


def test_smartlead_delays_are_days_before_each_step_and_step_2_threads(tmp_path: Path) -> None:
    doc = fixture("smartlead")["sequence"]
    _, template, _ = export(tmp_path, "smartlead")
    steps = step_lines(template)
    for expected in doc["for_a_follow_up_3_days_after_the_opener"]:
        line = steps[expected["seq_number"]]
        assert line.startswith(f"{doc['delay_field']}: {expected['delay_in_days']}"), line
    campaign = template.split("3. The campaign's steps")[1].split("\n4. ")[0]
    assert "Subject: (leave it empty, so it goes out as a reply)" in campaign


def test_smartlead_template_uses_its_variables_and_unsubscribe_placeholder(
    tmp_path: Path,
) -> None:
    doc = fixture("smartlead")
    rows, template, _ = export(tmp_path, "smartlead")
    campaign = template.split("3. The campaign's steps")[1].split("\n4. ")[0]
    placeholder = doc["unsubscribe"]["placeholder"]
    for variable in ("{{step1_subject}}", "{{step1_body}}", "{{step2_body}}"):
        assert variable in campaign  # custom fields as {{field_name}}
    assert campaign.count(placeholder) == 2  # one per email, in the copy
    assert all(placeholder not in "".join(row.values()) for row in rows)  # never in a cell
    variables = doc["template_variables"]
    translated = own_variables(template)
    for key in ("first_name", "company_name", "custom"):
        assert variables[key] in translated
    assert all(setting in template for setting in doc["plain_text"]["settings"])


# --- Instantly ------------------------------------------------------------------------------


def test_instantly_columns_are_its_api_lead_fields_and_custom_variables(tmp_path: Path) -> None:
    doc = fixture("instantly")
    rows, _, report = export(tmp_path, "instantly")
    documented = doc["lead_fields"]["names"]
    standard = [c for c in report.columns if c in documented]
    assert standard == [n for n in documented if n != "personalization"]  # the list has none
    custom = [c for c in report.columns if c not in documented]
    example = doc["lead_fields"]["custom_variable_examples"]
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", name) for name in custom + example)
    assert (rows[1]["first_name"], rows[1]["company_name"], rows[1]["website"]) == (
        "Bo",
        "Beta",
        "beta.io",
    )


def test_instantly_delay_is_the_wait_after_each_email(tmp_path: Path) -> None:
    doc = fixture("instantly")["sequence"]
    _, template, _ = export(tmp_path, "instantly")
    first, second = doc["for_a_follow_up_3_days_after_the_opener"]
    steps = step_lines(template)
    assert steps[1].startswith(f"delay: {first['delay']}, delay_unit: {first['delay_unit']}")
    assert "the last step's delay is not used" in steps[2]
    assert re.search(r"Step 2 · [^\n]*\n\s*Subject: \(leave it empty", template)


def test_instantly_template_writes_first_name_in_camel_case(tmp_path: Path) -> None:
    doc = fixture("instantly")
    _, template, _ = export(tmp_path, "instantly")
    translated = own_variables(template)
    assert doc["template_variables"]["first_name"] in translated
    assert "{{first_name}}" not in translated
    assert doc["plain_text"]["settings"][0] in template
    assert doc["unsubscribe"]["setting"] in template


# --- lemlist --------------------------------------------------------------------------------


def test_lemlist_maps_defaults_and_never_creates_a_custom_variable_with_a_default_name(
    tmp_path: Path,
) -> None:
    doc = fixture("lemlist")
    defaults = doc["default_variables"]["names"]
    leads = write_leads(
        tmp_path,
        "email,first_name,Company,Company Domain,icebreaker,Job Title,LinkedIn URL\n"
        "ana@acme.com,Ana,Acme,acme.com,Loved your talk,COO,https://linkedin.com/in/ana\n",
    )
    rows, _, report = export(tmp_path, "lemlist", leads=leads)
    folded = {d.casefold() for d in defaults}
    standard = [c for c in report.columns if c in defaults]
    custom = [c for c in report.columns if c not in defaults]
    assert standard == ["email", "firstName", "companyName", "companyDomain", "linkedinUrl",
                        "icebreaker"]  # fmt: skip
    assert not any(name.casefold() in folded for name in custom)
    assert rows[0]["icebreaker"] == "Loved your talk"  # lemlist's own icebreaker field
    assert custom == ["jobTitle", "step1Subject", "step1Body", "step2Body"]


def test_lemlist_template_uses_its_documented_variables(tmp_path: Path) -> None:
    doc = fixture("lemlist")
    _, template, _ = export(tmp_path, "lemlist")
    translated = own_variables(template)
    assert doc["template_variables"]["first_name"] in translated
    assert doc["template_variables"]["company_name"] in translated
    assert not doc["sequence"]["delay_unit_documented"]
    assert "check how lemlist counts its delay" in step_lines(template)[2]


# --- Apollo ---------------------------------------------------------------------------------


def test_apollo_headers_are_the_ones_its_csv_import_names(tmp_path: Path) -> None:
    doc = fixture("apollo")["csv"]
    rows, _, report = export(tmp_path, "apollo")
    recommended = doc["recommended_headers"]
    assert [c for c in report.columns if c in recommended] == recommended
    assert set(doc["at_least_one_of"]) <= set(report.columns)
    assert rows[0]["Contact Email"] == "ana@acme.com"


@pytest.mark.parametrize("given", sorted(fixture("apollo")["csv"]["website_examples"]))
def test_apollo_websites_are_bare_domains(tmp_path: Path, given: str) -> None:
    expected = fixture("apollo")["csv"]["website_examples"][given]
    leads = write_leads(tmp_path, f"email,Website\nana@acme.com,{given}\n")
    rows, _, _ = export(tmp_path, "apollo", leads=leads, sequence=PLAIN)
    assert rows[0]["Company Website"] == expected == bare_domain(given)


def test_apollo_warns_past_its_row_limit_and_strict_refuses(tmp_path: Path) -> None:
    limit = fixture("apollo")["csv"]["max_rows"]
    lines = ["email,first_name"] + [f"lead{i}@x.com,N{i}" for i in range(limit + 1)]
    leads = write_leads(tmp_path, "\n".join(lines) + "\n")
    _, _, report = export(tmp_path, "apollo", leads=leads, sequence=PLAIN)
    (issue,) = [i for i in report.lint if i.code == "row-limit"]
    assert issue.severity is Severity.WARNING and f"{limit + 1:,} rows" in issue.message
    with pytest.raises(InvalidInput, match="row-limit|at most 10,000 per file"):
        export_sequence(
            PLAIN,
            leads,
            tmp_path / "strict.csv",
            profile="apollo",
            footer=FOOTER,
            strict=True,
        )
    assert not (tmp_path / "strict.csv").exists()
    exact = write_leads(tmp_path, "\n".join(lines[:-1]) + "\n")
    assert not export(tmp_path, "apollo", leads=exact, overwrite=True, sequence=PLAIN)[2].lint


def test_apollo_template_uses_first_name_and_its_empty_fallback(tmp_path: Path) -> None:
    doc = fixture("apollo")["template_variables"]
    empty = EmailSequence(
        opener=EmailStep(subject="Hello", body="Hi {{first_name|}},\n\nDana", wait_days=0),
        follow_up=EmailStep(subject="Re", body="{{first_name}}, again.", wait_days=2),
    )
    _, template, _ = export(tmp_path, "apollo", sequence=empty)
    translated = own_variables(template)
    assert doc["empty_fallback_first_name"] in translated
    assert f"{doc['first_name']}, again." in translated


# --- generic --------------------------------------------------------------------------------


def test_generic_adds_the_documented_columns_and_writes_no_template(tmp_path: Path) -> None:
    doc = fixture("generic")
    rows, template, report = export(tmp_path, "generic")
    assert report.columns[-5:] == tuple(doc["added_columns"])
    assert report.columns[:-5] == tuple(LEADS.splitlines()[0].split(","))
    assert rows[0]["step2_subject"] == doc["step2_subject"]
    assert (template, report.template) == ("", None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["campaign.csv", "leads.csv"]


# --- every profile --------------------------------------------------------------------------


@pytest.mark.parametrize("tool", NAMES)
def test_every_profile_appends_the_footer_to_every_email_as_plain_text(
    tmp_path: Path, tool: str
) -> None:
    rows, _, report = export(tmp_path, tool)
    plan = PROFILES[tool]
    body, follow_up = (
        ("step1_body", "step2_body") if tool != "lemlist" else ("step1Body", "step2Body")
    )
    assert plan.step_columns[1:] == (body, follow_up)
    for row in rows:
        for column in (body, follow_up):
            assert row[column].endswith(f"\n\n{FOOTER.postal_address}\n{FOOTER.opt_out}")
            assert "<br" not in row[column] and "<p>" not in row[column]
    assert not [i for i in report.lint if i.code in COMPLIANCE_RULES]


@pytest.mark.parametrize("tool", [n for n in NAMES if n != "generic"])
def test_every_tool_profile_writes_its_template_beside_the_file(tmp_path: Path, tool: str) -> None:
    _, template, report = export(tmp_path, tool)
    assert report.template == tmp_path / f"campaign.{tool}.txt"
    assert template.startswith(f"{PROFILES[tool].title}: how to send campaign.csv")
    assert "{{step1_subject}}" in template or "{{step1Subject}}" in template
    for rule_source in re.findall(r"\[(?:high|medium|low|unconfirmed): (\S+)\]", template):
        assert rule_source.startswith("https://")


def test_an_unknown_tool_is_refused_with_the_list(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as caught:
        export(tmp_path, "mailchimp")
    assert str(caught.value) == (
        "unknown sending tool 'mailchimp'; use one of generic, smartlead, instantly, lemlist, "
        "apollo"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["leads.csv"]
    assert profile_named(" SmartLead ") is PROFILES["smartlead"]


def test_two_columns_that_fill_one_field_of_a_tool_are_refused(tmp_path: Path) -> None:
    leads = write_leads(tmp_path, "email,Company,Company Name\nana@acme.com,Acme,Acme Inc\n")
    with pytest.raises(InvalidInput, match="columns 'Company' and 'Company Name' both fill "
                       "Smartlead's 'company_name'; rename or delete one"):  # fmt: skip
        export(tmp_path, "smartlead", leads=leads, sequence=PLAIN)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["leads.csv"]


def test_a_lead_column_named_like_a_step_variable_is_refused(tmp_path: Path) -> None:
    leads = write_leads(tmp_path, "email,Step1 Body\nana@acme.com,x\n")
    with pytest.raises(InvalidInput, match="'Step1 Body' would be named 'step1Body' for lemlist"):
        export(tmp_path, "lemlist", leads=leads, sequence=PLAIN)
    with pytest.raises(InvalidInput, match="already has the column"):
        export(tmp_path, "generic", leads=leads, sequence=PLAIN)


def test_every_synonym_means_one_kind_of_lead_data() -> None:
    names = [name for synonyms in CONCEPTS.values() for name in synonyms]
    assert len(names) == len(set(names))
    for profile in PROFILES.values():
        concepts = [f.concept for f in profile.lead_fields]
        assert len(concepts) == len(set(concepts)) and set(concepts) <= set(CONCEPTS)
        assert not profile.lead_fields or "email" in concepts


@pytest.mark.parametrize("tool", NAMES)
def test_every_unconfirmed_rule_is_said_in_the_docs(tool: str) -> None:
    """docs/how-to/export.md says, per tool, what could not be confirmed."""
    docs_dir = Path(__file__).parent.parent.parent / "docs"
    docs = (docs_dir / "how-to" / "export.md").read_text(encoding="utf-8")
    profile = PROFILES[tool]
    if profile.is_generic:
        return
    section = docs.split(f"### {profile.title}\n")[1].split("\n### ")[0]
    assert "Unconfirmed" in section
    rules = [profile.lead_fields_rule, profile.variable_rule, profile.delay.rule,
             profile.threading, profile.plain_text, profile.unsubscribe]  # fmt: skip
    for rule in rules:
        if rule.source:
            assert rule.source in docs, rule.source


def test_a_preview_shapes_the_columns_without_writing(tmp_path: Path) -> None:
    report = preview_export(sequence(), write_leads(tmp_path), profile="apollo", footer=FOOTER)
    assert report.columns[:2] == ("First Name", "Last Name") and report.rows_written == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["leads.csv"]


# --- where the template goes ----------------------------------------------------------------


def test_an_existing_template_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    (tmp_path / "campaign.smartlead.txt").write_text("last week's", encoding="utf-8")
    with pytest.raises(InvalidInput, match="campaign.smartlead.txt \\(the paste-ready template\\) "
                       "already exists") as caught:  # fmt: skip
        export(tmp_path, "smartlead")
    assert caught.value.topic == "template_exists"
    assert not (tmp_path / "campaign.csv").exists()
    assert (tmp_path / "campaign.smartlead.txt").read_text(encoding="utf-8") == "last week's"
    _, template, _ = export(tmp_path, "smartlead", overwrite=True)
    assert template.startswith("Smartlead: how to send campaign.csv")


def test_the_template_is_never_the_export_the_lead_list_or_a_special_file(
    tmp_path: Path,
) -> None:
    with pytest.raises(InvalidInput, match="the export's own file"):
        export(tmp_path, "smartlead", template=tmp_path / "campaign.csv")
    with pytest.raises(InvalidInput, match="is the lead list itself"):
        export(tmp_path, "smartlead", template=tmp_path / "leads.csv", overwrite=True)
    with pytest.raises(InvalidInput, match="is a special file"):
        export(tmp_path, "smartlead", template="/dev/stdout")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["leads.csv"]


def test_a_chosen_template_path_is_used_even_for_generic(tmp_path: Path) -> None:
    _, template, report = export(tmp_path, "generic", template=tmp_path / "steps.txt")
    assert report.template == tmp_path / "steps.txt"
    assert "Subject: {{step1_subject}}" in template and "step2_delay_days" in template


def test_the_command_line_shapes_the_file_and_says_where_the_template_is(
    server: ScriptedOpenAIServer, tmp_path: Path, cli: Callable[..., Completed]
) -> None:
    leads = write_leads(tmp_path)
    started = cli("start", "--product", "p", "--offer", "o", "--sender", "s", "--json",
                  "--leads", str(leads))  # fmt: skip
    rid = json.loads(started.stdout)["interaction_id"]
    assert cli("resume", rid, "--feedback", "COOs").returncode == 0
    out = tmp_path / "campaign.csv"
    args = ["export", rid, "--leads", str(leads), "--out", str(out), "--for", "lemlist",
            "--disable-rule", "can-spam-address", "--disable-rule", "can-spam-opt-out"]  # fmt: skip
    done = cli(*args)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[:2] == [
        f"Wrote 2 lead(s) to {out} (csv, for lemlist).",
        f"Paste-ready template: {tmp_path / 'campaign.lemlist.txt'}",
    ]
    again = cli(*args)
    assert again.returncode == 2
    assert "already exists; add --overwrite to replace it, or choose another --out" in again.stderr
    (tmp_path / "campaign.csv").unlink()
    template_left = cli(*args)
    assert template_left.returncode == 2 and "choose another --template" in template_left.stderr
    assert not out.exists()
    unknown = cli("export", rid, "--leads", str(leads), "--out", str(out), "--for", "hubspot")
    assert unknown.returncode == 2 and "invalid choice: 'hubspot'" in unknown.stderr
    piped = cli("export", rid, "--leads", str(leads), "--out", "-", "--for", "apollo",
                "--template", str(tmp_path / "apollo.txt"), "--json")  # fmt: skip
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout.startswith("First Name,Last Name,Contact Email,")
    assert json.loads(piped.stderr)["template"] == str(tmp_path / "apollo.txt")
    assert (
        (tmp_path / "apollo.txt")
        .read_text(encoding="utf-8")
        .startswith("Apollo: how to send the exported file")
    )


async def test_the_python_api_refuses_an_unknown_tool_before_reading_anything(
    server: ScriptedOpenAIServer, db_path: Path, tmp_path: Path
) -> None:
    async with ColdMailAgent.open(db_path) as agent:
        with pytest.raises(InvalidInput, match="unknown sending tool 'smartlaed'"):
            await agent.export("0" * 32, tmp_path / "missing.csv", tmp_path / "o.csv",
                               profile="smartlaed")  # fmt: skip
        with pytest.raises(InvalidInput, match="unknown sending tool"):
            await agent.preview_export("0" * 32, tmp_path / "missing.csv", profile="")


async def test_the_template_is_never_the_run_database_or_its_key(
    server: ScriptedOpenAIServer, db_path: Path, tmp_path: Path
) -> None:
    leads = write_leads(tmp_path, "email,first_name\nana@acme.com,Ana\n")
    async with ColdMailAgent.open(db_path) as agent:
        run = await agent.start(
            Brief(product="p", offer="o", sender="s"), fields=["email", "first_name"]
        )
        await agent.resume(run.interaction_id, "COOs")
        out = tmp_path / "o.csv"
        link = tmp_path / "innocent.txt"
        link.symlink_to(db_path)
        for target, what in (
            (db_path, "the run database"),
            (Path(f"{db_path}.key"), "the signing key file"),
            (link, "the run database"),
        ):
            with pytest.raises(InvalidInput, match=what):
                await agent.export(
                    run.interaction_id,
                    leads,
                    out,
                    profile="smartlead",
                    template=target,
                    overwrite=True,
                )
            assert not out.exists()
    assert db_path.stat().st_size > 0 and not (tmp_path / "o.csv").exists()
