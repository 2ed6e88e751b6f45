"""The one check for values that end up in a script, a file, a log line or a command line: what a user typed, what
a server or a mirror sent. A value that could break a line, or hide in one, is refused before anything is written."""

from __future__ import annotations

import re
import unicodedata

from builder.core.errors import UserError, shown

# Every character some reader takes as the end of a line: bash (\n), str.splitlines() (all of these), terminals (\r).
LINE_BREAKS = frozenset("\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")


def unsafe_character(value: str, *, allow_tab: bool = False) -> str | None:
    """The first character of `value` that is a line break or another control character (C0, DEL, C1), or None."""
    for ch in value:
        if ch in LINE_BREAKS or (unicodedata.category(ch) == "Cc" and not (allow_tab and ch == "\t")):
            return ch
    return None


def plain(value: str, what: str, *, allow_tab: bool = False) -> str:
    """`value` unchanged, or a UserError naming `what` where it holds a line break or a control character."""
    ch = unsafe_character(value, allow_tab=allow_tab)
    if ch is not None:
        raise UserError(f"{what} {shown(value)} holds the control character {ch!r}: give it on one line, with printable characters only")
    return value


def matching(pattern: str | re.Pattern[str], value: str, what: str, expected: str) -> str:
    """`value` if the whole of it matches `pattern` (no `$` that lets a trailing newline through), else a UserError
    saying what was expected."""
    plain(value, what)
    if not re.fullmatch(pattern, value):
        raise UserError(f"{what} {shown(value)} is not {expected}")
    return value
