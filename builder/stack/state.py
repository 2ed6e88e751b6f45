"""What runs: a stack's containers (found by compose's project label, so a stack brought up by plain `docker compose`
is found too), their state and health, the model, the URL, and the compose client that drives it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from python_on_whales import Container, DockerClient
from python_on_whales.exceptions import DockerException

from builder.core.errors import UserError
from builder.doctor import checks
from builder.images.docker import docker_clients
from builder.stack.choose import StackFiles

ONE_SHOTS = ("model-init", "secrets-init")
WEBUI = "open-webui"
PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
HASH_LABEL = "com.docker.compose.config-hash"


@dataclass(frozen=True)
class Service:
    name: str
    id: str
    state: str  # running, exited, created, ...
    health: str  # healthy, starting, unhealthy, or "" where there is no healthcheck
    exit_code: int

    @property
    def ready(self) -> bool:
        """Up as the stack needs it: a one-shot that finished, a service running (and healthy where it checks)."""
        if self.name in ONE_SHOTS:
            return self.state == "exited" and self.exit_code == 0
        return self.state == "running" and self.health in ("", "healthy")

    def shown(self) -> str:
        if self.name in ONE_SHOTS and self.state == "exited":
            return "done" if self.exit_code == 0 else f"failed (exit {self.exit_code})"
        return self.state + (f", {self.health}" if self.health else "")


def ready_docker() -> str:
    """The docker command, with a daemon and compose v2: the one-line refusals before a stack command runs."""
    clients = docker_clients()
    if not clients:
        raise UserError(f"no docker command on PATH: {checks.DOCKER_HINT}")
    if checks.docker_info(clients[0]) is None:
        raise UserError("no Docker daemon answers: start it (sudo systemctl start docker), or set DOCKER_HOST")
    v2, v1 = checks.compose_version(clients[0])
    if v2 is None:
        have = f"only docker-compose {v1} (compose v1) is installed" if v1 else "`docker compose` (compose v2) is not installed"
        raise UserError(f"{have}: {checks.COMPOSE_HINT}")
    return clients[0]


def whales(docker: str, stack: StackFiles | None = None, env_file: Path | None = None, project: str | None = None) -> DockerClient:
    """A python-on-whales client for the docker command, with the stack's compose files and project where given."""
    if stack is None:
        return DockerClient(client_call=[docker], compose_project_name=project)
    return DockerClient(client_call=[docker], compose_files=list(stack.files), compose_project_name=stack.project,
                        compose_env_files=[env_file] if env_file else [])


def containers(client: DockerClient, project: str) -> list[Container]:
    try:
        return client.container.list(all=True, filters=[("label", f"{PROJECT_LABEL}={project}")])
    except DockerException as e:
        raise UserError(f"docker could not list containers ({e.return_code}): is the daemon running?") from None


def services(client: DockerClient, project: str) -> list[Service]:
    found = []
    for c in containers(client, project):
        health = c.state.health.status if c.state.health else ""
        found.append(Service(c.config.labels.get(SERVICE_LABEL, c.name), c.id, c.state.status or "", health or "", c.state.exit_code or 0))
    return sorted(found, key=lambda s: s.name)


def volumes(client: DockerClient, project: str) -> list[str]:
    return sorted(v.name for v in client.volume.list(filters=[("label", f"{PROJECT_LABEL}={project}")]))


def running(client: DockerClient, project: str) -> bool:
    return any(s.state in ("running", "restarting") for s in services(client, project))


def model_of(client: DockerClient, project: str) -> str | None:
    """The model model-init fetches: the first word of its command (stacks/*-webui.yml)."""
    for c in containers(client, project):
        if c.config.labels.get(SERVICE_LABEL) == "model-init" and c.config.cmd:
            return c.config.cmd[0]
    return None


def url(client: DockerClient, project: str) -> str | None:
    """Open WebUI's address as Docker published it (the bind address and port of stacks/.env, or what compose got)."""
    for c in containers(client, project):
        if c.config.labels.get(SERVICE_LABEL) == WEBUI and c.state.status == "running":
            for binding in (c.network_settings.ports or {}).get("8080/tcp") or []:
                host = binding.get("HostIp") or "127.0.0.1"
                host = "127.0.0.1" if host in ("0.0.0.0", "") else f"[{host}]" if ":" in host else host
                return f"http://{host}:{binding['HostPort']}"
    return None


DOWNLOAD_LINE = re.compile(r"^download: total (\d+)% ")


def download_progress(client: DockerClient, project: str) -> str | None:
    """model-init's last progress line while it runs (its log: builder/core/progress.py's plain lines)."""
    for c in containers(client, project):
        if c.config.labels.get(SERVICE_LABEL) == "model-init" and c.state.status == "running":
            lines = [line for line in client.container.logs(c, tail=200).splitlines() if line.startswith("download:")]
            return lines[-1] if lines else "model-init is starting"
    return None
