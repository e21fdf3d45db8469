"""The one way a line reaches the terminal: control characters and rich markup escaped, length capped.

Text from files, names and caches is shown as it is (never interpreted: no terminal escape codes, no
markup), and never longer than `MAX_LINE` characters; what is cut is counted. Content of user files
is not echoed at all: messages name the file and line instead (`where`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from rich.markup import escape

MAX_LINE = 300
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u200b-\u200f\u202a-\u202e\u2066-\u2069]")


def plain_line(text: object, limit: int = MAX_LINE) -> str:
    """One line of visible characters: whitespace runs become one space, control characters `\\xNN`."""
    line = " ".join(str(text).split())
    line = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 256 else f"\\u{ord(m.group()):04x}", line)
    if len(line) > limit:
        cut = len(line) - limit
        line = f"{line[:limit]}... ({cut} more characters)"
    return line


def markup_safe(text: object, limit: int = MAX_LINE) -> str:
    """`plain_line`, then escaped for rich so brackets print as brackets."""
    return escape(plain_line(text, limit))


def say(console: Any, text: object, style: str | None = None, prefix: str = "") -> None:
    """Print one line on a rich Console; `prefix` is the tool's own markup (e.g. `[red]error:[/red] `)."""
    if console is None:
        return
    from rich.text import Text

    line = Text.from_markup(prefix) + Text(plain_line(text))  # the text itself is never parsed as markup
    console.print(line, style=style, highlight=False, soft_wrap=True)


def where(path: Path | str, line: int | None = None) -> str:
    """How a message points into a user's file without quoting it: `FILE` or `FILE line N`."""
    return plain_line(path, 200) + (f" line {line}" if line is not None else "")


def say_lines(console: Any, text: object) -> None:
    """A multi-line report of the tool's own, each line through `say`."""
    for line in str(text).splitlines():
        say(console, line)
