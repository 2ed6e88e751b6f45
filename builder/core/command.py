"""The `builder` group's behaviour on failure: every error is one line on stderr and an exit status."""

from __future__ import annotations

import signal
import sys
from typing import Any

import click

from builder.core.errors import Stopped, UserError, own_signals, shown
from builder.core.values import unsafe_character

ERROR_MAX = 2000  # characters of an error line: a backstop; messages cut the user's values shorter themselves
ARGUMENT_MAX = 4096  # characters of one argument: PATH_MAX; no option of builder takes more
USAGE_MAX = 300  # click's usage messages: short but for the value they repeat


def error_line(message: str, limit: int = ERROR_MAX) -> None:
    """One line on stderr: newlines in a message (or in a value it repeats) would split it."""
    line = " ".join(message.split())
    click.echo(f"error: {line if len(line) <= limit else line[:limit] + '...'}", err=True)


class Command(click.Group):
    """A UserError or a usage error exits 2, a signal 128 + its number (Ctrl-C 130, SIGTERM 143), as shells report
    a process that signal killed."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:  # type: ignore[override]
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        own_signals()
        try:
            status = super().main(*args, standalone_mode=False, **kwargs)
        except click.UsageError as e:  # click's own three lines (usage, hint, error) as one
            where = e.ctx.command_path if e.ctx else "builder"
            error_line(f"{e.format_message()} (see '{where} --help')", USAGE_MAX)
            sys.exit(e.exit_code)
        except click.ClickException as e:
            error_line(e.format_message(), USAGE_MAX)
            sys.exit(e.exit_code)
        except click.Abort:  # Ctrl-C outside a command (click turns KeyboardInterrupt into Abort there)
            error_line("interrupted")
            sys.exit(128 + signal.SIGINT)
        sys.exit(status if isinstance(status, int) else 0)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """Every word typed passes the one check (builder/core/values.py) before any command sees it: no value with a
        line break or a control character reaches a script, a file, a log or a command line."""
        for arg in args:
            if len(arg) > ARGUMENT_MAX:
                raise click.UsageError(f"argument {shown(arg)} is longer than {ARGUMENT_MAX} characters", ctx)
            ch = unsafe_character(arg)
            if ch is not None:
                raise click.UsageError(f"argument {shown(arg)} holds the control character {ch!r}: give every value on one line, "
                                       "with printable characters only", ctx)
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except UserError as e:
            error_line(str(e))
            ctx.exit(2)
        except OSError as e:  # a path the system refuses (too long, no permission, ...) that no check foresaw
            error_line(f"{e.strerror or e}{f': {shown(e.filename)}' if e.filename else ''}")
            ctx.exit(1)
        except KeyboardInterrupt:
            error_line("interrupted (SIGINT)")
            ctx.exit(128 + signal.SIGINT)
        except Stopped as e:
            error_line(f"stopped by {e}" + (f"; {e.hint}" if e.hint else ""))
            ctx.exit(e.exit_status)
