"""The error types the CLI turns into one line and an exit status, and how an error shows what the user (or a
server) gave."""

from __future__ import annotations

import signal

SHOWN = 80  # characters of a user's value an error repeats: enough to recognise it, never a screenful


class UserError(Exception):
    """Something the user can fix: the message says what is wrong and what to do."""


class Stopped(BaseException):
    """A signal asked the run to stop (SIGTERM from `docker stop`, SIGINT from Ctrl-C). A BaseException, like
    KeyboardInterrupt, so that no `except Exception` on the way swallows it; files are closed and temporary files
    removed as the stack unwinds, partial downloads kept."""

    def __init__(self, signum: int, hint: str = "") -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.hint = hint  # what the user can do next, said after "stopped by SIGTERM"

    @property
    def exit_status(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


def raise_stopped(signum: int, frame: object) -> None:
    """A signal handler: the signal becomes Stopped in the main thread."""
    raise Stopped(signum)


def own_signals() -> None:
    """Ctrl-C raises KeyboardInterrupt and SIGTERM raises Stopped, whatever dispositions the parent left: a shell's
    background job starts with SIGINT ignored, and Python then installs no KeyboardInterrupt handler (a bench run
    would never stop). A command-line entry point calls this first."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, raise_stopped)


def shown(value: object, limit: int = SHOWN) -> str:
    """`value` quoted as repr() does, cut to `limit` characters with its length said: a rejected 100 kB value must
    not become a 100 kB error line, and repr() keeps a newline in it from splitting the line."""
    text = str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"
