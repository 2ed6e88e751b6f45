"""`builder bump` and the bump workflow's step, against an index that answers as PyPI does today, and against PyPI.

The stand-in index serves llama-cpp-python's JSON document in PyPI's shape (`info.version` the newest final release,
a pre-release listed under `releases` only, the sdist's sha256 under `digests`) and a real sdist whose CHANGELOG
names the llama.cpp commit it vendors. Every refusal leaves image.yaml as it was.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import ssl
import subprocess
import sys
import tarfile
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import httpx2
import pytest
import yaml
from support.builder import one_line_error
from support.checkout import builder, copy_repo
from support.prerequisites import REPO

from builder.images import bump, catalog

BUMP = REPO / ".github" / "workflows" / "bump.yml"
PROJECT = "llama-cpp-python"
NEW_RELEASE, NEW_COMMIT = "0.3.37", "4d5e6f708"


def sdist(release: str, changelog: str, tree: bool = True) -> bytes:
    """A llama-cpp-python-shaped sdist: CHANGELOG.md and a vendor/llama.cpp tree."""
    top = f"llama_cpp_python-{release}"
    files = {f"{top}/CHANGELOG.md": changelog, f"{top}/pyproject.toml": "[project]\nname = 'llama_cpp_python'\n"}
    if tree:
        files[f"{top}/vendor/llama.cpp/CMakeLists.txt"] = "project(llama.cpp)\n"
        files[f"{top}/vendor/llama.cpp/LICENSE"] = "MIT\n"
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


CHANGELOG = f"""# Changelog

## [Unreleased]

## [{NEW_RELEASE}]

- feat: Update llama.cpp to ggml-org/llama.cpp@{NEW_COMMIT}
- fix: something else

## [0.3.36]

- feat: Update llama.cpp to ggml-org/llama.cpp@0c1e57098
"""


class Index:
    """What the stand-in index serves: the JSON document and the files, by path."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.files: dict[str, bytes] = {}
        self.document: dict = {}
        self.requests: list[str] = []

    def publish(self, release: str, data: bytes, digest: str | None = None) -> None:
        """PyPI's answer today: the newest final release in info.version, a pre-release only under releases."""
        name = f"llama_cpp_python-{release}.tar.gz"
        path = f"/packages/ab/cd/{name}"
        self.files[path] = data
        entry = {"packagetype": "sdist", "filename": name, "url": self.base + path, "size": len(data), "yanked": False,
                 "digests": {"sha256": digest or hashlib.sha256(data).hexdigest(), "md5": "0" * 32}}
        wheel = {**entry, "packagetype": "bdist_wheel", "filename": f"llama_cpp_python-{release}-cp311-cp311-linux_x86_64.whl"}
        self.document = {"info": {"name": PROJECT, "version": release, "yanked": False},
                         "urls": [wheel, entry],
                         "releases": {"0.3.36": [], release: [wheel, entry], "0.4.0rc1": [entry]}}


def certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1: the pinned URL must be https (image.schema.json)."""
    cert, key = folder / "index.crt", folder / "index.key"
    if not cert.exists():
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                        "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


@contextmanager
def stand_in_index(folder: Path) -> Iterator[Index]:
    """An HTTPS index on 127.0.0.1; while it runs, SSL_CERT_FILE names its certificate (the clients trust it)."""
    state: list[Index] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            index = state[0]
            index.requests.append(self.path)
            if self.path == f"/pypi/{PROJECT}/json":
                body, kind = json.dumps(index.document).encode(), "application/json"
            elif self.path in index.files:
                body, kind = index.files[self.path], "application/octet-stream"
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    cert, key = certificate(folder)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    state.append(Index(f"https://127.0.0.1:{server.server_address[1]}"))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SSL_CERT_FILE", str(cert))
        try:
            yield state[0]
        finally:
            server.shutdown()


def pin_step_script() -> str:
    steps = yaml.safe_load(BUMP.read_text())["jobs"]["bump"]["steps"]
    return next(s for s in steps if s.get("id") == "pin")["run"]


def run_pin_step(root: Path, tmp_path: Path, index: Index) -> subprocess.CompletedProcess:
    """The workflow's own pin step, its `builder` pointed at the stand-in index."""
    stubs = tmp_path / "stubs"
    stubs.mkdir(exist_ok=True)
    (stubs / "builder").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m builder.cli "$@"\n')
    (stubs / "builder").chmod(0o755)
    env = {**os.environ, "PATH": f"{stubs}{os.pathsep}{os.environ['PATH']}", "BUILDER_ROOT": str(root), "BUILDER_PYPI_URL": index.base,
           "RUNNER_TEMP": str(tmp_path), "GITHUB_OUTPUT": str(tmp_path / "github_output"), "PYTHONPATH": str(root)}
    (tmp_path / "github_output").write_text("")
    return subprocess.run(["bash", "-e", "-o", "pipefail", "-c", pin_step_script()], cwd=root, env=env, capture_output=True, text=True)


@pytest.mark.slow
def test_a_bump_as_the_workflow_makes_it_pins_the_hash_of_the_bytes_and_leaves_the_unit_tests_green(tmp_path: Path):
    """In a copy of the repository, the workflow's pin step against an index answering as PyPI does: the newest
    final release is pinned (not the pre-release), with the sha256 of the bytes fetched, the tree inside the sdist
    and the llama.cpp commit its CHANGELOG names; sync follows; a second run finds nothing to do; the catalog-driven
    unit tests pass in the copy."""
    root = copy_repo(tmp_path / "repo")
    before = catalog.load().pins["llamacpp"]
    data = sdist(NEW_RELEASE, CHANGELOG)
    with stand_in_index(tmp_path) as index:
        index.publish(NEW_RELEASE, data)
        result = run_pin_step(root, tmp_path, index)
        assert result.returncode == 0, result.stdout + result.stderr
        summary = (tmp_path / "github_output").read_text()
        assert f"llamacpp: {before.version} ({PROJECT} {before.release}) -> {NEW_COMMIT} ({PROJECT} {NEW_RELEASE})" in summary
        spec = yaml.safe_load((root / "images/llamacpp/image.yaml").read_text())
        assert spec["version"] == NEW_COMMIT and spec["upstream"] == {"pypi": PROJECT, "release": NEW_RELEASE}
        assert spec["source"] == {"url": f"{index.base}/packages/ab/cd/llama_cpp_python-{NEW_RELEASE}.tar.gz",
                                  "sha256": hashlib.sha256(data).hexdigest(), "tree": f"llama_cpp_python-{NEW_RELEASE}/vendor/llama.cpp"}
        changed = set(subprocess.run(["git", "-C", str(root), "diff", "--name-only"], capture_output=True, text=True).stdout.split())
        assert {"images/llamacpp/image.yaml", "images/llamacpp/llamacpp-cpu.Dockerfile", "images/llamacpp/llamacpp-cuda.Dockerfile",
                "images/model-init/model-init.Dockerfile", "stacks/llamacpp-webui.yml", "stacks/llamacpp-cpu.yml", "stacks/.env.example",
                "docs/builder.md", "docs/publishing.md", "docs/stacks.md"} <= changed
        for path in changed - {"images/llamacpp/image.yaml"}:
            assert before.version not in (root / path).read_text(), f"{path} still names {before.version}"
        assert f"ARG LLAMACPP_SHA256={hashlib.sha256(data).hexdigest()}" in (root / "images/model-init/model-init.Dockerfile").read_text()
        # The second run: the same release is pinned, nothing fetched, no pull request.
        fetched = len(index.requests)
        again = run_pin_step(root, tmp_path, index)
        assert again.returncode == 0 and (tmp_path / "github_output").read_text() == "", again.stderr
        assert index.requests[fetched:] == [f"/pypi/{PROJECT}/json"]
    tests = [f"tests/unit/{name}" for name in ("test_render.py", "test_tag_scheme.py", "test_stacks.py", "test_cli.py", "test_sync.py")]
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not docker and not slow", *tests],
                         cwd=root, capture_output=True, text=True, env={**os.environ, "BUILDER_ROOT": str(root)})
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert re.search(r"\d+ passed", run.stdout)


@pytest.mark.parametrize("case", ["digest differs", "no commit in the changelog", "no vendored tree", "no sdist"])
def test_a_bump_that_cannot_be_trusted_pins_nothing(tmp_path: Path, case: str):
    root = copy_repo(tmp_path / "repo")
    before = (root / "images/llamacpp/image.yaml").read_text()
    with stand_in_index(tmp_path) as index:
        if case == "digest differs":
            index.publish(NEW_RELEASE, sdist(NEW_RELEASE, CHANGELOG), digest="f" * 64)
            expected = "the index says " + "f" * 64 + ": nothing pinned"
        elif case == "no commit in the changelog":
            index.publish(NEW_RELEASE, sdist(NEW_RELEASE, f"## [{NEW_RELEASE}]\n\n- fix: docs\n\n## [0.3.36]\n\n- llama.cpp@0c1e57098\n"))
            expected = "names no llama.cpp commit for this release"
        elif case == "no vendored tree":
            index.publish(NEW_RELEASE, sdist(NEW_RELEASE, CHANGELOG, tree=False))
            expected = "vendors no source tree there"
        else:
            index.publish(NEW_RELEASE, sdist(NEW_RELEASE, CHANGELOG))
            index.document["urls"] = [u for u in index.document["urls"] if u["packagetype"] != "sdist"]
            expected = "has no sdist"
        result = builder("bump", "--index", index.base, root=root)
    # The download's progress lines, then the one error line.
    line = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2 and line.startswith("error: ") and expected in line, result.stderr
    assert (root / "images/llamacpp/image.yaml").read_text() == before
    assert subprocess.run(["git", "-C", str(root), "status", "--porcelain"], capture_output=True, text=True).stdout == ""


def test_an_unreachable_index_is_one_line(tmp_path: Path):
    root = copy_repo(tmp_path / "repo")
    line = one_line_error(builder("bump", "--index", "http://127.0.0.1:9", root=root))
    assert "no answer" in line and "reachable" in line, line


def test_relative_file_urls_resolve_against_the_document(tmp_path: Path):
    """Mirrors (the development machines' proxy among them) answer with URLs relative to the JSON document."""
    with stand_in_index(tmp_path) as index:
        index.publish(NEW_RELEASE, b"x")
        for entry in index.document["urls"]:
            entry["url"] = entry["url"].replace(index.base, "../..")
        with httpx2.Client() as client:
            release = bump.latest(client, index.base, PROJECT)
    assert release.url == f"{index.base}/packages/ab/cd/llama_cpp_python-{NEW_RELEASE}.tar.gz"


def test_the_real_index_answers_the_lookup_the_bump_makes():
    """PyPI itself (reachable from the development machines and CI): the newest llama-cpp-python has an sdist with a
    sha256, and where it is the pinned release, that sha256 is the pin's."""
    pin = catalog.load().pins["llamacpp"]
    with httpx2.Client(timeout=bump.TIMEOUT, follow_redirects=True) as client:
        release = bump.latest(client, bump.DEFAULT_INDEX, pin.upstream)
    assert re.fullmatch(r"\d+\.\d+\.\d+", release.version) and re.fullmatch(r"[0-9a-f]{64}", release.sha256)
    assert release.url.endswith(f"llama_cpp_python-{release.version}.tar.gz") and release.size > 10_000_000
    if release.version == pin.release:
        assert release.sha256 == pin.sha256
