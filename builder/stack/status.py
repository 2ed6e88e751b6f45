"""`builder status`: each stack that has containers, as a few lines."""

from __future__ import annotations

from pathlib import Path

from python_on_whales import DockerClient

from builder.stack import state
from builder.stack.choose import engines, projects


def describe(client: DockerClient, stacks: Path) -> list[str]:
    """The stacks with containers (running or not): services with state and health, model, engine, URL, download."""
    lines: list[str] = []
    known = set(engines(stacks))
    for project in dict.fromkeys(projects(stacks)):
        services = state.services(client, project)
        if not services:
            continue
        engine = next((s.name for s in services if s.name in known), "?")
        up = all(s.ready for s in services)
        lines.append(f"stack:    {project} ({'up' if up else 'running, not ready' if state.running(client, project) else 'stopped'})")
        lines.append(f"engine:   {engine}; model {state.model_of(client, project) or '?'}")
        lines.append("services: " + "; ".join(f"{s.name} ({s.shown()})" for s in services))
        url = state.url(client, project)
        if url:
            lines.append(f"open:     {url}")
        download = state.download_progress(client, project)
        if download:
            lines.append(f"download: {download.removeprefix('download: ')}")
    return lines
