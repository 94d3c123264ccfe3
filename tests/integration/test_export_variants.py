"""A/B export: every lead gets one approved variant by a hash of its address — the same on
every re-export — in a ``variant`` column, with that variant's emails; a variant that fails
the check refuses the export; the agent takes other completed runs as the variants."""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bridgic_coldmail import Brief, ColdMailAgent, InvalidInput, RunConflict, RunNotFound
from bridgic_coldmail.compliance import Footer
from bridgic_coldmail.export.lint import COMPLIANCE_RULES
from bridgic_coldmail.export.writer import (
    MAX_VARIANTS,
    Variant,
    as_variants,
    export_sequence,
    preview_export,
    variant_index,
)
from bridgic_coldmail.models import EmailSequence, EmailStep
from bridgic_coldmail.testing import ScriptedOpenAIServer

from ..conftest import PROCESS_TIMEOUT, Completed

FOOTER = Footer("Acme Inc., 1 Main St, Springfield, IL 62701", "Reply 'stop' to opt out.")


def sequence(
    subject: str, wait_days: int = 3, body: str = "Hi {{first_name|there}},"
) -> EmailSequence:
    return EmailSequence(
        opener=EmailStep(subject=subject, body=body, wait_days=0),
        follow_up=EmailStep(subject="Re", body="Hi again.", wait_days=wait_days),
    )


A = Variant("A", sequence("Subject A"), "a" * 32)
B = Variant("B", sequence("Subject B"), "b" * 32)


def write_leads(path: Path, emails: list[str]) -> Path:
    path.write_text("email,first_name\n" + "".join(f"{e},N\n" for e in emails), encoding="utf-8")
    return path


def read(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def export(tmp_path: Path, leads: Path, variants: Any, name: str = "o.csv", **kw: Any) -> Any:
    out = tmp_path / name
    report = export_sequence(variants, leads, out, footer=FOOTER, **kw)
    return report, read(out)


EMAILS = [f"lead{i}@example.com" for i in range(10_000)]


def test_the_split_is_balanced_and_each_row_has_its_variants_emails(tmp_path: Path) -> None:
    leads = write_leads(tmp_path / "leads.csv", EMAILS)
    report, rows = export(tmp_path, leads, [A, B], profile="smartlead")
    counts = Counter(row["variant"] for row in rows)
    assert set(counts) == {"A", "B"} and 4800 <= counts["A"] <= 5200  # 4 standard deviations
    assert report.variants == (("A", counts["A"]), ("B", counts["B"]))
    assert all(row["step1_subject"] == f"Subject {row['variant']}" for row in rows)
    assert report.columns[-1] == "variant"
    three = [A, B, Variant("C", sequence("Subject C"), "c" * 32)]
    _, rows = export(tmp_path, leads, three, name="three.csv")
    assert all(3000 <= n <= 3700 for n in Counter(r["variant"] for r in rows).values())


def test_a_re_export_gives_the_same_split_whatever_the_order_or_spelling(tmp_path: Path) -> None:
    sample = EMAILS[:2000]
    first = {r["email"]: r["variant"] for r in export(
        tmp_path, write_leads(tmp_path / "a.csv", sample), [A, B], "one.csv")[1]}  # fmt: skip
    shuffled = sample[:]
    random.Random(7).shuffle(shuffled)
    spelled = [e.upper() if i % 2 else f"  {e} " for i, e in enumerate(shuffled)]
    again = export(tmp_path, write_leads(tmp_path / "b.csv", spelled), [A, B], "two.csv")[1]
    assert {r["email"].lower(): r["variant"] for r in again} == first
    assert variant_index(" Lead1@Example.com", 2, "a" * 32) == variant_index(
        "lead1@example.com", 2, "a" * 32
    )


def test_the_split_is_the_same_in_another_process() -> None:
    """Not Python's string hash, which is salted per process (PYTHONHASHSEED)."""
    code = (
        "from bridgic_coldmail.export.writer import variant_index\n"
        f"print([variant_index(e, 3, 'a' * 32) for e in {EMAILS[:50]!r}])"
    )
    runs = [
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            timeout=PROCESS_TIMEOUT,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("1", "2")
    ]
    here = str([variant_index(e, 3, "a" * 32) for e in EMAILS[:50]])
    assert runs == [here + "\n", here + "\n"]


def test_another_test_splits_the_leads_differently(tmp_path: Path) -> None:
    """The split is keyed by variant A's run, so each A/B test draws its own groups."""
    leads = write_leads(tmp_path / "leads.csv", EMAILS[:2000])
    one = [r["variant"] for r in export(tmp_path, leads, [A, B], "1.csv")[1]]
    other_a = Variant("A", A.sequence, "d" * 32)
    two = [r["variant"] for r in export(tmp_path, leads, [other_a, B], "2.csv")[1]]
    assert 800 <= sum(x != y for x, y in zip(one, two, strict=True)) <= 1200


def test_one_sequence_has_no_variant_column(tmp_path: Path) -> None:
    report, rows = export(tmp_path, write_leads(tmp_path / "l.csv", EMAILS[:3]), A.sequence)
    assert ("variant" not in report.columns, report.variants) == (True, ())
    assert [r["step1_subject"] for r in rows] == ["Subject A"] * 3


def test_a_variant_that_cannot_be_rendered_refuses_the_export_naming_it(tmp_path: Path) -> None:
    leads = write_leads(tmp_path / "leads.csv", EMAILS[:10])
    broken = Variant("B", sequence("About {{company}}"), "b" * 32)
    with pytest.raises(InvalidInput, match=r"variant B opener subject: \{\{company\}\} is not"):
        export(tmp_path, leads, [A, broken])
    assert not (tmp_path / "o.csv").exists()
    preview = preview_export([A, broken], leads, footer=FOOTER)
    assert [(i.code, i.variant) for i in preview.lint] == [("unknown-field", "B")]


def test_a_variant_that_fails_a_check_refuses_a_strict_export(tmp_path: Path) -> None:
    leads = write_leads(tmp_path / "leads.csv", EMAILS[:10])
    shouting = Variant("B", sequence("URGENT: read this"), "b" * 32)
    report, _ = export(tmp_path, leads, [A, shouting])
    assert {(i.code, i.variant) for i in report.lint} == {("capitals", "B"), ("spam-phrase", "B")}
    with pytest.raises(InvalidInput, match="export refused \\(strict\\): 2 lint issue\\(s\\): "
                       "variant B opener subject"):  # fmt: skip
        export(tmp_path, leads, [A, shouting], "strict.csv", strict=True)
    assert not (tmp_path / "strict.csv").exists()


def test_variants_with_different_delays_are_flagged_and_each_row_has_its_own(
    tmp_path: Path,
) -> None:
    leads = write_leads(tmp_path / "leads.csv", EMAILS[:200])
    later = Variant("B", sequence("Subject B", wait_days=6), "b" * 32)
    report, rows = export(tmp_path, leads, [A, later])
    assert [i.code for i in report.lint] == ["variant-delays-differ"]
    assert {(r["variant"], r["step2_delay_days"]) for r in rows} == {("A", "3"), ("B", "6")}


def test_each_variant_keeps_its_own_footer(tmp_path: Path) -> None:
    leads = write_leads(tmp_path / "leads.csv", EMAILS[:50])
    other = Footer("Beta LLC, 9 Elm St, Austin, TX 78701", "Reply 'no' and I'll stop.")
    _, rows = export(tmp_path, leads, [A, Variant("B", B.sequence, "b" * 32, other)])
    for row in rows:
        expected = FOOTER if row["variant"] == "A" else other
        assert row["step2_body"].endswith(expected.text)


def test_a_lead_column_named_variant_is_refused_only_for_an_a_b_export(tmp_path: Path) -> None:
    leads = tmp_path / "leads.csv"
    leads.write_text("email,Variant\nana@acme.com,x\n", encoding="utf-8")
    plain = sequence("Hello", body="Hello,")
    assert export(tmp_path, leads, plain)[0].rows_written == 1
    with pytest.raises(InvalidInput, match="'Variant'.*which the export adds"):
        export(tmp_path, leads, [Variant("A", plain), Variant("B", plain)], "ab.csv")
    with pytest.raises(InvalidInput, match="'Variant' would be named 'variant'"):
        export(tmp_path, leads, [Variant("A", plain), Variant("B", plain)], "ab.csv",
               profile="instantly")  # fmt: skip


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ([], "1 to 26 variants, not 0"),
        ([A] * (MAX_VARIANTS + 1), "1 to 26 variants, not 27"),
        ([A, Variant("a", B.sequence)], "'a' is too long or used twice"),
        ([A, Variant("B-1", B.sequence)], "must be ASCII letters and digits"),
        ([A, B.sequence], "each variant must be a Variant"),
        ("AB", "one EmailSequence, or a list of Variant"),
    ],
)
def test_bad_variants_are_refused(given: Any, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        as_variants(given)


# --- through the agent and the command line --------------------------------------------------


async def _completed_runs(agent: ColdMailAgent, count: int) -> list[str]:
    ids = []
    for number in range(count):
        brief = Brief(product=f"Acme {number}", offer="fewer no-shows", sender="Dana",
                      postal_address=FOOTER.postal_address, opt_out=FOOTER.opt_out)  # fmt: skip
        run = await agent.start(brief, fields=["email", "first_name"])
        await agent.resume(run.interaction_id, f"clinic managers, angle {number}")
        ids.append(run.interaction_id)
    return ids


async def test_the_agent_exports_completed_runs_as_variants(
    server: ScriptedOpenAIServer, db_path: Path, tmp_path: Path
) -> None:
    leads = write_leads(tmp_path / "leads.csv", EMAILS[:400])
    async with ColdMailAgent.open(db_path) as agent:
        first, second = await _completed_runs(agent, 2)
        waiting = await agent.start(Brief(product="p", offer="o", sender="s"))
        report = await agent.export(first, leads, tmp_path / "ab.csv", variants=[second],
                                    profile="instantly")  # fmt: skip
        runs = {"A": await agent.get(first), "B": await agent.get(second)}
        with pytest.raises(RunConflict, match="has no final sequence yet"):
            await agent.export(first, leads, tmp_path / "x.csv", variants=[waiting.interaction_id])
        with pytest.raises(InvalidInput, match="named twice among the variants"):
            await agent.export(first, leads, tmp_path / "x.csv", variants=[second, second.upper()])
        with pytest.raises(InvalidInput, match="a list of interaction ids, not one string"):
            await agent.export(first, leads, tmp_path / "x.csv", variants=second)  # type: ignore[arg-type]
        with pytest.raises(RunNotFound):
            await agent.export(first, leads, tmp_path / "x.csv", variants=["f" * 32])
        with pytest.raises(InvalidInput, match="at most 26 variants"):
            await agent.export(
                first, leads, tmp_path / "x.csv", variants=[f"{i:032x}" for i in range(26)]
            )
    assert not (tmp_path / "x.csv").exists()
    assert [label for label, _ in report.variants] == ["A", "B"]
    assert sum(count for _, count in report.variants) == 400 and report.lint == ()
    for row in read(tmp_path / "ab.csv"):
        final = runs[row["variant"]].final
        assert final is not None
        assert row["step1_subject"] == final.opener.subject
    template = (tmp_path / "ab.instantly.txt").read_text(encoding="utf-8")
    assert f"Variant A (run {first})" in template and f"Variant B (run {second})" in template


def test_the_command_line_takes_variants(
    server: ScriptedOpenAIServer, tmp_path: Path, cli: Callable[..., Completed]
) -> None:
    leads = write_leads(tmp_path / "leads.csv", EMAILS[:100])
    ids = []
    for angle in ("one", "two"):
        started = cli("start", "--product", "p", "--offer", "o", "--sender", "s", "--json",
                      "--leads", str(leads))  # fmt: skip
        ids.append(json.loads(started.stdout)["interaction_id"])
        assert cli("resume", ids[-1], "--feedback", f"angle {angle}").returncode == 0
    out = tmp_path / "ab.csv"
    done = cli("export", ids[0], "--variant", ids[1], "--leads", str(leads), "--out", str(out),
               "--for", "smartlead", "--disable-rule", ",".join(COMPLIANCE_RULES))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "A/B variants by a hash of each address (the variant column): A: " in done.stdout
    assert f"Paste-ready template: {tmp_path / 'ab.smartlead.txt'}" in done.stdout
    assert {row["variant"] for row in read(out)} == {"A", "B"}
    bad = cli("export", ids[0], "--variant", "nope", "--leads", str(leads), "--out",
              str(tmp_path / "x.csv"))  # fmt: skip
    assert bad.returncode == 2 and "'nope' is not an interaction id" in bad.stderr
