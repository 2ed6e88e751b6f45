"""A local stand-in for the Hugging Face Hub: the few HTTP endpoints huggingface_hub and `builder download` call.

The Hub is unreachable from the test machines, so the suite serves synthetic repos from here and points
`HF_ENDPOINT` at it. Implemented (as huggingface_hub 2.x calls them, read from its source):
- GET  /api/models/{repo}[/revision/{rev}]          model_info: sha (the commit), gated, siblings
- GET  /api/models/{repo}/tree/{rev}[/{path}]       list_repo_tree: size, oid and lfs {oid: sha256, size} per file
- HEAD/GET /{repo}/resolve/{rev}/{path}             ETag, X-Repo-Commit, X-Linked-Etag/-Size, Content-Length,
                                                    Range -> 206 + Content-Range
- errors as the Hub sends them: 404 + X-Error-Code RepoNotFound / RevisionNotFound / EntryNotFound; a gated repo
  answers resolve with 401 (no token) or 403 (a wrong one) + X-Error-Code GatedRepo.
No Xet headers are sent, so clients take the plain HTTP path. Faults for resume tests: `cut` (close the
connection after N body bytes, once per file), `throttle` (bytes per second per connection, as a CDN caps each one)
and `total` (bytes per second across all connections: the link).
`redirecting(ttl)` answers resolve as huggingface.co does for LFS and Xet files: a 302 (with the file's X-Linked-*
headers) to another host, `cdn_url` (127.0.0.2, its own server), with a signed URL that expires `ttl` seconds after
it was issued; that host answers an expired or forged one with 403, as S3 and CloudFront do. Requests to either host
are logged with their host, Range and whether they carried an Authorization header.
Listing-only repos (`add_listing`): a real repository's file names and sizes, hundreds of GB, without the bytes: for
dry runs and quant selection against the layouts in tests/support/hub_layouts.py.
Hostile listings: a repo may hold paths such as `../../escape-Q4_K_M.gguf` or `/tmp/x.gguf` (the real Hub would
not, a malicious mirror might); the listing names them as given and their downloads are served at the URLs a
client ends up requesting (httpx drops `..` segments, an absolute path doubles the slash).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import posixpath
import secrets
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator
from urllib.parse import parse_qs, quote, unquote, urlsplit

TEST_TOKEN = "hf_r1kit_local_test_token"  # the only token the local Hub accepts for gated repos
CDN_HOST = "127.0.0.2"  # the host the Hub redirects to: another origin, so clients must drop the token
STEP = 64 * 1024  # bytes per write of a response body, at most


@dataclass(frozen=True)
class HubFile:
    path: str
    data: bytes
    lfs: bool
    listed_size: int | None = None  # set: a listing-only file of this size (a real repo's layout), no bytes to fetch

    @property
    def size(self) -> int:
        return len(self.data) if self.listed_size is None else self.listed_size

    # Cached: every request asks for the ETags (and the repo's commit, all of them), and hashing a benchmark's
    # gigabytes per request would make the stand-in, not the client, the bottleneck.
    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @cached_property
    def git_oid(self) -> str:
        return hashlib.sha1(b"blob %d\0" % len(self.data) + self.data).hexdigest()

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.git_oid


@dataclass
class HubRepo:
    repo_id: str
    files: dict[str, HubFile]
    gated: bool = False

    @property
    def commit(self) -> str:
        return hashlib.sha1("".join(f"{p}:{f.etag}" for p, f in sorted(self.files.items())).encode()).hexdigest()


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    range: str | None
    authorized: bool  # carried the test token
    host: str = ""  # the host it was sent to: the Hub's, or CDN_HOST
    auth: bool = False  # carried any Authorization header
    status: int = 0  # for the CDN's requests: 403 for an expired link


@dataclass
class Faults:
    cut: dict[str, int] = field(default_factory=dict)  # repo path -> close after this many body bytes (once)
    throttle: float | None = None  # bytes per second per response (a connection)
    total: "Pace | None" = None  # bytes per second across all responses
    ignore_range: bool = False  # answer a Range request with the whole file, as some mirrors do


@dataclass
class Served:
    """Body bytes sent, and when the first and the last left: a benchmark's transfer time as the server sees it."""

    bytes: int = 0
    first: float | None = None
    last: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, n: int) -> None:
        now = time.monotonic()
        with self.lock:
            self.bytes += n
            self.first = now if self.first is None else self.first
            self.last = now

    @property
    def seconds(self) -> float:
        return (self.last - self.first) if self.first is not None and self.last is not None else 0.0


class Pace:
    """Lets `rate` bytes per second through, across threads: a token bucket holding `burst` seconds' worth, as traffic
    shapers do, so that a sender woken late (a busy machine) catches up instead of losing the time."""

    def __init__(self, rate: float, burst: float = 0.05) -> None:
        self.rate, self.burst = rate, burst
        self.next = time.monotonic()  # when the bucket is full again (every byte asked for has passed)
        self.lock = threading.Lock()

    def take(self, n: int) -> None:
        with self.lock:
            now = time.monotonic()
            self.next = max(self.next, now - self.burst) + n / self.rate
            wait = self.next - now - self.burst
        if wait > 0:
            time.sleep(wait)


class LocalHub:
    """A threaded HTTP server holding synthetic repos. `with LocalHub() as hub:` serves on hub.url."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.repos: dict[str, HubRepo] = {}
        self.requests: list[Request] = []
        self.faults = Faults()
        self.served = Served()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, port), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self.ttl: float | None = None  # set: resolve redirects to the CDN with links valid this many seconds
        self._key = secrets.token_bytes(16)  # signs the CDN links
        self._cdn = ThreadingHTTPServer((CDN_HOST, 0), _handler(self, cdn=True))
        self._cdn.daemon_threads = True
        self._cdn_thread = threading.Thread(target=self._cdn.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"

    @property
    def cdn_url(self) -> str:
        return f"http://{CDN_HOST}:{self._cdn.server_address[1]}"

    def __enter__(self) -> "LocalHub":
        self._thread.start()
        self._cdn_thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for server in (self._server, self._cdn):
            server.shutdown()
            server.server_close()

    def sign(self, repo_id: str, path: str, expires: float) -> str:
        return hmac.new(self._key, f"{repo_id}\0{path}\0{expires:.3f}".encode(), hashlib.sha256).hexdigest()

    def cdn_link(self, repo_id: str, path: str) -> str:
        """A signed link to a file on the CDN host, valid for `ttl` seconds from now."""
        expires = time.time() + (self.ttl or 0)
        return f"{self.cdn_url}/{quote(repo_id)}/{quote(path)}?Expires={expires:.3f}&Signature={self.sign(repo_id, path, expires)}"

    @contextmanager
    def redirecting(self, ttl: float = 3600) -> Iterator["LocalHub"]:
        """Resolve redirects LFS files to the CDN host for the duration of a test, as huggingface.co does."""
        self.ttl = ttl
        try:
            yield self
        finally:
            self.ttl = None

    def add_repo(self, repo_id: str, files: dict[str, bytes], *, gated: bool = False, lfs_min: int = 1024) -> HubRepo:
        """Files of `lfs_min` bytes or more are LFS files (with a sha256), as .gguf and .safetensors are on the Hub."""
        repo = HubRepo(repo_id, {p: HubFile(p, d, len(d) >= lfs_min) for p, d in files.items()}, gated)
        self.repos[repo_id] = repo
        return repo

    def add_listing(self, repo_id: str, sizes: dict[str, int]) -> HubRepo:
        """A repo that only lists its files, with the sizes given (a real repository's layout, hundreds of GB): for
        dry runs and quant selection; fetching one of its files answers 404, as a file missing from the CDN would."""
        repo = HubRepo(repo_id, {p: HubFile(p, b"", p.endswith((".gguf", ".safetensors")), size) for p, size in sizes.items()})
        self.repos[repo_id] = repo
        return repo

    def log(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def requests_for(self, path_suffix: str, method: str = "GET") -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.method == method and r.path.endswith(path_suffix)]

    @contextmanager
    def faulty(self, *, cut: dict[str, int] | None = None, throttle: float | None = None, total: float | None = None,
               ignore_range: bool = False) -> Iterator["LocalHub"]:
        """Inject faults for the duration of a test; the shared (session) Hub is healthy again afterwards."""
        self.faults = Faults(dict(cut or {}), throttle, Pace(total) if total else None, ignore_range)
        try:
            yield self
        finally:
            self.faults = Faults()


def _handler(hub: LocalHub, cdn: bool = False) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # keep pytest's output clean
            pass

        def do_HEAD(self) -> None:
            self._route(body=False)

        def do_GET(self) -> None:
            self._route(body=True)

        # --- helpers -----------------------------------------------------------------------------------------

        def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, *, send_body: bool = True) -> None:
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if send_body and body:
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the client went away: its loss
                    pass

        def _json(self, value: object, send_body: bool) -> None:
            self._send(200, json.dumps(value).encode(), {"Content-Type": "application/json"}, send_body=send_body)

        def _error(self, status: int, code: str, message: str, send_body: bool) -> None:
            body = json.dumps({"error": message}).encode()
            self._send(status, body, {"Content-Type": "application/json", "X-Error-Code": code, "X-Error-Message": message}, send_body=send_body)

        def _repo(self, repo_id: str, rev: str | None, send_body: bool) -> HubRepo | None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._error(404, "RepoNotFound", "Repository not found", send_body)
                return None
            if rev not in (None, "main", repo.commit):
                self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}", send_body)
                return None
            return repo

        # --- routes ------------------------------------------------------------------------------------------

        def _route(self, body: bool) -> None:
            url = urlsplit(self.path)
            parts = [unquote(p) for p in url.path.split("/") if p]
            auth = self.headers.get("Authorization", "")
            if cdn:
                return self._cdn(url, parts, auth, body)
            hub.log(Request(self.command, unquote(url.path), self.headers.get("Range"), auth == f"Bearer {TEST_TOKEN}", self.headers.get("Host", ""), bool(auth)))
            if parts[:2] == ["api", "models"] and len(parts) >= 4:
                repo_id = "/".join(parts[2:4])
                rest = parts[4:]
                if not rest or rest[0] == "revision":
                    return self._info(repo_id, rest[1] if len(rest) > 1 else None, body)
                if rest[0] == "tree" and len(rest) >= 2:
                    return self._tree(repo_id, rest[1], "/".join(rest[2:]), "recursive=true" in url.query.lower(), body)
            if len(parts) >= 5 and parts[2] == "resolve":
                return self._resolve("/".join(parts[:2]), parts[3], "/".join(parts[4:]), auth, body)
            hostile = self._normalized(unquote(url.path))
            if hostile is not None:
                return self._resolve(hostile[0], "main", hostile[1], auth, body)
            self._error(404, "EntryNotFound", f"no route {url.path}", body)

        def _cdn(self, url, parts: list[str], auth: str, body: bool) -> None:
            """The host the Hub redirects to: serves a file for a link the Hub signed, until it expires."""
            query = parse_qs(url.query)
            repo_id, path = "/".join(parts[:2]), "/".join(parts[2:])
            expires = float(query.get("Expires", ["0"])[0])
            valid = hmac.compare_digest(query.get("Signature", [""])[0], hub.sign(repo_id, path, expires))
            repo = hub.repos.get(repo_id)
            f = repo.files.get(path) if repo else None
            status = 403 if not valid or time.time() > expires else (200 if f else 404)
            hub.log(Request(self.command, unquote(url.path), self.headers.get("Range"), auth == f"Bearer {TEST_TOKEN}",
                            self.headers.get("Host", ""), bool(auth), status))
            if status != 200:
                message = b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>"
                return self._send(status, message, {"Content-Type": "application/xml"}, send_body=body)
            assert f is not None
            self._file(f, {"ETag": f'"{f.etag}"', "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}, body)

        def _normalized(self, path: str) -> tuple[str, str] | None:
            """The repo file whose resolve URL, once the client normalized its `..` segments, is `path`."""
            for repo_id, repo in hub.repos.items():
                for name in repo.files:
                    for rev in ("main", repo.commit):
                        if posixpath.normpath(f"/{repo_id}/resolve/{rev}/{name}") == path:
                            return repo_id, name
            return None

        def _info(self, repo_id: str, rev: str | None, body: bool) -> None:
            repo = self._repo(repo_id, rev, body)
            if repo is None:
                return
            self._json({
                "_id": repo.commit[:24], "id": repo_id, "modelId": repo_id, "sha": repo.commit, "private": False,
                "gated": "manual" if repo.gated else False, "disabled": False, "downloads": 0, "likes": 0, "tags": [],
                "siblings": [{"rfilename": p} for p in sorted(repo.files)],
                "lastModified": "2025-01-20T00:00:00.000Z", "createdAt": "2025-01-20T00:00:00.000Z",
            }, body)

        def _tree(self, repo_id: str, rev: str, folder: str, recursive: bool, body: bool) -> None:
            repo = self._repo(repo_id, rev, body)
            if repo is None:
                return
            prefix = folder.rstrip("/") + "/" if folder else ""
            entries, folders = [], set()
            for path, f in sorted(repo.files.items()):
                if not path.startswith(prefix):
                    continue
                rel = path[len(prefix):]
                parts = rel.split("/")
                for i in range(1, len(parts)):  # every folder on the way, once
                    if recursive or i == 1:
                        folders.add(prefix + "/".join(parts[:i]))
                if "/" in rel and not recursive:
                    continue
                entry = {"type": "file", "oid": f.git_oid, "size": f.size, "path": path}
                if f.lfs:
                    entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": 134}
                entries.append(entry)
            dirs = [{"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d} for d in sorted(folders)]
            self._json(dirs + entries, body)

        def _resolve(self, repo_id: str, rev: str, path: str, auth: str, body: bool) -> None:
            repo = self._repo(repo_id, rev, body)
            if repo is None:
                return
            if repo.gated and auth != f"Bearer {TEST_TOKEN}":
                status = 403 if auth else 401
                return self._error(status, "GatedRepo", f"Access to model {repo_id} is restricted. You must have access to it and be authenticated to access it. Please log in.", body)
            f = repo.files.get(path) or repo.files.get("/" + path)  # an absolute path, listed as such
            if f is None or f.listed_size is not None:
                return self._error(404, "EntryNotFound", f"{path} does not exist on {rev}", body)
            headers = {"ETag": f'"{f.etag}"', "X-Repo-Commit": repo.commit, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
            if f.lfs:
                headers.update({"X-Linked-Etag": f'"{f.sha256}"', "X-Linked-Size": str(len(f.data))})
            if f.lfs and hub.ttl is not None:
                return self._send(302, b"", dict(headers, Location=hub.cdn_link(repo_id, f.path)), send_body=body)
            self._file(f, headers, body)

        def _file(self, f: HubFile, headers: dict[str, str], body: bool) -> None:
            """A file's bytes, or the Range asked for (206 + Content-Range)."""
            start, end, status = 0, len(f.data) - 1, 200
            wanted = None if hub.faults.ignore_range else self.headers.get("Range")
            if wanted and body:
                spec = wanted.removeprefix("bytes=").split("-")
                start = int(spec[0])
                end = int(spec[1]) if spec[1] else len(f.data) - 1
                if start >= len(f.data):
                    return self._send(416, b"", {"Content-Range": f"bytes */{len(f.data)}"})
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end}/{len(f.data)}"
            chunk = memoryview(f.data)[start:end + 1]
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(chunk)))
            self.end_headers()
            if body:
                self._stream(f.path, chunk)

        def _stream(self, path: str, data: memoryview) -> None:
            faults = hub.faults
            limit = faults.cut.pop(path, None)  # one cut per file: the retry gets the rest
            sent = 0
            step = int(min(STEP, max(4096, faults.throttle / 20))) if faults.throttle else STEP  # a throttled body flows smoothly
            pace = Pace(faults.throttle) if faults.throttle else None
            while sent < len(data):
                if limit is not None and sent >= limit:
                    self.close_connection = True
                    self.wfile.flush()
                    self.connection.shutdown(2)  # drop it mid-body, as a broken network does
                    return
                piece = data[sent:sent + (step if limit is None else min(step, limit - sent))]
                for cap in (faults.total, pace):
                    if cap is not None:
                        cap.take(len(piece))
                try:
                    self.wfile.write(piece)
                except (BrokenPipeError, ConnectionResetError):
                    return
                sent += len(piece)
                hub.served.add(len(piece))

    return Handler
