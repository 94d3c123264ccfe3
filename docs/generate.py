"""Write the parts of the documentation that are read from the code.

    python docs/generate.py           rewrite them in place
    python docs/generate.py --check   exit 1, showing the difference, when one is stale

The pages hold these parts as cog blocks (``<!-- [[[cog … ]]] -->`` … ``<!-- [[[end]]] -->``)
that call the functions below, so the text is committed: it reads the same on GitHub, in an
editor and in the built site, and a review shows how it changed.
``tests/integration/test_docs.py`` runs
the check, so the README's test command (and CI) fails when the code changed and a page did
not. What is generated: the front page (README.md, its links made relative to docs/), the
command line (its argparse parser), the settings (``Settings``' fields, ``ENV`` and the
fields' docstrings) and the errors (``errors.py``: each class's exit code, HTTP status and
docstring, and ``EXIT_CODES``).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import griffe
from cogapp import Cog

import bridgic_coldmail
from bridgic_coldmail import errors
from bridgic_coldmail.cli import build_parser
from bridgic_coldmail.settings import ENV, AgentOptions, Settings, default_db_path

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent
SOURCE = Path(bridgic_coldmail.__file__).resolve().parent.parent
"""Where the package's source is (the repository, for an editable install)."""
FIX = "python docs/generate.py"
"""The command that rewrites every generated block (named by the check's failure message)."""


def front_page() -> str:
    """README.md, with its links into docs/ made relative to the site's front page.

    Raises:
        ValueError: the README links to a file outside docs/, which the site cannot hold.
    """
    readme = (REPO / "README.md").read_text(encoding="utf-8")

    def relink(found: re.Match[str]) -> str:
        target = found.group(2)
        if re.match(r"[a-z][a-z0-9+.-]*:|#", target):  # a URL or an anchor on the page
            return found.group(0)
        if not target.startswith("docs/"):
            raise ValueError(
                f"README.md links to {target}, outside docs/: the site cannot hold it; link "
                "a page under docs/ or name the file in backticks"
            )
        return f"{found.group(1)}({target.removeprefix('docs/')})"

    return re.sub(r"(!?\[[^\]]*\])\(([^)\s]+)\)", relink, readme)


# --------------------------------------------------------------------------- command line


def cli_reference() -> str:
    """Every ``coldmail`` command: its usage, and a table of its arguments."""
    parser = build_parser()
    commands = _subcommands(parser)
    out = ["## Options of every command", ""]
    out += [
        "`--db` and `--llm` come before the command or after it "
        "(`coldmail --db runs.db list` is `coldmail list --db runs.db`).",
        "",
    ]
    out += _arguments_table(parser)
    for name, sub in commands.items():
        out += ["", f"## coldmail {name}", "", _sentence(sub.description or ""), ""]
        out += ["```text", _usage(sub), "```", ""]
        out += _arguments_table(sub, skip=frozenset({"--db", "--llm"}))
    return "\n".join(out) + "\n"


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _usage(parser: argparse.ArgumentParser) -> str:
    formatter = argparse.HelpFormatter(parser.prog, width=80)  # not the terminal's width
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups, "")
    return formatter.format_help().strip()


def _arguments_table(
    parser: argparse.ArgumentParser, skip: frozenset[str] = frozenset()
) -> list[str]:
    rows = ["| argument | meaning |", "|---|---|"]
    for action in parser._actions:
        hidden = action.help == argparse.SUPPRESS  # how the command talks to itself
        if isinstance(action, argparse._HelpAction) or hidden or set(action.option_strings) & skip:
            continue
        rows.append(f"| {_argument(action)} | {_cell(_argument_help(action))} |")
    return rows


def _argument(action: argparse.Action) -> str:
    if not action.option_strings:
        shown = action.metavar or action.dest
        return f"`{shown} …`" if action.nargs in ("*", "+") else f"`{shown}`"
    takes = action.nargs != 0 and not isinstance(action, argparse._VersionAction)
    named = action.metavar or (action.choices and "|".join(map(str, action.choices)))
    value = f" {named or action.dest.upper()}" if takes else ""
    return ", ".join(f"`{option}{value}`" for option in action.option_strings)


def _argument_help(action: argparse.Action) -> str:
    text = (action.help or "").replace("%%", "%")
    text = text.replace(str(default_db_path()), "`coldmail.db` in the per-user data folder")
    if isinstance(action, argparse._VersionAction):
        text = "print the version and exit"
    notes = []
    if action.choices is not None and action.metavar is not None:
        notes.append("one of " + ", ".join(f"`{choice}`" for choice in action.choices))
    if isinstance(action, argparse._AppendAction):
        notes.append("repeatable")
    if action.required and action.option_strings:
        notes.append("required")
    return "; ".join(part for part in [text, *notes] if part) or "—"


# --------------------------------------------------------------------------- settings


def settings_reference() -> str:
    """One row per setting: its name, environment variable, command-line option, default and
    meaning (the field's docstring)."""
    documented = _griffe("bridgic_coldmail.settings")["Settings"]
    options = {a.dest: a.option_strings for a in build_parser()._actions if a.option_strings}
    rows = [
        "| setting | environment | default | meaning |",
        "|---|---|---|---|",
    ]
    for item in dataclasses.fields(Settings):
        docstring = documented.members[item.name].docstring
        if docstring is None:
            raise ValueError(f"Settings.{item.name} has no docstring to document it with")
        names = [f"`{item.name}`", *(f"`{o}`" for o in options.get(item.name, ()))]
        rows.append(
            f"| {'<br>'.join(names)} | `{ENV[item.name]}` | {_default(item)} "
            f"| {_cell(docstring.value)} |"
        )
    by_name = sorted(AgentOptions.__required_keys__ | AgentOptions.__optional_keys__)
    return (
        "\n".join(rows)
        + "\n\n`ColdMailAgent.open()` and `SyncColdMailAgent.open()` take these by name: "
        + ", ".join(f"`{name}=`" for name in by_name)
        + "; and the database as `db_path`.\n"
    )


def _default(item: dataclasses.Field[Any]) -> str:
    value = item.default
    if value is dataclasses.MISSING or value is None or value == ():
        return "—"  # none, or computed: the meaning says what it then is
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"`{value}`"


# --------------------------------------------------------------------------- errors


def exit_codes() -> str:
    """The ``coldmail`` command's exit codes (``EXIT_CODES``) and the classes that carry each."""
    constants = {
        getattr(errors, name): member.docstring.value
        for name, member in _griffe("bridgic_coldmail.errors").members.items()
        if not member.is_alias
        and member.is_attribute
        and member.docstring
        and isinstance(getattr(errors, name), int)
    }
    rows = ["| exit | meaning | raised as | when |", "|---|---|---|---|"]
    for meaning, code in sorted(errors.EXIT_CODES.items(), key=lambda item: item[1]):
        classes = [cls for cls in _error_classes() if cls.exit_code == code]
        raised = ", ".join(f"`{cls.__name__}`" for cls in classes) or "—"
        defining = [cls for cls in classes if "exit_code" in cls.__dict__]  # not inherited
        when = " / ".join(_first_paragraph(inspect.getdoc(cls) or "") for cls in defining)
        rows.append(f"| {code} | {meaning} | {raised} | {_cell(when or constants.get(code, ''))} |")
    return "\n".join(rows) + "\n"


def error_classes() -> str:
    """Every error class: its HTTP status, exit code, bases and docstring."""
    rows = ["| exception | HTTP | exit | is a | meaning |", "|---|---|---|---|---|"]
    for cls in _error_classes():
        bases = ", ".join(f"`{base.__name__}`" for base in cls.__bases__)
        meaning = _cell(inspect.getdoc(cls) or "")
        rows.append(
            f"| `{cls.__name__}` | {cls.http_status} | {cls.exit_code} | {bases} | {meaning} |"
        )
    return "\n".join(rows) + "\n"


def _error_classes() -> list[type[Any]]:
    """The error classes of ``errors.py``, in the order the module defines them."""
    return [
        cls
        for cls in vars(errors).values()
        if isinstance(cls, type)
        and issubclass(cls, errors.ColdmailError)
        and cls.__module__ == errors.__name__
    ]


# --------------------------------------------------------------------------- helpers


def _griffe(module: str) -> Any:
    """The module as griffe reads it (as mkdocstrings does): attribute docstrings included."""
    return griffe.load(module, search_paths=[str(SOURCE)], docstring_parser=None)


def _cell(text: str) -> str:
    """Docstring text as one Markdown table cell: reST roles and double backticks made
    Markdown, paragraphs joined, pipes escaped."""
    text = re.sub(r":(?:class|func|meth|data|attr|mod|exc):`~?([^`]+)`", r"`\1`", text)
    text = re.sub(r"``([^`]+)``", r"`\1`", text)
    text = " ".join(text.split())
    return text.replace("|", "\\|")


def _first_paragraph(text: str) -> str:
    return text.split("\n\n", 1)[0]


def _sentence(text: str) -> str:
    text = text.strip()
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def generated_pages() -> Iterator[Path]:
    """The Markdown files that hold generated blocks."""
    for page in sorted(DOCS.rglob("*.md")):
        if "[[[cog" in page.read_text(encoding="utf-8"):
            yield page


def run_cog(*options: str) -> int:
    """cog over every page with generated blocks; its exit status."""
    argv = ["cog", "-I", str(DOCS), "--verbosity=1", *options, *map(str, generated_pages())]
    return Cog().main(argv)


if __name__ == "__main__":
    check = sys.argv[1:] == ["--check"]
    if sys.argv[1:] not in ([], ["--check"]):
        sys.exit(f"usage: {FIX} [--check]")
    options = ("--check", "--diff", f"--check-fail-msg=run {FIX}") if check else ("-r",)
    sys.exit(run_cog(*options))
