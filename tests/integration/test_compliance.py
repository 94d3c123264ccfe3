"""The sender's postal address and opt-out sentence: part of a brief (or the settings'
defaults), appended by code to every exported email, never written by the LLM, and checked
(CAN-SPAM) with a way to turn the rule off where it does not apply."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from bridgic_coldmail import Brief, ColdMailAgent, ConfigurationError, InvalidInput
from bridgic_coldmail.compliance import CAN_SPAM_SOURCE, MAX_FOOTER_CHARS, Footer
from bridgic_coldmail.export.lint import COMPLIANCE_RULES, Severity, lint_sequence
from bridgic_coldmail.export.writer import export_sequence
from bridgic_coldmail.models import EmailSequence, EmailStep, make_brief
from bridgic_coldmail.settings import Settings
from bridgic_coldmail.testing import ScriptedOpenAIServer

from ..conftest import Completed

ADDRESS = "Acme Inc., 1 Main St, Springfield, IL 62701"
OPT_OUT = "Not interested? Reply 'stop' and I won't write again."
SEQUENCE = EmailSequence(
    opener=EmailStep(subject="A question", body="Hi {{first_name|there}},\n\nDana", wait_days=0),
    follow_up=EmailStep(subject="Re", body="Hi again,\n\nDana", wait_days=3),
)


def leads(tmp_path: Path) -> Path:
    path = tmp_path / "leads.csv"
    path.write_text("email,first_name\nana@acme.com,Ana\nbo@beta.io,\n", encoding="utf-8")
    return path


def brief(**extra: str) -> Brief:
    return make_brief(product="Acme", offer="fewer no-shows", sender="Dana Lee", **extra)


# --- the brief and the settings --------------------------------------------------------------


def test_a_brief_carries_both_texts_stripped_and_an_invisible_one_is_none() -> None:
    given = brief(postal_address=f"  {ADDRESS}\r\n", opt_out="\u200b ")
    assert (given.postal_address, given.opt_out) == (ADDRESS, None)
    assert Brief(product="p", offer="o", sender="s").postal_address is None  # optional


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("postal_address", "{{address}}", "postal_address contains { or }, which sending tools"),
        ("opt_out", "Reply stop \x1b[2J", "opt_out contains control characters"),
        ("opt_out", "x" * (MAX_FOOTER_CHARS + 1), f"the limit is {MAX_FOOTER_CHARS}"),
    ],
)
def test_a_bad_footer_text_in_a_brief_is_refused_with_what_to_do(
    field: str, value: str, message: str
) -> None:
    with pytest.raises(InvalidInput, match="invalid brief: " + field) as caught:
        brief(**{field: value})
    assert message in str(caught.value)


def test_the_settings_give_defaults_and_refuse_bad_ones_naming_the_variable() -> None:
    settings = Settings.resolve(
        env={
            "COLDMAIL_POSTAL_ADDRESS": ADDRESS,
            "COLDMAIL_OPT_OUT": OPT_OUT,
            "COLDMAIL_DISABLED_RULES": "can-spam-opt-out, url-shortener",
        }
    )
    assert (settings.postal_address, settings.opt_out, settings.disabled_rules) == (
        ADDRESS,
        OPT_OUT,
        ("can-spam-opt-out", "url-shortener"),
    )
    with pytest.raises(ConfigurationError, match=r"COLDMAIL_OPT_OUT=.* contains \{ or \}"):
        Settings.resolve(env={"COLDMAIL_OPT_OUT": "Reply {stop}"})
    with pytest.raises(ConfigurationError, match="COLDMAIL_DISABLED_RULES=.*unknown check rule"):
        Settings.resolve(env={"COLDMAIL_DISABLED_RULES": "can-spam"})
    with pytest.raises(ConfigurationError, match="bad-placeholder cannot be turned off"):
        Settings.resolve(env={"COLDMAIL_DISABLED_RULES": "bad-placeholder"})


def test_the_briefs_own_texts_win_over_the_defaults() -> None:
    defaults = Settings.resolve(
        env={"COLDMAIL_POSTAL_ADDRESS": "Default St", "COLDMAIL_OPT_OUT": OPT_OUT}
    )
    footer = Footer.of(brief(postal_address=ADDRESS), defaults)
    assert footer == Footer(postal_address=ADDRESS, opt_out=OPT_OUT)
    assert footer.append_to("Body") == f"Body\n\n{ADDRESS}\n{OPT_OUT}"
    assert Footer().append_to("Body") == "Body"


# --- the check ------------------------------------------------------------------------------


def test_a_sequence_without_them_is_flagged_with_the_rule_and_the_ftc_source() -> None:
    issues = lint_sequence(SEQUENCE, ["first_name"], footer=Footer())
    assert [(i.code, i.step, i.part, i.severity) for i in issues] == [
        ("can-spam-address", "sequence", "footer", Severity.WARNING),
        ("can-spam-opt-out", "sequence", "footer", Severity.WARNING),
    ]
    for issue in issues:
        assert "CAN-SPAM requires" in issue.message and CAN_SPAM_SOURCE in issue.message
        assert issue.source == CAN_SPAM_SOURCE
    only_address = lint_sequence(SEQUENCE, ["first_name"], footer=Footer(opt_out=OPT_OUT))
    assert [i.code for i in only_address] == ["can-spam-address"]
    assert lint_sequence(SEQUENCE, ["first_name"], footer=Footer(ADDRESS, OPT_OUT)) == []
    off = lint_sequence(SEQUENCE, ["first_name"], footer=Footer(), disabled=COMPLIANCE_RULES)
    assert off == []


def test_the_footer_itself_is_checked_like_an_email() -> None:
    shouting = Footer(ADDRESS, "To UNSUBSCRIBE click here: bit.ly/out")
    found = {i.code for i in lint_sequence(SEQUENCE, ["first_name"], footer=shouting)}
    assert {"capitals", "spam-phrase", "url-shortener", "link-in-first-email"} <= found


def test_strict_refuses_an_export_without_them_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "campaign.csv"
    with pytest.raises(InvalidInput, match="export refused \\(strict\\): 2 lint issue") as refused:
        export_sequence(SEQUENCE, leads(tmp_path), out, strict=True, profile="smartlead")
    # It says "turn this rule off": it names the rule, as --disable-rule takes it.
    assert "where the law does not apply [can-spam-address]" in str(refused.value)
    assert "where the law does not apply [can-spam-opt-out]" in str(refused.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["leads.csv"]
    report = export_sequence(
        SEQUENCE, leads(tmp_path), out, strict=True, profile="smartlead",
        footer=Footer(ADDRESS, OPT_OUT),
    )  # fmt: skip
    assert report.rows_written == 2 and report.lint == ()


@pytest.mark.parametrize("format", ["csv", "json"])
def test_every_email_of_every_lead_ends_with_the_footer(tmp_path: Path, format: str) -> None:
    out = tmp_path / f"campaign.{format}"
    export_sequence(SEQUENCE, leads(tmp_path), out, format=format,  # type: ignore[arg-type]
                    footer=Footer(ADDRESS, OPT_OUT))  # fmt: skip
    if format == "json":
        rows = json.loads(out.read_text(encoding="utf-8"))
    else:
        with out.open(encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
    assert len(rows) == 2
    for row in rows:
        for body in (row["step1_body"], row["step2_body"]):
            assert body.endswith(f"Dana\n\n{ADDRESS}\n{OPT_OUT}")
        assert ADDRESS not in row["step1_subject"]


# --- through the agent, the LLM and the command line ----------------------------------------


async def test_the_llm_is_told_not_to_write_them_and_never_sees_them(
    server: ScriptedOpenAIServer, db_path: Path
) -> None:
    async with ColdMailAgent.open(db_path) as agent:
        run = await agent.start(brief(postal_address=ADDRESS, opt_out=OPT_OUT))
        await agent.resume(run.interaction_id, "clinic managers")
    for request in server.requests:
        system = request.body["messages"][0]["content"]
        system = system if isinstance(system, str) else json.dumps(system)
        assert "Write no postal address, unsubscribe link or opt-out line" in system
        assert ADDRESS not in json.dumps(request.body) and OPT_OUT not in json.dumps(request.body)
    assert run.brief.postal_address == ADDRESS  # kept with the run, signed like the rest


async def test_the_agent_checks_the_run_with_its_brief_or_the_defaults(
    server: ScriptedOpenAIServer, db_path: Path, tmp_path: Path
) -> None:
    async with ColdMailAgent.open(db_path) as agent:
        bare = await agent.resume((await agent.start(brief())).interaction_id, "CFOs")
        told = await agent.resume(
            (await agent.start(brief(postal_address=ADDRESS, opt_out=OPT_OUT))).interaction_id,
            "CFOs",
        )
        assert [i.code for i in await agent.lint(bare.interaction_id)] == list(COMPLIANCE_RULES)
        assert await agent.lint(told.interaction_id) == []
        assert await agent.lint(bare.interaction_id, disabled_rules=COMPLIANCE_RULES) == []
        with pytest.raises(InvalidInput, match="unknown check rule"):
            await agent.lint(bare.interaction_id, disabled_rules=["nope"])
    async with ColdMailAgent.open(db_path, disabled_rules="can-spam-address") as agent:
        assert [i.code for i in await agent.lint(bare.interaction_id)] == ["can-spam-opt-out"]
    async with ColdMailAgent.open(db_path, postal_address=ADDRESS, opt_out=OPT_OUT) as agent:
        assert await agent.lint(bare.interaction_id) == []
        report = await agent.export(bare.interaction_id, leads(tmp_path), tmp_path / "o.csv")
    with (tmp_path / "o.csv").open(encoding="utf-8", newline="") as handle:
        assert all(row["step2_body"].endswith(OPT_OUT) for row in csv.DictReader(handle))
    assert report.lint == ()


def test_the_command_line_takes_them_and_turns_rules_off(
    server: ScriptedOpenAIServer, tmp_path: Path, cli: Callable[..., Completed]
) -> None:
    refused = cli("start", "--product", "p", "--offer", "o", "--sender", "s",
                  "--postal-address", "1 {Main} St")  # fmt: skip
    assert refused.returncode == 2 and "postal_address contains { or }" in refused.stderr
    started = cli("start", "--product", "p", "--offer", "o", "--sender", "s", "--json",
                  "--opt-out", OPT_OUT)  # fmt: skip
    rid = json.loads(started.stdout)["interaction_id"]
    assert cli("resume", rid, "--feedback", "CFOs").returncode == 0
    out = tmp_path / "campaign.csv"
    strict = ["export", rid, "--leads", str(leads(tmp_path)), "--out", str(out), "--strict"]
    missing = cli(*strict)
    assert missing.returncode == 2 and "no postal address is appended" in missing.stderr
    assert not out.exists()
    unknown = cli(*strict, "--disable-rule", "can-spam-adress")
    assert unknown.returncode == 2 and "unknown check rule(s) 'can-spam-adress'" in unknown.stderr
    done = cli(*strict, "--disable-rule", "can-spam-address", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["lint"] == []
    with out.open(encoding="utf-8", newline="") as handle:
        assert all(row["step1_body"].endswith(OPT_OUT) for row in csv.DictReader(handle))
