"""Build progress: a live status line in a terminal, plain log lines anywhere else (CI, container logs)."""

from __future__ import annotations

import re
import sys
from types import TracebackType

from rich.console import Console
from rich.status import Status

STEP = re.compile(r"^#\d+ \[([^\]]+)\] (.+)$")


class BuildProgress:
    """Echo every build log line; in a terminal, also keep the current BuildKit step under a spinner."""

    def __init__(self, name: str, console: Console | None = None) -> None:
        self.name = name
        self.console = console or Console(stderr=True, highlight=False)
        self.status: Status | None = None

    def __enter__(self) -> "BuildProgress":
        if self.console.is_terminal:
            self.status = self.console.status(f"building {self.name}")
            self.status.start()
        return self

    def line(self, text: str) -> None:
        if self.status is None:
            print(text, file=sys.stderr, flush=True)
            return
        self.console.print(text, style="dim", markup=False)
        step = STEP.match(text)
        if step:
            self.status.update(f"building {self.name}: [bold]{step.group(1)}[/] {step.group(2)[:80]}")

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.status is not None:
            self.status.stop()
