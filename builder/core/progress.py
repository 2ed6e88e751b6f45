"""Build and download progress: live in a terminal, plain log lines anywhere else (CI, container logs)."""

from __future__ import annotations

import re
import sys
import threading
import time
from dataclasses import dataclass
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
    """Download progress on stderr, safe to call from the threads that fetch parts. In a terminal: a bar for the total
    (its speed is the total throughput) and one per file in flight, removed when the file is done. Elsewhere
    (container logs, CI): a line when a file starts and when it is done, and at most one line for the total every
    `interval` seconds, however many files are in flight."""

    def __init__(self, console: Console | None = None, interval: float = 5.0, clock=time.monotonic, verb: str = "download") -> None:
        self.console = console or Console(stderr=True, highlight=False)
        self.interval = interval
        self.clock = clock
        self.verb = verb  # what the log lines say is under way: a bundle's save and load show the same bars
        self.lock = threading.Lock()
        self.bars: Progress | None = None
        self.total_task: TaskID | None = None
        self.files: dict[int, _FileShown] = {}
        self.total = self.n_files = self.have = 0
        self.last_line = self.window_start = 0.0
        self.window_bytes = 0

    def start(self, total: int, n_files: int) -> None:
        self.total, self.n_files = total, n_files
        self.last_line = self.window_start = self.clock()
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
        else:  # one write per line: print() writes the newline apart, and another thread's line can land between
            sys.stderr.write(text + "\n")
            sys.stderr.flush()

    def skip(self, n: int) -> None:
        """Bytes already in place (files verified before), counted as done from the start."""
        with self.lock:
            self.have += n
            if self.bars is not None:
                self.bars.update(self.total_task, completed=self.have)  # type: ignore[arg-type]

    def file_start(self, index: int, path: str, size: int) -> None:
        shown = _FileShown(path, size, self.clock())
        if self.bars is not None:
            shown.task = self.bars.add_task(f"{index}/{self.n_files} {path.rsplit('/', 1)[-1]}", total=size)
        with self.lock:
            self.files[index] = shown
        if self.bars is None:
            self.note(f"{self.verb}: {index}/{self.n_files} {path} ({human(size)})")

    def file_bytes(self, index: int, have: int) -> None:
        """The file holds `have` bytes already (a resumed partial file)."""
        with self.lock:
            self.files[index].have = self.files[index].resumed = have
            self.have += have
        self._show(index)

    def advance(self, index: int, n: int) -> None:
        with self.lock:
            self.files[index].have += n
            self.have += n
            self.window_bytes += n
        self._show(index)

    def file_done(self, index: int) -> None:
        with self.lock:
            shown = self.files.pop(index)
            self.have += shown.size - shown.have
        if self.bars is not None:
            self.bars.remove_task(shown.task)  # type: ignore[arg-type]
            self.bars.update(self.total_task, completed=self.have)  # type: ignore[arg-type]
            return
        elapsed = self.clock() - shown.since
        fetched = shown.size - shown.resumed
        speed = f" {human(fetched / elapsed)}/s" if elapsed > 0 and fetched else ""
        self.note(f"{self.verb}: {index}/{self.n_files} {shown.path} 100% {human(shown.size)}/{human(shown.size)}{speed}")

    def _show(self, index: int) -> None:
        if self.bars is not None:
            shown = self.files.get(index)
            if shown is not None:
                self.bars.update(shown.task, completed=shown.have)  # type: ignore[arg-type]
            self.bars.update(self.total_task, completed=self.have)  # type: ignore[arg-type]
            return
        with self.lock:
            now = self.clock()
            if now - self.last_line < self.interval:
                return
            elapsed, window = now - self.window_start, self.window_bytes
            self.last_line = self.window_start = now
            self.window_bytes = 0
            have, in_flight = self.have, len(self.files)
        speed = f" {human(window / elapsed)}/s" if elapsed > 0 and window else ""
        pct = 100 * have // self.total if self.total else 100
        self.note(f"{self.verb}: total {pct}% {human(have)}/{human(self.total)}{speed}, {in_flight} file(s) in flight")

    def close(self) -> None:
        if self.bars is not None:
            self.bars.stop()
            self.bars = None


@dataclass
class _FileShown:
    path: str
    size: int
    since: float
    have: int = 0
    resumed: int = 0
    task: TaskID | None = None


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
