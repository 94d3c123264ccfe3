"""Merge fields: the placeholder grammar, header normalisation, rendering and the schema pattern."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema
from jsonschema import Draft202012Validator

from bridgic_coldmail import InvalidInput
from bridgic_coldmail.merge import (
    Missing,
    allowed_text_pattern,
    describe_fields,
    field_name,
    field_names,
    find_placeholders,
    is_allowed_text,
    render,
    syntax_errors,
    unknown_fields,
)
from bridgic_coldmail.text import INVISIBLE_CLASS

FIELDS = ["first_name", "company", "company_name"]
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- header normalisation -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("First Name", "first_name"),
        ("E-mail", "e_mail"),
        ("  Company  ", "company"),
        ("Société", "societe"),
        ("Job Title (current)", "job_title_current"),
        ("first_name", "first_name"),
        ("LinkedIn URL", "linkedin_url"),
    ],
)
def test_a_header_becomes_a_snake_case_field_name(header: str, name: str) -> None:
    assert field_name(header) == name


@pytest.mark.parametrize(
    ("header", "hint"),
    [
        ("2nd line", "does not start with a letter"),
        ("!!!", "no letters or digits"),
        ("Имя", "no letters or digits"),
        ("x" * 65, "too long"),
    ],
)
def test_a_header_that_cannot_name_a_field_is_refused(header: str, hint: str) -> None:
    with pytest.raises(InvalidInput, match=hint):
        field_name(header)


def test_headers_that_collide_after_normalisation_are_refused_naming_both() -> None:
    with pytest.raises(InvalidInput) as caught:
        field_names(["email", "First Name", "first_name"])
    assert "'first_name' and 'First Name' both become 'first_name'" in str(caught.value)


def test_a_repeated_header_is_refused() -> None:
    with pytest.raises(InvalidInput, match="'email' appears twice"):
        field_names(["email", "email"])


@pytest.mark.parametrize("blank", ["", "   "])
def test_an_empty_header_name_is_refused_with_its_position(blank: str) -> None:
    with pytest.raises(InvalidInput, match="column 2 of the header has no name"):
        field_names(["email", blank])


# --- the grammar ----------------------------------------------------------------------------


def test_spaces_around_name_and_pipe_are_ignored_and_the_fallback_is_trimmed() -> None:
    (placeholder,) = find_placeholders("Hi {{ first_name |  there }},")
    assert (placeholder.name, placeholder.fallback) == ("first_name", "there")


def test_a_placeholder_without_pipe_has_no_fallback_and_an_empty_one_is_explicit() -> None:
    plain, empty = find_placeholders("{{first_name}} {{company|}}")
    assert (plain.fallback, empty.fallback) == (None, "")


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("{{First_Name}}", "is not a placeholder"),
        ("{{first name}}", "is not a placeholder"),
        ("{{}}", "is not a placeholder"),
        ("{{\tfirst_name}}", "is not a placeholder"),
        ("{{first_name\n}}", "is not a placeholder"),
        ("{{first_name|a|b}}", "a fallback is one line without '|'"),
        ("{{first_name|two\nlines}}", "a fallback is one line without '|'"),
        ("a {single} brace", "a stray '{'"),
        ("{{{first_name}}}", "a stray '{'"),
        ("Hi {{first_name", "a stray '{'"),
        ("Hi first_name}}", "a stray '}'"),
    ],
)
def test_malformed_placeholders_and_stray_braces_are_reported(text: str, hint: str) -> None:
    assert hint in " | ".join(syntax_errors(text))


def test_a_well_formed_text_has_no_syntax_errors() -> None:
    assert syntax_errors("Hi {{first_name|there}}, about {{ company }}.\nThanks") == []


def test_unknown_fields_are_listed_once_in_order_of_use() -> None:
    texts = ["{{title}} at {{company}}", "{{city|your city}} and {{title}}"]
    assert unknown_fields(texts, ["company"]) == ["title", "city"]


# --- rendering ------------------------------------------------------------------------------


def test_render_fills_values_stripped() -> None:
    values = {"first_name": "  Ana ", "company": "Acme"}
    assert render("Hi {{first_name}} at {{ company }}!", values) == "Hi Ana at Acme!"


@pytest.mark.parametrize("empty", ["", "   ", "\t"])
def test_an_empty_value_uses_the_fallback(empty: str) -> None:
    assert render("Hi {{first_name|there}},", {"first_name": empty}) == "Hi there,"


def test_an_explicit_empty_fallback_renders_nothing() -> None:
    assert render("Hi{{first_name|}}!", {"first_name": ""}) == "Hi!"


def test_a_missing_value_without_fallback_names_the_fields() -> None:
    result = render("{{first_name}} {{company}} {{first_name}}", {"first_name": "", "company": ""})
    assert result == Missing(("first_name", "company"))


def test_rendering_an_unknown_field_is_an_error_not_a_missing_value() -> None:
    with pytest.raises(InvalidInput, match=r"uses \{\{title\}\}, but the lead list has no such"):
        render("{{title}}", {"first_name": "Ana"})


def test_rendering_a_malformed_text_is_an_error() -> None:
    with pytest.raises(InvalidInput, match="stray"):
        render("Hi {first_name}", {"first_name": "Ana"})


def test_a_value_that_looks_like_a_placeholder_is_inserted_verbatim_once() -> None:
    assert render("{{company}}", {"company": "{{first_name}}"}) == "{{first_name}}"


# --- the pattern ----------------------------------------------------------------------------


CONTROL = r"\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f\u2028\u2029"
BLANK = INVISIBLE_CLASS
SHOWS = rf"[^{{}}\t\r\n{CONTROL}{BLANK}]"


def test_the_pattern_for_known_fields_is_exactly_this() -> None:
    placeholder = rf"\{{\{{ *(?:first_name|company) *(?:\|[^{{}}|\r\n{CONTROL}]*)?\}}\}}"
    assert allowed_text_pattern(["first_name", "company"]) == (
        rf"^[\t\r\n{BLANK}]*(?:{SHOWS}|{placeholder})(?:[^{{}}{CONTROL}]|{placeholder})*$"
    )


def test_without_fields_the_pattern_allows_no_brace_at_all() -> None:
    assert allowed_text_pattern([]) == rf"^[\t\r\n{BLANK}]*(?:{SHOWS})(?:[^{{}}{CONTROL}])*$"
    assert allowed_text_pattern([], single_line=True) == (
        rf"^[\t{BLANK}]*(?:{SHOWS})(?:[^{{}}\r\n{CONTROL}])*$"
    )


def test_the_pattern_refuses_a_field_that_is_not_a_field_name() -> None:
    with pytest.raises(InvalidInput, match="is not a merge-field name"):
        allowed_text_pattern(["First Name"])


@pytest.mark.parametrize(
    ("text", "allowed"),
    [
        ("Hi {{first_name|there}}, how is {{company_name}}?", True),
        ("{{ company }}", True),
        ("no placeholders at all\nsecond line", True),
        ("", False),
        (" \u3000\u200b\n", False),
        (" {{first_name}} ", True),
        ("Hi {{title}}", False),
        ("Hi {{company_x}}", False),
        ("Hi {{first_name}", False),
        ("Hi {{{first_name}}}", False),
        ("{{first_name|a|b}}", False),
        ("{{first_name|line\nbreak}}", False),
    ],
)
def test_pattern_and_parser_agree_on_examples(text: str, allowed: bool) -> None:
    pattern = allowed_text_pattern(FIELDS)
    assert (re.search(pattern, text) is not None, is_allowed_text(text, FIELDS)) == (
        allowed,
        allowed,
    )


@pytest.mark.slow
@PROPERTY
@given(from_schema({"type": "string", "pattern": allowed_text_pattern(FIELDS)}))
def test_every_text_the_schema_accepts_renders_without_unknown_fields(text: str) -> None:
    assert unknown_fields([text], FIELDS) == []
    assert syntax_errors(text) == []
    rendered = render(text, {name: "V" for name in FIELDS})
    assert isinstance(rendered, str) and "{" not in rendered and "}" not in rendered


_PLAIN = st.text(st.characters(blacklist_characters="{}", blacklist_categories=["Cs"]), max_size=8)
_UNKNOWN_NAME = st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True).filter(
    lambda name: name not in FIELDS
)


@pytest.mark.slow
@PROPERTY
@given(_PLAIN, _UNKNOWN_NAME, st.none() | st.from_regex(r"[^{}|\r\n]*", fullmatch=True), _PLAIN)
def test_a_text_with_an_unknown_field_is_rejected_by_the_pattern(
    before: str, name: str, fallback: str | None, after: str
) -> None:
    placeholder = "{{" + name + ("" if fallback is None else "|" + fallback) + "}}"
    text = before + placeholder + after
    assert re.search(allowed_text_pattern(FIELDS), text) is None


@PROPERTY
@given(st.text(alphabet=st.sampled_from(["{", "}", "|", " ", "\n", "a", "b", "_", "x"])))
def test_pattern_and_parser_agree_on_brace_heavy_texts(text: str) -> None:
    fields = ["a", "ab", "a_b"]
    assert (re.search(allowed_text_pattern(fields), text) is not None) == is_allowed_text(
        text, fields
    )


def test_a_json_schema_validator_reads_the_pattern_the_same_way() -> None:
    validator = Draft202012Validator({"type": "string", "pattern": allowed_text_pattern(FIELDS)})
    assert (validator.is_valid("Hi {{first_name|there}}"), validator.is_valid("{{title}}")) == (
        True,
        False,
    )


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to run ECMA-262 regexes")
def test_ecma_262_engines_accept_the_pattern_and_agree_with_python() -> None:
    pattern = allowed_text_pattern(FIELDS)
    texts = [
        "Hi {{first_name|there}},\nsee {{ company_name }}.",
        "{{title}}",
        "{{{first_name}}}",
        "{{first_name|a\nb}}",
        "plain",
    ]
    script = (
        "const [p, texts] = JSON.parse(process.argv[1]);"
        "const plain = new RegExp(p), unicode = new RegExp(p, 'u');"
        "console.log(JSON.stringify(texts.map(t => [plain.test(t), unicode.test(t)])));"
    )
    result = subprocess.run(
        ["node", "-e", script, json.dumps([pattern, texts])],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    python = [[re.search(pattern, t) is not None] * 2 for t in texts]
    assert json.loads(result.stdout) == python


def test_the_prompt_paragraph_lists_the_fields_as_placeholders() -> None:
    assert "Merge fields available: {{first_name}}, {{company}}." in describe_fields(
        ["first_name", "company"]
    )
