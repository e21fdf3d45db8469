"""The one way a line reaches the terminal: control characters and rich markup escaped, length capped.

Text from files, names and caches is shown as it is (never interpreted: no terminal escape codes, no
markup), and no printed line is longer than `MAX_LINE` characters, prefix and the count of what was
cut included. Content of user files is not echoed at all: messages name the file and line instead (`where`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.markup import escape

from dip_export.text import escaped, visible

MAX_LINE = 300


def plain_line(text: object, limit: int = MAX_LINE) -> str:
    """One line of visible characters (`text.visible`), every character kept: spaces as they are (a space opening or
    closing the line as `\\x20`, where it would not be seen). A line printed twice prints the same."""
    try:
        raw = text if isinstance(text, str) else str(text)
    except Exception:  # a caller's object whose __str__ raises, an int too long for text
        raw = f"a {type(text).__name__}"
    parts = escaped(str.__str__(raw))
    for end in (0, len(parts) - 1):
        if parts and parts[end] == " ":
            parts[end] = "\\x20"
    if sum(map(len, parts)) <= limit:
        return "".join(parts)
    # the middle goes (a long path), the start and the end (the reason) stay; an escape is never split
    note = f" ... ({len(raw)} more characters) ... "  # the longest the note can be: counts toward the limit
    if limit < len(note) + 8:  # no room for a note and some text around it: the start, cut
        return visible(raw, limit)
    room = limit - len(note)
    head: list[str] = []
    tail: list[str] = []
    used = 0
    for part in parts:
        if used + len(part) > room // 2:
            break
        head.append(part)
        used += len(part)
    for part in reversed(parts[len(head) :]):
        if used + len(part) > room:
            break
        tail.append(part)
        used += len(part)
    cut = len(parts) - len(head) - len(tail)
    return f"{''.join(head)} ... ({cut} more characters) ... {''.join(reversed(tail))}"


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


def shortened(text: str, limit: int = 200) -> str:
    """Text kept to about `limit` characters for a part of a message: its middle goes, its start and its end (a
    reason's advice, a path's file name) stay. Not escaped here (the line is, once, where it is printed)."""
    if len(text) <= limit:
        return text
    keep = max(limit // 2 - 10, 10)
    return f"{text[:keep]} ... ({len(text) - 2 * keep} more characters) ... {text[-keep:]}"


def where(path: Path | str, line: int | None = None) -> str:
    """How a message points into a user's file without quoting it: `FILE` or `FILE line N`. The name is not escaped
    here (the line is, once, where it is printed: escaping twice would show another name); a long one is cut."""
    name = shortened(str(path))
    return name + (f" line {line}" if line is not None else "")


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
