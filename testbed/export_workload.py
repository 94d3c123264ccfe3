"""The export workload the tests and the benchmarks share: two sequences with merge fields
and fallbacks (an A/B pair), the compliance footer, and a lead list of any length."""

from __future__ import annotations

from pathlib import Path

from bridgic_coldmail.compliance import Footer
from bridgic_coldmail.models import EmailSequence, EmailStep

HEADER = "email,First Name,Last Name,Company,Website,LinkedIn,Job Title,notes"
FOOTER = Footer(
    postal_address="Ledgerly Inc., 1 Main St, Springfield, IL 62701",
    opt_out="Not the right person? Reply 'stop' and I won't write again.",
)


def sequence(subject: str, wait_days: int) -> EmailSequence:
    """A sequence with the merge fields a real one has, fallbacks included."""
    return EmailSequence(
        opener=EmailStep(
            subject=subject,
            body=(
                "Hi {{first_name|there}},\n\nHow many hours a month does {{company|your team}} "
                "spend reconciling bank feeds in Excel? As {{job_title|a controller}}, you "
                "would know.\n\nLedgerly reconciles invoices against bank feeds automatically."
                "\n\nWould a 15-minute call next week be useful?\n\nSam Roy\nCEO of Ledgerly"
            ),
            wait_days=0,
        ),
        follow_up=EmailStep(
            subject="Re",
            body=(
                "Hi {{first_name|there}},\n\nA short follow-up: teams like {{company|yours}} "
                "save two days a month. Is this worth a conversation?\n\nSam"
            ),
            wait_days=wait_days,
        ),
    )


A = sequence("Bank feeds at {{company|your company}}", 3)
B = sequence("Closing the books at {{company|your company}}", 3)


def make_leads(path: Path, rows: int) -> None:
    """A lead list of ``rows`` leads, one in ten without a first name (the fallback)."""
    note = "n" * 120
    with path.open("w", encoding="utf-8") as handle:
        handle.write(HEADER + "\n")
        for i in range(rows):
            first = "" if i % 10 == 0 else f"Name{i}"
            handle.write(
                f"lead{i}@example{i % 97}.com,{first},Last{i},Company {i},"
                f"https://www.company{i}.com/about,https://linkedin.com/in/lead{i},"
                f"Controller,{note}\n"
            )
