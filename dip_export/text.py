"""Text from a file or a caller as a message holds it: every character that is not seen as itself escaped.

Standard library only: the exception family (`errors`) escapes its messages here, and it loads before anything
else of the package. Escaping is idempotent (a backslash is never doubled), so text escaped when an exception
is made is escaped once when printed (`messages.plain_line`).
"""

from __future__ import annotations

import unicodedata

_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}
# control, format (direction marks, zero-width, soft hyphen, tags), surrogate, private use, line/paragraph separator
_UNSEEN = frozenset({"Cc", "Cf", "Cs", "Co", "Zl", "Zp"})


def _code(char: str) -> str:
    point = ord(char)
    return f"\\x{point:02x}" if point < 0x100 else f"\\u{point:04x}" if point <= 0xFFFF else f"\\U{point:08x}"


def escaped(raw: str) -> list[str]:
    """Each character of `raw` as shown: newline/tab/return as `\\n` `\\t` `\\r`, any other character not seen as
    itself (`_UNSEEN` categories, and a combining mark with no letter under it) as `\\xNN`, `\\uNNNN` or
    `\\UNNNNNNNN`; anything else, a backslash too, as it is."""
    parts: list[str] = []
    before = ""
    for char in raw:
        kind = unicodedata.category(char)
        if char in _NAMED:
            parts.append(_NAMED[char])
        elif kind in _UNSEEN:
            parts.append(_code(char))
        elif kind[0] == "M" and (not before or unicodedata.category(before)[0] not in "LMN"):
            parts.append(_code(char))  # a mark with no letter to sit on would merge with the tool's own text
        else:
            parts.append(char)
        before = char
    return parts


def visible(text: str, limit: int | None = None) -> str:
    """`text` with every character that is not seen as itself escaped (`escaped`) and nothing else changed: what a
    message holds of a value from a file or a caller, so that no exception carries a control character.
    Longer than `limit` characters: cut to that many, "..." included, never inside an escape."""
    parts = escaped(text)
    if limit is None or sum(map(len, parts)) <= limit:
        return "".join(parts)
    kept: list[str] = []
    used = 3  # the "..."
    for part in parts:
        if used + len(part) > limit:
            break
        kept.append(part)
        used += len(part)
    return "".join(kept) + "..."
