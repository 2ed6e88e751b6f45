"""Build and download progress: live in a terminal, plain log lines anywhere else (CI, container logs)."""

from __future__ import annotations

import re
import sys
import time
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
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


def human(n: float) -> str:
    """Bytes in binary units, as `df -h` and the free-space message show them: 12.3 GiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


class DownloadProgress:
    """Download progress on stderr: rich bars (the current file and the total) in a terminal; elsewhere (container
    logs, CI) a plain line per file and at most one progress line every `interval` seconds."""

    def __init__(self, console: Console | None = None, interval: float = 5.0, clock=time.monotonic) -> None:
        self.console = console or Console(stderr=True, highlight=False)
        self.interval = interval
        self.clock = clock
        self.bars: Progress | None = None
        self.total_task: TaskID | None = None
        self.file_task: TaskID | None = None
        self.total = self.n_files = self.index = self.file_size = 0
        self.done_bytes = self.file_have = 0  # bytes of finished files; bytes of the current one
        self.path = ""
        self.last_line = self.window_start = 0.0
        self.window_bytes = 0

    def start(self, total: int, n_files: int) -> None:
        self.total, self.n_files = total, n_files
        if self.console.is_terminal:
            self.bars = Progress(
                TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), DownloadColumn(binary_units=True),
                TransferSpeedColumn(), TimeRemainingColumn(), console=self.console, transient=False,
            )
            self.bars.start()
            self.total_task = self.bars.add_task(f"total ({n_files} files)", total=total)

    def note(self, text: str) -> None:
        if self.bars is not None:
            self.bars.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=sys.stderr, flush=True)

    def file_start(self, index: int, path: str, size: int) -> None:
        self.index, self.path, self.file_size, self.file_have = index, path, size, 0
        self.window_start, self.window_bytes = self.clock(), 0
        if self.bars is not None:
            if self.file_task is not None:
                self.bars.remove_task(self.file_task)
            self.file_task = self.bars.add_task(f"{index}/{self.n_files} {path.rsplit('/', 1)[-1]}", total=size)
        else:
            self.note(f"download: {index}/{self.n_files} {path} ({human(size)})")

    def file_bytes(self, have: int) -> None:
        """The current file holds `have` bytes already (a resumed partial file, or a restart after a dropped connection)."""
        self.file_have = have
        if have:
            self._show(force=False)

    def advance(self, n: int) -> None:
        self.file_have += n
        self.window_bytes += n
        self._show(force=False)

    def file_done(self) -> None:
        self.file_have = self.file_size
        self._show(force=True)
        self.done_bytes += self.file_size

    def _show(self, force: bool) -> None:
        if self.bars is not None:
            assert self.file_task is not None and self.total_task is not None
            self.bars.update(self.file_task, completed=self.file_have)
            self.bars.update(self.total_task, completed=self.done_bytes + self.file_have)
            return
        now = self.clock()
        if not force and now - self.last_line < self.interval:
            return
        self.last_line = now
        elapsed = now - self.window_start
        speed = f" {human(self.window_bytes / elapsed)}/s" if elapsed > 0 and self.window_bytes else ""
        pct = 100 * self.file_have // self.file_size if self.file_size else 100
        self.note(f"download: {self.index}/{self.n_files} {self.path} {pct}% {human(self.file_have)}/{human(self.file_size)}{speed}")

    def close(self) -> None:
        if self.bars is not None:
            self.bars.stop()
            self.bars = None


class CountProgress:
    """Progress through steps of counted work (a benchmark's levels of N requests) on stderr: a rich bar per step in
    a terminal; elsewhere a plain line per step and at most one count line every `interval` seconds."""

    def __init__(self, name: str, console: Console | None = None, interval: float = 10.0, clock=time.monotonic) -> None:
        self.name = name
        self.console = console or Console(stderr=True, highlight=False)
        self.interval = interval
        self.clock = clock
        self.bars: Progress | None = None
        self.task: TaskID | None = None
        self.label = ""
        self.total = self.count = self.failed = 0
        self.last_line = 0.0

    def start(self, label: str, total: int) -> None:
        self.label, self.total, self.count, self.failed = label, total, 0, 0
        self.last_line = self.clock()
        if self.console.is_terminal:
            if self.bars is None:
                self.bars = Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                                     TextColumn("{task.completed}/{task.total}"), TimeRemainingColumn(), console=self.console)
                self.bars.start()
            self.task = self.bars.add_task(f"{self.name}: {label}", total=total)
        else:
            self.note(f"{self.name}: {label}: {total} requests")

    def advance(self, ok: bool) -> None:
        self.count += 1
        self.failed += not ok
        if self.bars is not None:
            assert self.task is not None
            self.bars.update(self.task, completed=self.count, description=f"{self.name}: {self.label}" + (f" ({self.failed} failed)" if self.failed else ""))
            return
        now = self.clock()
        if now - self.last_line >= self.interval:
            self.last_line = now
            self.note(f"{self.name}: {self.label}: {self.count}/{self.total}" + (f", {self.failed} failed" if self.failed else ""))

    def done(self, summary: str) -> None:
        self.note(f"{self.name}: {summary}")

    def note(self, text: str) -> None:
        if self.bars is not None:
            self.bars.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bars is not None:
            self.bars.stop()
            self.bars = None
