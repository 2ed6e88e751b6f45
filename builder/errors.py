"""The one error type the CLI turns into a one-line message and exit status 2, and how an error shows what the user
(or a server) gave."""

from __future__ import annotations

SHOWN = 80  # characters of a user's value an error repeats: enough to recognise it, never a screenful


class UserError(Exception):
    """Something the user can fix: the message says what is wrong and what to do."""


def shown(value: object, limit: int = SHOWN) -> str:
    """`value` quoted as repr() does, cut to `limit` characters with its length said: a rejected 100 kB value must
    not become a 100 kB error line, and repr() keeps a newline in it from splitting the line."""
    text = str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"
