"""Which docker client builds images here, and whether a daemon answers.

BuildKit is required (cache and secret mounts). `docker buildx build` is used where the buildx plugin is
installed; otherwise a client older than 23.0 still drives the daemon's built-in BuildKit through
`DOCKER_BUILDKIT=1 docker build`. Newer clients without buildx fall back to the legacy builder, which
rejects `RUN --mount`, so they are skipped.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Mapping

from python_on_whales import DockerClient
from python_on_whales.exceptions import DockerException

from builder.core.errors import UserError

INSTALL_HINT = "install Docker Engine with the buildx plugin (https://docs.docker.com/engine/install/)"


@dataclass(frozen=True)
class Backend:
    """A docker client and how it builds: 'buildx' or 'classic' (DOCKER_BUILDKIT=1 docker build)."""

    client: str
    kind: str
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def build_command(self) -> list[str]:
        return [self.client, "buildx", "build"] if self.kind == "buildx" else [self.client, "build"]

    def whales(self) -> DockerClient:
        return DockerClient(client_call=[self.client])


def docker_clients() -> list[str]:
    """Every `docker` executable on PATH, in PATH order, or $BUILDER_DOCKER alone when set."""
    if os.environ.get("BUILDER_DOCKER"):
        return [os.environ["BUILDER_DOCKER"]]
    found: list[str] = []
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        exe = shutil.which("docker", path=folder)
        if exe and os.path.realpath(exe) not in {os.path.realpath(f) for f in found}:
            found.append(exe)
    return found


def _backend_of(client: str) -> Backend | None:
    whales = DockerClient(client_call=[client])
    try:
        whales.buildx.version()
        return Backend(client, "buildx")
    except DockerException:
        pass
    # `docker --version` asks no daemon: "Docker version 20.10.24+dfsg1, build 297e128".
    answer = subprocess.run([client, "--version"], capture_output=True, text=True, check=False).stdout
    match = re.search(r"version (\d+)\.", answer)
    if not match:
        return None
    major = int(match.group(1))
    return Backend(client, "classic", {"DOCKER_BUILDKIT": "1"}) if major < 23 else None


def find_backend() -> Backend:
    """The first docker client that can run BuildKit builds against a reachable daemon."""
    clients = docker_clients()
    if not clients:
        raise UserError(f"no docker command found: {INSTALL_HINT}")
    for client in clients:
        backend = _backend_of(client)
        if backend:
            ping_daemon(backend)
            return backend
    raise UserError(f"no docker client with BuildKit among {', '.join(clients)}: {INSTALL_HINT}")


def ping_daemon(backend: Backend) -> None:
    try:
        backend.whales().system.info()
    except DockerException:
        host = os.environ.get("DOCKER_HOST", "the local socket")
        raise UserError(f"cannot reach the Docker daemon at {host}: start it (sudo systemctl start docker) or set DOCKER_HOST") from None


def dry_run_backend() -> Backend:
    """The backend a real build would use (no daemon needed), or plain buildx where none is found."""
    for client in docker_clients():
        backend = _backend_of(client)
        if backend:
            return backend
    return Backend("docker", "buildx")
