"""The sending tools an export is shaped for (``--for``), and where every rule about them is
written.

A :class:`Profile` says, for one tool, which lead columns its importer knows and under which
names, how the rendered emails are named as custom variables, how its templates write a
variable, its delay unit and convention, how it threads a follow-up, how it sends plain text,
its unsubscribe placeholder, and its row limit. Every one of those is a :class:`Rule` with the
page it was read on and how sure that reading is (``high``: the vendor's own page says it;
``medium``: vendor-written but indirect; ``low``: third parties only; ``unconfirmed``: nothing
citable was found). Nothing here was checked in a live account.

Design decisions:

* **Unconfirmed means the safe choice, said out loud.** Where a rule is unconfirmed the
  profile picks what cannot go wrong silently — the tool's own documented field names as
  headers (a person mapping by hand sees a one-to-one match), lower-case ``snake_case``
  custom-variable names (every vendor example uses them; lemlist's defaults are camelCase,
  so its profile uses letters and digits only), a delay written in words as well as numbers —
  and the template next to the file lists it under "check", as docs/how-to/export.md does.
* **The rendered emails travel with each lead.** Each row carries its own subject and bodies
  (``step1_subject``, ``step1_body``, ``step2_body`` or the tool's spelling), already filled in
  with our fallbacks applied; the campaign's steps are just those variables. So one campaign
  sends every lead its own A/B variant, and no fallback syntax of the tool is needed.
* **Per-step A/B variants are not importable.** Smartlead's ``seq_variants`` and Instantly's
  ``variants`` belong to the campaign, which a CSV does not create: an A/B export assigns each
  lead a variant (a ``variant`` column) and the template gives each variant's text in the
  tool's own variables, for its A/B editor.
* **Plain text everywhere.** The bodies are plain text with line breaks; each template says
  which setting makes the tool send plain text, where one is documented.

``generic`` is the release 0.5 CSV, unchanged: the lead's columns as they are, then
``step1_subject``, ``step1_body``, ``step2_subject`` (blank), ``step2_body``,
``step2_delay_days``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from ..compliance import Footer
from ..errors import InvalidInput
from ..merge import find_placeholders
from ..models import EmailSequence
from ..text import preview_list
from .leads import EMAIL_HEADERS, LeadHeader

Confidence = Literal["high", "medium", "low", "unconfirmed"]

GENERIC_COLUMNS = ("step1_subject", "step1_body", "step2_subject", "step2_body", "step2_delay_days")
"""The columns the generic export adds after the lead's own, in this order."""
VARIANT_COLUMN = "variant"
"""The column that names each lead's A/B variant (A, B, …) in an export of several."""


@dataclass(frozen=True)
class Rule:
    """One thing a sending tool does, the page it is written on, and how sure we are."""

    says: str
    source: str | None
    confidence: Confidence


@dataclass(frozen=True)
class LeadField:
    """One of a tool's own lead fields: which of our columns fill it, its header in the
    file, and how the tool's templates name it (``confirmed``: a vendor page shows it)."""

    concept: str
    header: str
    variable: str
    confirmed: bool


@dataclass(frozen=True)
class Delay:
    """How a tool schedules a step: the field, its unit, and whether a step's number is the
    wait *before* it (Smartlead) or *after* it (Instantly); None when undocumented."""

    field: str
    unit: str
    wait_is: Literal["before", "after"] | None
    rule: Rule


CONCEPTS: dict[str, tuple[str, ...]] = {
    "email": EMAIL_HEADERS + ("contact_email",),
    "first_name": ("first_name", "firstname", "first", "given_name"),
    "last_name": ("last_name", "lastname", "surname", "family_name"),
    "company": ("company", "company_name", "companyname", "organization", "organisation"),
    "company_domain": ("company_domain", "companydomain", "domain"),
    "website": ("website", "company_website", "web_site", "site"),
    "company_url": ("company_url",),
    "phone": ("phone", "phone_number", "phonenumber", "mobile", "telephone"),
    "linkedin": (
        "linkedin",
        "linkedin_url",
        "linkedinurl",
        "linkedin_profile",
        "contact_linkedin_url",
    ),
    "location": ("location",),
    "personalization": ("personalization", "personalisation"),
    "icebreaker": ("icebreaker", "ice_breaker"),
    "picture": ("picture", "photo", "picture_url"),
}
"""Our field names (``merge.field_name`` of a header) that mean each kind of lead data."""
CONCEPT_OF = {name: concept for concept, names in CONCEPTS.items() for name in names}

SMARTLEAD_ADD_LEADS = "https://api.smartlead.ai/api-reference/campaigns/add-leads"
SMARTLEAD_SEQUENCES = "https://api.smartlead.ai/api-reference/campaigns/update-sequences"
SMARTLEAD_SETTINGS = "https://api.smartlead.ai/api-reference/campaigns/update-settings"
SMARTLEAD_GUIDE = "https://api.smartlead.ai/guides/lead-management"
SMARTLEAD_CONCEPT = "https://api.smartlead.ai/core/sequences"
SMARTLEAD_UNSUBSCRIBE = "https://helpcenter.smartlead.ai/en/articles/1-how-does-unsubscribing-work"
INSTANTLY_LEADS = (
    "https://developer.instantly.ai/api-reference/lead/add-leads-in-bulk-to-a-campaign-or-list"
)
INSTANTLY_CAMPAIGN = "https://developer.instantly.ai/api/v2/campaign"
INSTANTLY_SUBSEQUENCE = (
    "https://developer.instantly.ai/api-reference/campaignsubsequence/pause-a-subsequence"
)
INSTANTLY_WRITER = (
    "https://github.com/Instantly-ai/instantly-skills/blob/main/skills/instantly-gtm/"
    "modules/sequence-writer/SKILL.md"
)
LEMLIST_VARIABLES = "https://developer.lemlist.com/api-reference/endpoints/leads/add-lead-variables"
LEMLIST_STEPS = (
    "https://developer.lemlist.com/api-reference/endpoints/sequences/add-step-to-sequence"
)
LEMLIST_UNSUBSCRIBES = (
    "https://intercom.help/lemlist-/en/articles/4514502-use-the-unsubscribes-section"
)
APOLLO_IMPORT = (
    "https://knowledge.apollo.io/hc/en-us/articles/4409161532045-Import-a-CSV-of-Contacts"
)
APOLLO_VARIABLES = (
    "https://knowledge.apollo.io/hc/en-us/articles/4409735256845-Use-Advanced-Dynamic-Variables"
)
APOLLO_FIELDS = (
    "https://knowledge.apollo.io/hc/en-us/articles/4412499090189-Create-Custom-User-Fields"
)

NameStyle = Literal["keep", "snake", "camel"]


@dataclass(frozen=True)
class Profile:
    """Everything an export needs to know about one sending tool (see the module docstring)."""

    name: str
    title: str
    lead_fields: tuple[LeadField, ...]
    """The tool's own lead fields, in the order the file gives them; empty for generic."""
    lead_fields_rule: Rule
    step_columns: tuple[str, str, str]
    """The custom variables for the opener's subject and body and the follow-up's body."""
    custom_names: NameStyle
    """How the lead's other columns are named: as in the list, snake_case, or camelCase."""
    custom_rule: Rule
    variable_rule: Rule
    custom_variables_confirmed: bool
    """Whether a vendor page shows a custom variable written ``{{its_name}}``."""
    delay: Delay
    threading: Rule
    blank_subject_threads: bool
    """Confirmed that an empty follow-up subject sends it as a reply in the thread."""
    plain_text: Rule
    unsubscribe_placeholder: str | None
    unsubscribe: Rule
    variants: Rule
    row_limit: int | None = None
    row_limit_rule: Rule | None = None
    bare_domain_website: bool = False
    """Apollo: a website is the bare domain (no scheme, no ``www.``, no path)."""
    empty_fallback: str | None = None
    """How the tool writes "this field, or nothing" (``{name}`` is the variable's name)."""
    fallback_rule: Rule | None = None
    import_steps: tuple[tuple[str, Rule | None], ...] = ()
    unconfirmed: tuple[str, ...] = field(default=())

    @property
    def is_generic(self) -> bool:
        return not self.lead_fields

    def variable(self, name: str) -> str:
        """``name`` written as a variable in this tool's templates."""
        return "{{" + name + "}}"

    def delays(self, sequence: EmailSequence) -> tuple[int, int]:
        """The number each step's delay field takes, in this tool's convention."""
        gap = sequence.follow_up.wait_days
        return (gap, 0) if self.delay.wait_is == "after" else (0, gap)

    def plan(self, header: LeadHeader, *, variants: bool = False) -> ColumnPlan:
        """The file's columns for a lead list with ``header``.

        Raises:
            InvalidInput: two columns would fill the same field of the tool, or a column's
                name collides with a column the export adds; the message names them.
        """
        return ColumnPlan.build(self, header, variants=variants)


Cell = str | int
"""A cell of a row: text, or (generic JSON) the follow-up's delay as a number."""


@dataclass(frozen=True)
class ColumnPlan:
    """Which lead cells go where, under which headers, then the step columns."""

    profile: Profile
    columns: tuple[str, ...]
    lead_order: tuple[int, ...]
    """Index of the lead cell behind each leading column."""
    website_at: int | None
    """Position (in the output) of a column whose value is cut to the bare domain."""
    header_of: dict[str, str]
    """Our field name → its header in the file (for the template's variables)."""
    standard: frozenset[str]
    """Our field names that fill one of the tool's own fields."""
    variants: bool

    @classmethod
    def build(cls, profile: Profile, header: LeadHeader, *, variants: bool) -> ColumnPlan:
        if profile.is_generic:
            steps: tuple[str, ...] = GENERIC_COLUMNS
            order = tuple(range(len(header.columns)))
            lead_columns = list(header.columns)
            header_of = dict(zip(header.fields, header.fields, strict=True))
            standard: set[str] = set()
            website_at = None
            _refuse_reserved(header.columns, header.fields, steps, variants)
        else:
            steps = profile.step_columns
            order, lead_columns, header_of, standard, website_at = _map_columns(profile, header)
        columns = (*lead_columns, *steps, *((VARIANT_COLUMN,) if variants else ()))
        _refuse_collisions(profile, header, order, columns, len(lead_columns))
        return cls(profile, columns, order, website_at, header_of, frozenset(standard), variants)

    def row(
        self,
        cells: tuple[str, ...],
        rendered: tuple[str, str, str],
        delay: int,
        variant: str | None,
    ) -> list[Cell]:
        """One output row: the lead's cells in order, then the steps (and the variant)."""
        values: list[Cell] = [cells[i] for i in self.lead_order]
        if self.website_at is not None:
            values[self.website_at] = bare_domain(str(values[self.website_at]))
        subject, body, follow_up = rendered
        if self.profile.is_generic:
            values += [subject, body, "", follow_up, delay]
        else:
            values += [subject, body, follow_up]
        if self.variants:
            values.append(variant or "")
        return values


def _map_columns(
    profile: Profile, header: LeadHeader
) -> tuple[tuple[int, ...], list[str], dict[str, str], set[str], int | None]:
    by_concept = {f.concept: f for f in profile.lead_fields}
    filled: dict[str, int] = {}
    custom: list[int] = []
    for index, name in enumerate(header.fields):
        concept = "email" if index == header.email_index else CONCEPT_OF.get(name)
        if concept is None or concept not in by_concept:
            custom.append(index)
            continue
        if concept in filled:
            first = header.columns[filled[concept]]
            raise InvalidInput(
                f"the lead list's columns {first!r} and {header.columns[index]!r} both fill "
                f"{profile.title}'s {by_concept[concept].header!r}; rename or delete one of them"
            )
        filled[concept] = index
    order: list[int] = []
    columns: list[str] = []
    header_of: dict[str, str] = {}
    standard: set[str] = set()
    website_at = None
    for lead_field in profile.lead_fields:
        index = filled.get(lead_field.concept)  # type: ignore[assignment]
        if index is None:
            continue
        if profile.bare_domain_website and lead_field.concept == "website":
            website_at = len(columns)
        order.append(index)
        columns.append(lead_field.header)
        header_of[header.fields[index]] = lead_field.header
        standard.add(header.fields[index])
    for index in custom:
        name = custom_name(header.fields[index], profile.custom_names, header.columns[index])
        order.append(index)
        columns.append(name)
        header_of[header.fields[index]] = name
    return tuple(order), columns, header_of, standard, website_at


def _refuse_reserved(
    columns: Sequence[str], fields: Sequence[str], steps: Sequence[str], variants: bool
) -> None:
    added = (*steps, *((VARIANT_COLUMN,) if variants else ()))
    clashes = [columns[i] for i, name in enumerate(fields) if name in added]
    if clashes:
        raise InvalidInput(
            f"the lead list already has the column(s) {preview_list(clashes)}, "
            f"which the export adds ({', '.join(added)}); rename or delete them"
        )


def _refuse_collisions(
    profile: Profile,
    header: LeadHeader,
    order: Sequence[int],
    columns: Sequence[str],
    lead_count: int,
) -> None:
    """Two output columns whose names differ only in case (or not at all) would be one
    variable in a tool: the lead's own column is named as the one to rename."""
    seen: dict[str, int] = {}
    for position, name in enumerate(columns):
        key = name.casefold()
        if key in seen:
            culprit = position if position < lead_count else seen[key]
            column = header.columns[order[culprit]]
            raise InvalidInput(
                f"the lead list's column {column!r} would be named {name!r} for "
                f"{profile.title}, which the file already has; rename or delete the column"
            )
        seen[key] = position


def custom_name(field_name: str, style: NameStyle, column: str) -> str:
    """The header a lead's own column gets as a custom variable."""
    if style == "keep":
        return column
    if style == "snake":
        return field_name
    head, *rest = field_name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)


def bare_domain(value: str) -> str:
    """``https://www.acme.com/about`` → ``acme.com`` (Apollo wants the bare domain)."""
    text = _SCHEME.sub("", value.strip())
    text = re.split(r"[/?#]", text, maxsplit=1)[0]
    text = text.rsplit("@", 1)[-1]
    text = re.sub(r":\d+$", "", text)
    if text.lower().startswith("www."):
        text = text[4:]
    return text.lower()


# --------------------------------------------------------------------------- the tools

_GENERIC_RULE = Rule("the lead's own columns, unchanged, then the step columns", None, "high")

GENERIC = Profile(
    name="generic",
    title="a sending tool",
    lead_fields=(),
    lead_fields_rule=_GENERIC_RULE,
    step_columns=("step1_subject", "step1_body", "step2_body"),
    custom_names="keep",
    custom_rule=_GENERIC_RULE,
    variable_rule=Rule("{{step1_subject}}, … as most tools write a custom variable", None, "low"),
    custom_variables_confirmed=False,
    delay=Delay(
        "step2_delay_days",
        "days",
        "before",
        Rule("days between the opener and the follow-up", None, "high"),
    ),
    threading=Rule("a blank step-2 subject: most tools send it as a reply", None, "low"),
    blank_subject_threads=False,
    plain_text=Rule("the bodies are plain text with line breaks", None, "high"),
    unsubscribe_placeholder=None,
    unsubscribe=Rule("no tool placeholder: the footer in each body is the opt-out", None, "high"),
    variants=Rule("a variant column; one campaign sends each lead its own text", None, "high"),
    import_steps=(
        (
            "import the file as the campaign's leads, keeping every column: the step "
            "columns become custom variables",
            None,
        ),
    ),
)

SMARTLEAD = Profile(
    name="smartlead",
    title="Smartlead",
    lead_fields=(
        LeadField("email", "email", "email", True),
        LeadField("first_name", "first_name", "first_name", True),
        LeadField("last_name", "last_name", "last_name", True),
        LeadField("company", "company_name", "company_name", True),
        LeadField("phone", "phone_number", "phone_number", False),
        LeadField("website", "website", "website", True),
        LeadField("location", "location", "location", True),
        LeadField("linkedin", "linkedin_profile", "linkedin_profile", True),
        LeadField("company_url", "company_url", "company_url", False),
    ),
    lead_fields_rule=Rule(
        "a lead's fields are email (required), first_name, last_name, company_name, "
        "phone_number, website, location, linkedin_profile, company_url, and custom_fields "
        "(at most 200)",
        SMARTLEAD_ADD_LEADS,
        "high",
    ),
    step_columns=("step1_subject", "step1_body", "step2_body"),
    custom_names="snake",
    custom_rule=Rule(
        "custom fields are key/value pairs; every example key is lower-case snake_case "
        "(job_title, company_size); naming rules are not documented",
        SMARTLEAD_ADD_LEADS,
        "unconfirmed",
    ),
    variable_rule=Rule(
        "templates use {{first_name}}, {{last_name}}, {{company_name}}, {{website}}, "
        "{{location}}, {{linkedin_profile}} and any custom field as {{field_name}}",
        SMARTLEAD_SEQUENCES,
        "high",
    ),
    custom_variables_confirmed=True,
    delay=Delay(
        "delay_in_days",
        "days",
        "before",
        Rule(
            "seq_delay_details.delay_in_days: days to wait before sending the step (0–365)",
            SMARTLEAD_SEQUENCES,
            "high",
        ),
    ),  # fmt: skip
    threading=Rule(
        'the subject is optional for follow-ups: empty, the step goes out as "Re:" on the '
        "previous email",
        SMARTLEAD_SEQUENCES,
        "high",
    ),
    blank_subject_threads=True,
    plain_text=Rule(
        "campaign settings send_as_plain_text (send emails as plain text) and "
        "force_plain_text (convert all emails to plain text)",
        SMARTLEAD_SETTINGS,
        "high",
    ),
    unsubscribe_placeholder="%unsubscribe-text%",
    unsubscribe=Rule(
        "%unsubscribe-text% in the copy puts the unsubscribe message there; it is not shown in "
        "test emails, and 'Optimize Email Delivery' (plain text) removes the link",
        SMARTLEAD_UNSUBSCRIBE,
        "high",
    ),
    variants=Rule(
        "A/B variants (seq_variants) belong to the campaign's sequence, which a CSV import "
        "does not create",
        SMARTLEAD_CONCEPT,
        "medium",
    ),
    import_steps=(
        (
            "campaign › Import leads › upload the file; map email to Email and keep "
            "step1_subject, step1_body and step2_body as custom fields",
            None,
        ),
    ),
    unconfirmed=(
        "which headers Smartlead's CSV upload maps by itself, its size and row limits, and "
        "whether it accepts a UTF-8 file without a byte-order mark",
        "the naming rules for custom fields (we use lower-case snake_case, as every example)",
        "{{phone_number}} and {{company_url}} as template variables",
        "Smartlead's fallback syntax: a lead field without a value is sent empty in the "
        "texts in the tool's own variables above (the step columns have our fallbacks applied)",
        "whether line breaks in a custom field survive into an HTML body: send a test",
    ),
)

INSTANTLY = Profile(
    name="instantly",
    title="Instantly",
    lead_fields=(
        LeadField("email", "email", "email", True),
        LeadField("first_name", "first_name", "firstName", True),
        LeadField("last_name", "last_name", "lastName", False),
        LeadField("company", "company_name", "companyName", False),
        LeadField("phone", "phone", "phone", False),
        LeadField("website", "website", "website", False),
        LeadField("personalization", "personalization", "personalization", False),
    ),
    lead_fields_rule=Rule(
        "a lead is email, first_name, last_name, company_name, phone, website, "
        "personalization and a custom_variables object",
        INSTANTLY_LEADS,
        "high",
    ),
    step_columns=("step1_subject", "step1_body", "step2_body"),
    custom_names="snake",
    custom_rule=Rule(
        "custom_variables is an object of name → value; the only example key is snake_case "
        "(past_customer); naming rules are not documented",
        INSTANTLY_LEADS,
        "unconfirmed",
    ),
    variable_rule=Rule(
        "templates write lead variables in camelCase ({{firstName}} in Instantly's API "
        "example; {{lastName}}, {{companyName}}, {{personalization}} in its own writer); an "
        "unknown variable is sent as written",
        INSTANTLY_WRITER,
        "medium",
    ),
    custom_variables_confirmed=False,
    delay=Delay(
        "delay",
        "days",
        "after",
        Rule(
            "delay is the wait AFTER this email before the next one, with delay_unit "
            '"days" (or "hours", "minutes"); the last step\'s delay is not used',
            INSTANTLY_WRITER,
            "medium",
        ),
    ),  # fmt: skip
    threading=Rule(
        'an empty subject on a follow-up threads it as a reply to email 1 ("verify against '
        'the current docs")',
        INSTANTLY_WRITER,
        "medium",
    ),
    blank_subject_threads=True,
    plain_text=Rule(
        "campaign fields text_only and first_email_text_only",
        INSTANTLY_CAMPAIGN,
        "high",
    ),
    unsubscribe_placeholder=None,
    unsubscribe=Rule(
        "insert_unsubscribe_header adds an unsubscribe header; an in-body unsubscribe "
        "variable is not documented",
        INSTANTLY_CAMPAIGN,
        "high",
    ),
    variants=Rule(
        "A/B variants are a step's variants[] (disable one with v_disabled), in the "
        "campaign, not in a lead import",
        INSTANTLY_CAMPAIGN,
        "high",
    ),
    import_steps=(
        (
            "campaign › Leads › Add leads › upload CSV; map email, and import step1_subject, "
            "step1_body and step2_body as custom variables",
            None,
        ),
    ),
    unconfirmed=(
        "which headers Instantly's CSV upload maps by itself, and its limits",
        "the naming rules for custom variables, and that {{step1_body}} names the custom "
        "variable step1_body (we use lower-case snake_case, as Instantly's example)",
        "{{lastName}}, {{companyName}}, {{phone}}, {{website}} as template variables",
        "Instantly's fallback syntax: a lead field without a value is sent empty (or as "
        "written) in the texts in the tool's own variables above",
        "whether line breaks in a custom variable survive into the sent email: send a test",
    ),
)

LEMLIST = Profile(
    name="lemlist",
    title="lemlist",
    lead_fields=(
        LeadField("email", "email", "email", True),
        LeadField("first_name", "firstName", "firstName", True),
        LeadField("last_name", "lastName", "lastName", False),
        LeadField("company", "companyName", "companyName", True),
        LeadField("company_domain", "companyDomain", "companyDomain", False),
        LeadField("phone", "phone", "phone", False),
        LeadField("linkedin", "linkedinUrl", "linkedinUrl", False),
        LeadField("picture", "picture", "picture", False),
        LeadField("icebreaker", "icebreaker", "icebreaker", False),
    ),
    lead_fields_rule=Rule(
        "default lead variables: email, firstName, lastName, picture, phone, linkedinUrl, "
        "companyName, companyDomain, icebreaker; a new variable cannot reuse the name of an "
        "existing one",
        LEMLIST_VARIABLES,
        "high",
    ),
    step_columns=("step1Subject", "step1Body", "step2Body"),
    custom_names="camel",
    custom_rule=Rule(
        "any name but an existing variable's; which characters a name may hold is not "
        "documented, so ours are letters and digits in lemlist's own camelCase",
        LEMLIST_VARIABLES,
        "unconfirmed",
    ),
    variable_rule=Rule(
        "templates write {{firstName}}, {{companyName}} (lemlist's API example)",
        LEMLIST_STEPS,
        "high",
    ),
    custom_variables_confirmed=False,
    delay=Delay(
        "delay",
        "days",
        None,
        Rule(
            "a step has a delay (a number); its unit and what it counts from are not stated",
            LEMLIST_STEPS,
            "unconfirmed",
        ),
    ),  # fmt: skip
    threading=Rule(
        "whether a follow-up goes out as a reply in the same thread is not documented",
        LEMLIST_STEPS,
        "unconfirmed",
    ),
    blank_subject_threads=False,
    plain_text=Rule(
        "no plain-text setting is documented; the API's example bodies are HTML",
        LEMLIST_STEPS,
        "unconfirmed",
    ),
    unsubscribe_placeholder=None,
    unsubscribe=Rule(
        "lemlist keeps unsubscribes (per lead, email, phone or LinkedIn URL); a template "
        "variable for an unsubscribe link is not documented",
        LEMLIST_UNSUBSCRIBES,
        "high",
    ),
    variants=Rule("per-step A/B variants are not documented", LEMLIST_STEPS, "unconfirmed"),
    import_steps=(
        (
            "campaign › Leads › import the CSV; firstName, lastName, companyName… map to "
            "lemlist's default variables, and step1Subject, step1Body, step2Body become "
            "custom variables",
            None,
        ),
    ),
    unconfirmed=(
        "the CSV import's steps, limits and which headers it maps by itself",
        "which characters a custom variable's name may have (ours are letters and digits)",
        "the delay's unit and what it counts from: set the follow-up to the days above and "
        "check the schedule lemlist shows",
        "whether a follow-up threads as a reply, and how lemlist sends plain text",
        "lemlist's fallback syntax: a lead field without a value is sent empty in the "
        "texts in the tool's own variables above",
        "whether line breaks in a custom variable survive into the sent email: send a test",
    ),
)

APOLLO = Profile(
    name="apollo",
    title="Apollo",
    lead_fields=(
        LeadField("first_name", "First Name", "first_name", True),
        LeadField("last_name", "Last Name", "last_name", False),
        LeadField("email", "Contact Email", "email", False),
        LeadField("linkedin", "Contact LinkedIn URL", "linkedin_url", False),
        LeadField("company", "Company Name", "company", False),
        LeadField("website", "Company Website", "website", False),
    ),
    lead_fields_rule=Rule(
        "a contact CSV needs one of Company Name, Company Website, Contact LinkedIn URL, "
        "Contact Email, and Apollo recommends First Name, Last Name too; a website is the "
        "bare domain; avoid more than 10,000 rows",
        APOLLO_IMPORT,
        "high",
    ),
    step_columns=("step1_subject", "step1_body", "step2_body"),
    custom_names="snake",
    custom_rule=Rule(
        "custom contact fields must exist before the import (multi-line text, each with a "
        "maximum length); each CSV column is mapped to a field with a drop-down",
        APOLLO_FIELDS,
        "high",
    ),
    variable_rule=Rule(
        "templates write {{first_name}}; without a value the email goes to Not Sent",
        APOLLO_VARIABLES,
        "high",
    ),
    custom_variables_confirmed=False,
    delay=Delay(
        "wait",
        "days",
        None,
        Rule(
            "sequence step delays are not in the documentation we could read",
            APOLLO_VARIABLES,
            "unconfirmed",
        ),
    ),  # fmt: skip
    threading=Rule(
        "whether a follow-up goes out in the same thread is not documented",
        APOLLO_VARIABLES,
        "unconfirmed",
    ),
    blank_subject_threads=False,
    plain_text=Rule("no plain-text setting is documented", APOLLO_VARIABLES, "unconfirmed"),
    unsubscribe_placeholder=None,
    unsubscribe=Rule(
        "an unsubscribe link or variable is not documented", APOLLO_VARIABLES, "unconfirmed"
    ),
    variants=Rule("per-step A/B variants are not documented", APOLLO_VARIABLES, "unconfirmed"),
    row_limit=10_000,
    row_limit_rule=Rule(
        "avoid uploading CSV files with more than 10,000 rows; split them", APOLLO_IMPORT, "high"
    ),
    bare_domain_website=True,
    empty_fallback="{{{{#if {name}}}}}{{{{{name}}}}}{{{{#endif}}}}",
    fallback_rule=Rule(
        "{{#if first_name}}…{{#endif}} writes the field only when it has a value (the "
        "dynamic fallback, text when empty, exists but its syntax is not in the stored copy)",
        APOLLO_VARIABLES,
        "medium",
    ),
    import_steps=(
        (
            "first create three custom contact fields of type multi-line text, step1_subject, "
            "step1_body and step2_body, with a maximum length above your longest body",
            Rule(
                "custom contact fields: single-line or multi-line text, each with a maximum length",
                APOLLO_FIELDS,
                "high",
            ),
        ),
        (
            "People › Import › CSV; map First Name, Last Name, Contact Email, Company Name, "
            "Company Website, Contact LinkedIn URL to Apollo's fields and the step columns to "
            "the custom fields",
            None,
        ),
    ),
    unconfirmed=(
        "the menu path for creating custom contact (not user) fields, and the variable Apollo "
        "inserts for one in a template: insert it with the editor's variable picker",
        "{{last_name}}, {{company}}, {{website}}, {{linkedin_url}}, {{email}} as template "
        "variables (only {{first_name}} is shown by Apollo)",
        "the step delay, threading, plain text, A/B steps and the unsubscribe link",
        "the dynamic fallback's syntax: a field with our fallback is written without one, so "
        "a contact without it goes to Not Sent rather than out with a hole",
        "the file's encoding (we write UTF-8 without a byte-order mark)",
    ),
)

PROFILES: dict[str, Profile] = {p.name: p for p in (GENERIC, SMARTLEAD, INSTANTLY, LEMLIST, APOLLO)}
"""Every profile by name, generic first."""
NAMES = tuple(PROFILES)


def profile_named(name: str | Profile) -> Profile:
    """The profile called ``name`` (or ``name`` itself), or ``InvalidInput`` naming them all."""
    if isinstance(name, Profile):
        return name
    chosen = PROFILES.get(name.strip().lower()) if isinstance(name, str) else None
    if chosen is None:
        shown = repr(name)[:40]
        raise InvalidInput(f"unknown sending tool {shown}; use one of {', '.join(NAMES)}")
    return chosen


# --------------------------------------------------------------------------- the template


@dataclass(frozen=True)
class TemplateVariant:
    """One variant as the template shows it."""

    label: str | None
    sequence: EmailSequence
    footer: Footer
    run_id: str | None = None


def render_template(
    profile: Profile,
    plan: ColumnPlan,
    variants: Sequence[TemplateVariant],
    *,
    file_name: str,
) -> str:
    """The paste-ready template for ``file_name``: how to import it, the campaign's steps in
    the tool's own merge syntax, and each variant's text in the tool's variables."""
    lines = [
        f"{profile.title}: how to send {file_name}",
        "",
        "Every rule below names the page it was read on. 'check' marks what the tool's "
        "documentation does not say: send yourself a test email before a real send.",
        "",
        "1. Import",
    ]
    for step, rule in profile.import_steps:
        lines.append(f"   - {step}{_cite(rule)}")
    if not profile.is_generic:
        lines.append(f"   - the file's standard columns: {profile.lead_fields_rule.says}"
                     f"{_cite(profile.lead_fields_rule)}")  # fmt: skip
        lines.append(f"   - the other columns: {profile.custom_rule.says}"
                     f"{_cite(profile.custom_rule)}")  # fmt: skip
    if profile.row_limit is not None and profile.row_limit_rule is not None:
        lines.append(f"   - {profile.row_limit_rule.says}{_cite(profile.row_limit_rule)}")
    lines += [
        "",
        "2. Sending settings",
        f"   - plain text: {profile.plain_text.says}{_cite(profile.plain_text)}",
        f"   - unsubscribe: {profile.unsubscribe.says}{_cite(profile.unsubscribe)}",
    ]
    footers = {v.footer.text for v in variants}
    if any(footers):
        lines.append(
            "   - every body already ends with your postal address and opt-out sentence "
            "(the footer), whatever the tool adds"
        )
    else:
        lines.append(
            "   - no postal address or opt-out sentence was set, so none is in the bodies: "
            "CAN-SPAM requires both in commercial email to US recipients"
        )
    lines += ["", "3. The campaign's steps (paste each as it is)"]
    lines += _steps(profile, variants[0].sequence, _campaign_texts(profile))
    if len(variants) > 1:
        lines += ["", "4. A/B variants"]
        lines += _variant_notes(profile, variants)
    number = 5 if len(variants) > 1 else 4
    lines += [
        "",
        f"{number}. The sequence in {profile.title}'s own variables (for its A/B editor, or a "
        "campaign without the step columns)",
    ]
    for variant in variants:
        lines += _translated(profile, plan, variant)
    if profile.unconfirmed:
        lines += ["", "Check (not in the documentation we could read)"]
        lines += [f"   - check: {item}" for item in profile.unconfirmed]
    return "\n".join(lines) + "\n"


def _cite(rule: Rule | None) -> str:
    if rule is None or rule.source is None:
        return ""
    return f" [{rule.confidence}: {rule.source}]"


def _campaign_texts(profile: Profile) -> tuple[str, str, str]:
    subject, body, follow_up = (profile.variable(name) for name in profile.step_columns)
    return subject, body, follow_up


def _steps(
    profile: Profile,
    sequence: EmailSequence,
    texts: tuple[str, str, str],
    *,
    indent: str = "   ",
    cite: bool = True,
) -> list[str]:
    subject, body, follow_up = texts
    first, second = profile.delays(sequence)
    gap = sequence.follow_up.wait_days
    delay = profile.delay
    unsubscribe = profile.unsubscribe_placeholder
    out: list[str] = []
    for number, (step_subject, step_body, value) in enumerate(
        ((subject, body, first), (None, follow_up, second)), start=1
    ):
        out.append("")
        out.append(f"{indent}Step {number} · {_delay_text(profile, number, value, gap)}")
        if step_subject is not None:
            out.append(f"{indent}Subject: {step_subject}")
        elif profile.blank_subject_threads:
            out.append(f"{indent}Subject: (leave it empty, so it goes out as a reply)")
        else:
            out.append(
                f"{indent}Subject: (leave it empty if {profile.title} then sends it in the "
                f"same thread — check; otherwise write Re: and the first subject)"
            )
        out.append(f"{indent}Body:")
        out += [f"{indent}{line}" if line else "" for line in step_body.split("\n")]
        if unsubscribe:
            out += ["", f"{indent}{unsubscribe}"]
    if cite:
        rules = (delay.rule, profile.threading, profile.variable_rule, profile.fallback_rule)
        for rule in (r for r in rules if r is not None):
            if rule.source:
                out += ["", f"{indent}({profile.title}: {rule.says}{_cite(rule)})"]
    return out


def _delay_text(profile: Profile, step: int, value: int, gap: int) -> str:
    delay = profile.delay
    if profile.is_generic:
        return "send at once" if step == 1 else f"{gap} day(s) after step 1 (step2_delay_days)"
    if delay.wait_is == "before":
        return f"{delay.field}: {value}" + (
            " (send at once)" if step == 1 else f" ({delay.unit} to wait before this step)"
        )
    if delay.wait_is == "after":
        what = (
            f"({delay.unit} to wait after this email before step 2)"
            if step == 1
            else "(the last step's delay is not used)"
        )
        return f"{delay.field}: {value}, {delay.field}_unit: {delay.unit} {what}"
    if step == 1:
        return "send at once"
    return f"{gap} day(s) after step 1 — check how {profile.title} counts its delay"


def _variant_notes(profile: Profile, variants: Sequence[TemplateVariant]) -> list[str]:
    labels = ", ".join(str(v.label) for v in variants)
    out = [
        f"   - each lead was given one variant ({labels}) by a hash of its address: the "
        f"{VARIANT_COLUMN} column says which, and a re-export gives the same split",
        "   - the steps above send each lead its own variant: its row carries that "
        "variant's subject and bodies",
        f"   - {profile.variants.says}{_cite(profile.variants)}; to let the tool split "
        "instead, paste the variants below into its A/B editor",
    ]
    gaps = {v.sequence.follow_up.wait_days for v in variants}
    if len(gaps) > 1:
        each = ", ".join(f"{v.label}: {v.sequence.follow_up.wait_days}" for v in variants)
        out.append(
            f"   - the variants wait different days before the follow-up ({each}); a "
            "campaign has one delay per step, so import each variant (filter the file on "
            f"the {VARIANT_COLUMN} column) into a campaign of its own"
        )
    return out


def _translated(profile: Profile, plan: ColumnPlan, variant: TemplateVariant) -> list[str]:
    sequence = variant.sequence
    notes: dict[str, None] = {}
    to = _Translator(profile, plan, notes)
    texts = (
        to(sequence.opener.subject),
        variant.footer.append_to(to(sequence.opener.body)),
        variant.footer.append_to(to(sequence.follow_up.body)),
    )
    title = f"Variant {variant.label}" if variant.label else "The sequence"
    run = f" (run {variant.run_id})" if variant.run_id else ""
    out = ["", f"   {title}{run}"]
    out += _steps(profile, sequence, texts, indent="     ", cite=False)
    out += [f"     - check: {note}" for note in notes]
    return out


class _Translator:
    """Our ``{{field|fallback}}`` placeholders written in the tool's own variables."""

    def __init__(self, profile: Profile, plan: ColumnPlan, notes: dict[str, None]) -> None:
        self.profile = profile
        self.notes = notes
        self.variable_of: dict[str, tuple[str, bool]] = {}
        by_header = {f.header: f for f in profile.lead_fields}
        for name, header in plan.header_of.items():
            lead_field = by_header.get(header) if name in plan.standard else None
            if profile.is_generic:
                self.variable_of[name] = (name, True)
            elif lead_field is not None:
                self.variable_of[name] = (lead_field.variable, lead_field.confirmed)
            else:
                self.variable_of[name] = (header, profile.custom_variables_confirmed)

    def __call__(self, text: str) -> str:
        parts: list[str] = []
        last = 0
        for placeholder in find_placeholders(text):
            parts.append(text[last : placeholder.start])
            parts.append(self._one(placeholder.name, placeholder.fallback, placeholder.raw))
            last = placeholder.end
        parts.append(text[last:])
        return "".join(parts)

    def _one(self, name: str, fallback: str | None, raw: str) -> str:
        if self.profile.is_generic:
            return raw
        variable, confirmed = self.variable_of.get(name, (name, False))
        written = self.profile.variable(variable)
        if not confirmed:
            self.notes[
                f"{written} is our best guess at how {self.profile.title} names this field "
                "in a template; pick it from the editor's variable list"
            ] = None
        if fallback == "" and self.profile.empty_fallback is not None:
            return self.profile.empty_fallback.format(name=variable)
        if not fallback:
            return written  # no fallback, or an empty one: the tool sends what it has
        if self.profile.empty_fallback is not None:
            self.notes[
                f"{raw}: without a value {self.profile.title} moves the email to Not Sent; "
                f"the fallback {fallback!r} needs its dynamic fallback, whose syntax we could "
                "not confirm"
            ] = None
        else:
            self.notes[
                f"{raw}: {self.profile.title}'s fallback syntax is not documented, so a lead "
                f"without {variable} gets nothing here instead of {fallback!r} (the step "
                "columns have it applied)"
            ] = None
        return written
