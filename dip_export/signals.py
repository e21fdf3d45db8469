"""The handler that stands for "ignored" while the interpreter may still hold a signal that arrived just before."""

from __future__ import annotations


def dropped(signum: int, frame: object) -> None:
    """A signal that changes nothing. Installed instead of SIG_IGN: a signal that arrived just before is still
    pending in the interpreter, and one pending for a signal that is now ignored is printed as a traceback
    ('Signal 2 ignored due to race condition'); this handler takes it quietly."""


# What an interrupted command says after "interrupted: " or "terminated: " (`entry.INTERRUPTED` spells it out too,
# before this module can load): a swap already done is not undone.
OUTCOME = "nothing partial was kept; what was finished before it stays"
