"""Messages: progress descriptions and reports go through the same escaping as every other line."""

from __future__ import annotations

import ast
import io
from pathlib import Path

from rich.console import Console
from rich.progress import TextColumn

from dip_export.messages import safe_progress, say_lines

HOSTILE = "\x1b]0;title\x07[bold red]name[/]\x1b[2J"


def test_progress_descriptions_are_text():
    console = Console(file=io.StringIO(), force_terminal=True, width=200)
    progress = safe_progress(TextColumn("[bold]{task.description}"), console=console)
    with progress:
        task = progress.add_task(HOSTILE, total=1)
        progress.update(task, description=HOSTILE, completed=1)
    out = console.file.getvalue()
    assert "\x1b]0;" not in out and "\x07" not in out and "\x1b[2J" not in out
    assert "[bold red]name[/]" in out  # markup shown as text


def test_a_table_is_drawn_not_named():
    from rich.table import Table

    table = Table(title="t")
    table.add_column("a")
    table.add_row("1.00e-06")
    console = Console(file=io.StringIO(), width=80)
    say_lines(console, table)
    out = console.file.getvalue()
    assert "1.00e-06" in out and "rich.table" not in out


def test_no_formatted_text_printed_around_say():
    """Every f-string the package prints goes through messages.say (console.print takes only fixed text)."""
    package = Path(__file__).resolve().parents[2] / "dip_export"
    offenders = []
    for path in package.rglob("*.py"):
        if path.name == "messages.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            call = isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "print"
            if call and any(isinstance(arg, ast.JoinedStr) for arg in node.args):
                offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == []


def test_the_interrupted_lines_are_spelled_once_for_both_printers():
    from dip_export.entry import INTERRUPTED, TERMINATED
    from dip_export.signals import OUTCOME

    assert (f"interrupted: {OUTCOME}", f"terminated: {OUTCOME}") == (INTERRUPTED, TERMINATED)
