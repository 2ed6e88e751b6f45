"""Parallel ranged fetches of Hub files into partial files that resume part by part (issue 14).

A file is cut into parts of `part_size` bytes; up to `connections` parts are fetched at once, across files, in file
order (the first file finishes first and is verified while the others go on). Every part writes into the one partial
file at its own offset (os.pwrite: a sparse file, no copy at the end). A file of several parts has a control record
beside its partial file (`.parts`, JSON, written atomically) saying how far each part got. It is written before any
part starts and updated after the bytes it counts are written, so it never claims a byte the file lacks: a kill
anywhere costs at most the bytes since the last update, and none of the part that holds the file's end, whose
progress the file's size gives. A file of one part needs no record: its size is its progress, as before issue 14.

Requests go to the Hub's `resolve` URL through huggingface_hub's session. The Hub answers with a redirect to a CDN
or its Xet bridge: a signed URL on another host, which httpx follows with the Range header and without the token.
That URL is kept for the file's other parts (no round trip to the Hub per part) and asked for again when the other
host refuses it (it expired).
"""

from __future__ import annotations

import errno
import json
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

import httpx2
from huggingface_hub import constants
from huggingface_hub.utils import get_session, hf_raise_for_status

from builder.core.errors import UserError
from builder.core.paths import atomic_write
from builder.core.progress import DownloadProgress, human

RETRIES = 5  # consecutive failed attempts of a part (no byte received) before giving up
RECORD_EVERY = 8 * 1024**2  # bytes of a file between updates of its control record
EXPIRED = (400, 401, 403, 404, 410)  # what a CDN answers for a signed URL past its expiry
JOIN_ON_STOP = 1.0  # seconds to let the parts stop by themselves after a signal or an error


class LinkExpired(Exception):
    """The host the Hub redirected to refused its signed URL: past its expiry, so ask the Hub for a new one."""


@dataclass(frozen=True)
class Part:
    start: int
    end: int  # exclusive

    @property
    def size(self) -> int:
        return self.end - self.start


def layout(size: int, part_size: int) -> tuple[Part, ...]:
    if size == 0:
        return (Part(0, 0),)
    return tuple(Part(s, min(s + part_size, size)) for s in range(0, size, part_size))


RECORD_SUFFIX = ".parts"  # a partial file's control record: its name plus this (download.py keeps room for it)


def record_path(partial: Path) -> Path:
    return partial.with_name(partial.name + RECORD_SUFFIX)


def progress_of(partial: Path, size: int, part_size: int) -> tuple[tuple[Part, ...], list[int]]:
    """The parts of a file of `size` bytes and how many bytes of each the partial file holds, from its control record
    (whose part size wins over `part_size`, so a resume with another --part-size reuses what is there) and its size.
    No record: the partial file came from a single stream (one part, or a download before issue 14), all prefix.
    A record that cannot be read: nothing (the caller starts the file over)."""
    have_size = partial.stat().st_size if partial.is_file() else 0
    if not record_path(partial).exists():
        parts = layout(size, part_size)
        return parts, [min(p.size, max(0, have_size - p.start)) for p in parts]
    try:
        record = json.loads(record_path(partial).read_text())
        parts = layout(size, int(record["part_size"]))
        have = [int(h) for h in record["have"]]
        if record["size"] != size or len(have) != len(parts) or min(have) < 0:
            raise ValueError("a record of another file")
    except (OSError, ValueError, KeyError, TypeError):  # edited by hand: no byte of the partial file is trusted
        parts = layout(size, part_size)
        return parts, [0] * len(parts)
    # The part holding the file's last byte wrote everything from its start up to there.
    for i, p in enumerate(parts):
        if p.start < have_size <= p.end:
            have[i] = max(have[i], have_size - p.start)
    return parts, [min(h, p.size, max(0, have_size - p.start)) for h, p in zip(have, parts)]


def missing(partial: Path, size: int) -> int:
    """Bytes of the file still to fetch: the free-space preflight's count of what is in flight. (The part size only
    matters where no record says it, and then the file is one prefix, whatever its parts.)"""
    _, have = progress_of(partial, size, max(size, 1))
    return size - sum(have)


@dataclass(frozen=True)
class TransferSettings:
    connections: int
    part_size: int
    endpoint: str
    headers: dict[str, str]  # the Hub's headers, with the token: sent to the endpoint's host only


@dataclass(frozen=True)
class Wanted:
    """A file to fetch: where its bytes go, its Hub URL and what to do once they are all there (verify, move)."""

    index: int
    path: str
    size: int
    url: str
    partial: Path


@dataclass
class _File:
    """One file in flight. Its lock guards `have`, `target` and the control record."""

    wanted: Wanted
    parts: tuple[Part, ...]
    have: list[int]
    fd: int
    left: int  # parts not finished
    target: str | None = None  # the signed URL the Hub redirected to, reused until refused
    recorded: int = 0  # bytes fetched since the last record update
    started: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def write_record(self) -> None:
        if len(self.parts) > 1:
            record = {"size": self.wanted.size, "part_size": self.parts[0].size, "have": self.have}
            atomic_write(record_path(self.wanted.partial), json.dumps(record))
        self.recorded = 0


def _origin(url: str) -> tuple[str, str, int | None]:
    u = urlsplit(url)
    return u.scheme, (u.hostname or ""), u.port


def _write_at(fd: int, data: memoryview, offset: int) -> None:
    """All of `data` at `offset`, or an OSError: pwrite may write less (a disk filling up), and a part must never
    count a byte that is not in the file."""
    while data:
        n = os.pwrite(fd, data, offset)
        if n == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        data, offset = data[n:], offset + n


class Transfer:
    """Fetch `wanted` files with up to `settings.connections` ranged requests at once; `finish(wanted)` runs once all of
    a file's bytes are in its partial file (verification and the move into place), in the worker that fetched its
    last part. Raises the first failure, or the signal's exception, after asking every part to stop."""

    def __init__(self, settings: TransferSettings, progress: DownloadProgress, finish: Callable[[Wanted], None]) -> None:
        self.settings = settings
        self.progress = progress
        self.finish = finish
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.jobs: queue.Queue[tuple[_File, int | None]] = queue.Queue()
        self.files: list[_File] = []

    def run(self, wanted: list[Wanted]) -> None:
        for w in wanted:
            w.partial.parent.mkdir(parents=True, exist_ok=True)
            record = record_path(w.partial)
            for tmp in record.parent.glob(f".{record.name}.*.tmp"):  # a killed run's half-written record
                tmp.unlink(missing_ok=True)
            parts, have = progress_of(w.partial, w.size, self.settings.part_size)
            fd = os.open(w.partial, os.O_RDWR | os.O_CREAT, 0o644)
            if not sum(have):
                os.ftruncate(fd, 0)  # nothing in it is trusted: no stale byte may be credited to a part later
            f = _File(w, parts, have, fd, left=sum(1 for h, p in zip(have, parts) if h < p.size))
            f.write_record()  # before any part writes: a record-less partial file is read as one prefix
            self.files.append(f)
            for i, (h, p) in enumerate(zip(have, parts)):
                if h < p.size:
                    self.jobs.put((f, i))
            if not f.left:
                self.jobs.put((f, None))  # every byte is there (killed while verifying): verify only
        workers = [threading.Thread(target=self._work, daemon=True) for _ in range(min(self.settings.connections, self.jobs.qsize()))]
        for t in workers:
            t.start()
        try:
            for t in workers:
                while t.is_alive():
                    t.join(0.2)  # a timed join: SIGTERM and SIGINT raise here, in the main thread
        finally:
            self.stop.set()
            deadline = time.monotonic() + JOIN_ON_STOP
            for t in workers:
                t.join(max(0.0, deadline - time.monotonic()))
            for f in self.files:
                with f.lock:
                    if f.left:
                        f.write_record()
            if not any(t.is_alive() for t in workers):  # never close a descriptor a part may still write to
                for f in self.files:
                    os.close(f.fd)
        if self.errors:
            raise self.errors[0]

    def _work(self) -> None:
        while not self.stop.is_set():
            try:
                f, i = self.jobs.get_nowait()
            except queue.Empty:
                return
            try:
                self._start(f)
                if i is not None:
                    self._fetch(f, i)
                    with f.lock:
                        if f.have[i] < f.parts[i].size:
                            return  # stopped: the main thread writes the record
                        f.left -= 1
                        last = f.left == 0
                        f.write_record()
                else:
                    last = True
                if last and not self.stop.is_set():
                    # Every byte is in: the partial file's size alone now says so, should a kill come next.
                    record_path(f.wanted.partial).unlink(missing_ok=True)
                    self.finish(f.wanted)
                    self.progress.file_done(f.wanted.index)
            except BaseException as e:  # noqa: BLE001 - handed to the main thread, which raises it
                self.errors.append(e)
                self.stop.set()
                return

    def _start(self, f: _File) -> None:
        with f.lock:
            if f.started:
                return
            f.started = True
        self.progress.file_start(f.wanted.index, f.wanted.path, f.wanted.size)
        self.progress.file_bytes(f.wanted.index, sum(f.have))

    def _headers(self, url: str, start: int, part: Part, size: int) -> dict[str, str]:
        headers = dict(self.settings.headers)
        if _origin(url) != _origin(self.settings.endpoint):
            headers.pop("authorization", None)  # the token is for the Hub, never for the host it redirects to
            headers.pop("Authorization", None)
        if start or part.end < size:
            headers["Range"] = f"bytes={start}-" if part.end == size else f"bytes={start}-{part.end - 1}"
        return headers

    def _fetch(self, f: _File, i: int) -> None:
        """Bring part i to its end, resuming from what it holds; retries dropped connections, 5xx and expired links."""
        w, part = f.wanted, f.parts[i]
        failures = 0
        while not self.stop.is_set():
            start = part.start + f.have[i]
            if start >= part.end:
                return
            with f.lock:
                url = f.target or w.url
            got = 0
            try:
                with get_session().stream("GET", url, headers=self._headers(url, start, part, w.size), follow_redirects=True,
                                          timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT) as r:
                    elsewhere = _origin(str(r.url)) != _origin(self.settings.endpoint)
                    if elsewhere and r.status_code in EXPIRED:
                        with f.lock:
                            f.target = None
                        raise LinkExpired(f"HTTP {r.status_code} from {urlsplit(str(r.url)).hostname}")
                    if r.status_code >= 500 or r.status_code == 429:
                        raise httpx2.RemoteProtocolError(f"HTTP {r.status_code}")
                    if r.status_code == 416 and len(f.parts) == 1:  # the partial file does not fit the remote one
                        with f.lock:
                            f.have[i] = 0
                        os.ftruncate(f.fd, 0)
                        continue
                    hf_raise_for_status(r)
                    if elsewhere:
                        with f.lock:
                            f.target = str(r.url)
                    start = self._check_range(f, i, r, start)
                    for chunk in r.iter_bytes():
                        if self.stop.is_set():
                            return
                        n = min(len(chunk), part.end - start)
                        _write_at(f.fd, memoryview(chunk)[:n], start)
                        start += n
                        got += n
                        self._advance(f, i, n)
                        if start >= part.end:
                            break
                    if not got and start < part.end:  # an empty body is a failure too, or this would loop forever
                        raise httpx2.RemoteProtocolError("the response ended before its first byte")
            except (httpx2.TransportError, LinkExpired) as e:
                if self.stop.is_set():
                    return  # stopping: the connection broke because of it, or does not matter any more; say nothing
                failures = 0 if got else failures + 1
                if failures >= RETRIES:
                    raise UserError(f"{w.path}: the download failed {RETRIES} times in a row ({type(e).__name__}: {e}); run the same command again to resume") from None
                if isinstance(e, LinkExpired):  # a new link needs no back-off
                    self.progress.note(f"{w.path}: the download link was refused ({e}): it expired; asking the Hub for a new one")
                    continue
                self.progress.note(f"{w.path}: connection lost after {human(start)} ({type(e).__name__}), resuming")
                self.stop.wait(min(2**failures, 30))

    def _check_range(self, f: _File, i: int, r: httpx2.Response, start: int) -> int:
        """Where the body starts: a server that ignores Range sends the whole file, which only a one-part file can use."""
        if r.status_code == 206:
            sent = r.headers.get("Content-Range", "")
            if not sent.startswith(f"bytes {start}-"):
                raise UserError(f"{f.wanted.path}: asked for bytes from {start}, the server sent {sent or 'no Content-Range'}; run the same command again")
            return start
        if len(f.parts) == 1:
            with f.lock:
                f.have[i] = 0  # the whole file follows: write it from the start
            return 0
        raise UserError(f"{f.wanted.path}: the server ignores HTTP Range requests; run with --part-size larger than the file to fetch it in one piece")

    def _advance(self, f: _File, i: int, n: int) -> None:
        with f.lock:
            f.have[i] += n
            f.recorded += n
            if f.recorded >= RECORD_EVERY:
                f.write_record()
        self.progress.advance(f.wanted.index, n)
