"""`builder up`, `builder status`, `builder down`: the stack for this machine, from a bare host to the chat page."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console

from builder.core.paths import repo_root
from builder.stack import down, state, status, up


@click.command("up")
@click.argument("model", required=False)
@click.option("--engine", help="llamacpp, ollama, vllm or ktransformers (default: the plan's).")
@click.option("--cpu", is_flag=True, help="The CPU stack, even where there are GPUs.")
@click.option("--port", type=click.IntRange(1, 65535), help="Open WebUI's port on 127.0.0.1 (WEBUI_PORT; default 3000).")
@click.option("--yes", "-y", is_flag=True, help="Bring it up without asking.")
@click.option("--env-file", type=click.Path(dir_okay=False, path_type=Path), help="The stack's .env (default: stacks/.env); its other lines are kept.")
@click.option("--file", "-f", "extra", multiple=True, type=click.Path(dir_okay=False, path_type=Path), help="Another compose file on top (your overrides); repeatable.")
@click.option("--offline", is_flag=True, help="No network: add stacks/offline.yml (after `builder bundle load`), and do not ask the Hub.")
@click.option("--data-root", type=click.Path(file_okay=False, path_type=Path), help="Check free space here instead of Docker's data root.")
def up_command(model: str | None, engine: str | None, cpu: bool, port: int | None, yes: bool, env_file: Path | None, extra: tuple[Path, ...],
               offline: bool, data_root: Path | None) -> None:
    """Bring up DeepSeek-R1 with Open WebUI on this machine: doctor, the plan, stacks/.env, the compose files for the
    engine and the machine, then `docker compose up -d --wait` with the model's download shown. Run again: nothing
    changes where the stack is up; a stopped download resumes. MODEL defaults to the plan's choice."""
    console = Console(stderr=True, highlight=False, soft_wrap=True)  # a log keeps each line whole
    request = up.UpRequest(model, engine, cpu, port, yes, env_file, extra, offline, data_root)
    click.echo("\n".join(up.bring_up(request, console, click.echo, lambda: click.confirm("bring it up?", default=True, abort=True, err=True))))


@click.command("status")
def status_command() -> None:
    """What runs: each stack's services and health, the model and engine, the URL, the download while one runs."""
    docker = state.ready_docker()
    lines = status.describe(state.whales(docker), repo_root() / "stacks")
    click.echo("\n".join(lines) if lines else "no stack is up (builder up brings one up)")


@click.command("down")
@click.option("--volumes", "-v", is_flag=True, help="Also delete the stack's volumes: the downloaded model, the chats, the keys.")
def down_command(volumes: bool) -> None:
    """Stop the stack and remove its containers and network; with -v, first say which volumes go, then delete them."""
    docker = state.ready_docker()
    targets = down.found(state.whales(docker), repo_root() / "stacks")
    if not targets:
        click.echo("no stack to stop")
        return
    for t in targets:
        if volumes and t.volumes:
            click.echo(f"{t.project}: deleting the volumes {', '.join(t.volumes)} (the model, the chats and the keys)")
        down.down(docker, t, volumes)
        click.echo(f"{t.project}: stopped" + (", volumes deleted" if volumes else " (volumes kept; -v deletes them)"))


COMMANDS = (up_command, status_command, down_command)
