"""MkDocs hook: a pipe inside a code span of a table row reads as ``|`` on the site.

GitHub's tables need the pipe in ``a \\| b`` escaped; Python-Markdown's tables already keep a
code span whole, and would show the backslash. So the pages are written for GitHub, and this
drops the backslash when the site is built.
"""

from __future__ import annotations

import re
from typing import Any

_CODE_SPAN = re.compile(r"`[^`\n]*\\\|[^`\n]*`")


def on_page_markdown(markdown: str, **_: Any) -> str:
    """The page's Markdown with ``\\|`` unescaped inside the code spans of table rows."""
    lines = markdown.split("\n")
    for i, line in enumerate(lines):
        if line.startswith("|"):
            lines[i] = _CODE_SPAN.sub(lambda span: span.group(0).replace("\\|", "|"), line)
    return "\n".join(lines)
