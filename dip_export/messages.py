"""The one way a line reaches the terminal: control characters and rich markup escaped, length capped.

Text from files, names and caches is shown as it is (never interpreted: no terminal escape codes, no
markup), and no printed line is longer than `MAX_LINE` characters, prefix and the count of what was
cut included. Content of user files is not echoed at all: messages name the file and line instead (`where`).
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
    if len(line) > limit:  # the middle goes (a long path), the start and the end (the reason) stay
        keep = max(limit - len(f" ... ({len(line)} more characters) ... "), 0)  # the note counts toward the limit
        head, tail = keep // 2, keep - keep // 2
        line = f"{line[:head]} ... ({len(line) - keep} more characters) ... {line[len(line) - tail:] if tail else ''}"
    return line


def markup_safe(text: object, limit: int = MAX_LINE) -> str:
    """`plain_line`, then escaped for rich so brackets print as brackets."""
    return escape(plain_line(text, limit))


def say(console: Any, text: object, style: str | None = None, prefix: str = "") -> None:
    """Print one line on a rich Console; `prefix` is the tool's own markup (e.g. `[red]error:[/red] `)."""
    if console is None:
        return
    from rich.text import Text

    head = Text.from_markup(prefix)
    line = head + Text(plain_line(text, max(MAX_LINE - len(head.plain), 40)))  # the text is never parsed as markup
    console.print(line, style=style, highlight=False, soft_wrap=True)


def where(path: Path | str, line: int | None = None) -> str:
    """How a message points into a user's file without quoting it: `FILE` or `FILE line N`."""
    return plain_line(path, 200) + (f" line {line}" if line is not None else "")


def say_lines(console: Any, text: object) -> None:
    """A multi-line report of the tool's own, each line through `say`; a rich renderable (a table) is drawn."""
    if console is None:
        return
    if hasattr(text, "__rich_console__") or hasattr(text, "__rich__"):
        console.print(text)  # the tool's own table: its cells are its own figures, not file content
        return
    for line in str(text).splitlines():
        say(console, line)


def safe_progress(*columns: Any, **kwargs: Any) -> Any:
    """A rich Progress whose task descriptions are shown as text (`markup_safe`): names in them come from files."""
    from rich.progress import Progress

    class SafeProgress(Progress):
        def add_task(self, description: str, *args: Any, **kw: Any) -> Any:
            return super().add_task(markup_safe(description, 120), *args, **kw)

        def update(self, task_id: Any, *args: Any, description: str | None = None, **kw: Any) -> None:
            safe = None if description is None else markup_safe(description, 120)
            super().update(task_id, *args, description=safe, **kw)

    return SafeProgress(*columns, **kwargs)
