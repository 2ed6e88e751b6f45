"""`builder down [-v]`: stop the stack that has containers (or, with -v, volumes); -v first says what it deletes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from python_on_whales import DockerClient

from builder.core.errors import UserError
from builder.stack import state
from builder.stack.choose import choose, engines, projects


@dataclass(frozen=True)
class ExistingStack:
    project: str
    engine: str
    files: tuple[Path, ...]
    volumes: tuple[str, ...]


def found(client: DockerClient, stacks: Path) -> list[ExistingStack]:
    """Every stack with containers or volumes. The files are those its containers were made from (compose's label),
    else the engine's stack file: compose needs them to know the volumes -v removes."""
    out = []
    known = engines(stacks)
    for project, engine in projects(stacks).items():
        containers = state.containers(client, project)
        volumes = state.volumes(client, project)
        if not containers and not volumes:
            continue
        labels = containers[0].config.labels if containers else {}
        names = {c.config.labels.get(state.SERVICE_LABEL) for c in containers}
        engine = next((e for e in known if e in names), engine)
        files = tuple(Path(f) for f in labels.get("com.docker.compose.project.config_files", "").split(",") if f)
        if not files or not all(f.is_file() for f in files):
            files = choose(stacks, engine, gpu=True).files
        out.append(ExistingStack(project, engine, files, tuple(volumes)))
    return out


def down(docker: str, target: ExistingStack, volumes: bool) -> None:
    client = DockerClient(client_call=[docker], compose_files=list(target.files), compose_project_name=target.project)
    client.compose.down(volumes=volumes, remove_orphans=True, quiet=True)
    left = state.containers(client, target.project)
    if left:
        raise UserError(f"{len(left)} container(s) of {target.project} are still there: see `docker ps -a --filter label={state.PROJECT_LABEL}={target.project}`")
