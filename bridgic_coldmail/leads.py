"""Kept import path: ``bridgic_coldmail.leads`` as release 0.5 documented it
(docs/how-to/export.md). The code is in ``bridgic_coldmail.export.leads``."""

from __future__ import annotations

from .export.leads import (
    EMAIL_HEADERS,
    Lead,
    LeadHeader,
    LeadReader,
    RowProblem,
    is_valid_email,
    open_leads,
    read_header,
)

__all__ = [
    "EMAIL_HEADERS",
    "Lead",
    "LeadHeader",
    "LeadReader",
    "RowProblem",
    "is_valid_email",
    "open_leads",
    "read_header",
]
