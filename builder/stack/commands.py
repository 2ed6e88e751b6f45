"""`builder up`, `builder status`, `builder down`: the stack for this machine, from a bare host to the chat page."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click
from rich.console import Console

from builder.core.errors import UserError, shown
from builder.core.paths import output_file, repo_root
from builder.doctor import checks
from builder.doctor.target import report, stack_token, target
from builder.images.docker import docker_clients
from builder.models import catalog
from builder.plan import envfile, hardware, planner
from builder.plan.commands import write_settings
from builder.stack import down as stack_down
from builder.stack import state, up
from builder.stack import status as stack_status
from builder.stack.choose import choose


def _docker() -> str:
    clients = docker_clients()
    if not clients:
        raise UserError(f"no docker command on PATH: {checks.DOCKER_HINT}")
    return clients[0]


def _ready_docker() -> str:
    """The docker command, with a daemon and compose v2: the one-line refusals before anything else runs."""
    docker = _docker()
    if checks.docker_info(docker) is None:
        raise UserError("no Docker daemon answers: start it (sudo systemctl start docker), or set DOCKER_HOST")
    v2, v1 = checks.compose_version(docker)
    if v2 is None:
        raise UserError(f"{'only docker-compose ' + v1 + ' (compose v1) is installed' if v1 else '`docker compose` (compose v2) is not installed'}: {checks.COMPOSE_HINT}")
    return docker


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
    stacks = repo_root() / "stacks"
    env_path = env_file or stacks / ".env"
    env_target = output_file(env_path, "--env-file", overwrite=True)  # refused before any work
    box = hardware.describe(gpus="none" if cpu else None)
    plan, passed = planner.choose(catalog.load(), box, model, engine, None)
    stack = choose(stacks, plan.engine, gpu=bool(box.gpus), offline=offline, extra=extra)
    if not yes and not sys.stdin.isatty():
        raise UserError("stdin is not a terminal to answer the question: give --yes to bring the stack up without asking")
    docker = _ready_docker()
    client = state.whales(docker, stack, env_target)
    other = up.other_engine_up(client, stacks, stack)
    if other:
        raise UserError(f"the {other} stack is up: stop it first (builder down), or keep it (builder up --engine {other})")
    settings = dict(plan.settings) | ({"WEBUI_PORT": str(port)} if port else {})
    current = envfile.read_values(env_target)
    is_up = state.running(client, stack.project)
    if is_up and all(current.get(k, "") == v for k, v in settings.items() if v) and up.already_up(client, stack.project):
        console.print(f"the {stack.engine} stack ({stack.project}) is up and as configured: nothing to do", markup=False)
        click.echo("\n".join(up.next_steps(up.summary(client, stack))))
        return
    values = current | {k: v for k, v in settings.items() if v}
    bind = os.environ.get("WEBUI_BIND") or values.get("WEBUI_BIND") or "127.0.0.1"
    raw_port = str(port or os.environ.get("WEBUI_PORT") or values.get("WEBUI_PORT") or 3000)
    if not raw_port.isdigit() or not 0 < int(raw_port) < 65536:
        raise UserError(f"WEBUI_PORT {shown(raw_port)} is not a port number: fix it in {env_path} or the environment, or give --port")
    web_port = int(raw_port)
    t = target(engine=plan.engine, model=plan.model, gpu=stack.gpu, ports=() if is_up else ((bind, web_port),), data_root=data_root,
               offline=offline)
    found = checks.run_all(t, ram=box.ram, numa_nodes=box.numa_nodes, token=stack_token(env_target))
    console.print(report(found), markup=False)
    failed = [c for c in found if c.status == "fail"]
    if failed:
        raise UserError(f"doctor: {failed[0].name}: {failed[0].detail}" + (f" ({len(failed) - 1} more above)" if len(failed) > 1 else "")
                        + (f"; fix: {failed[0].fix}" if failed[0].fix else ""))
    click.echo(planner.report(plan, box, passed))
    click.echo(f"stack:    {' '.join('-f ' + str(f.relative_to(stacks) if f.is_relative_to(stacks) else f) for f in stack.files)} (project {stack.project})")
    if not yes:
        click.confirm("bring it up?", default=True, abort=True, err=True)
    write_settings(env_path, env_target, settings)
    console.print(f"starting the {stack.engine} stack: docker compose up -d --wait (images are pulled where missing)", markup=False)
    up.compose_up(client, stack, console)
    click.echo("\n".join(up.next_steps(up.summary(client, stack))))


@click.command("status")
def status_command() -> None:
    """What runs: each stack's services and health, the model and engine, the URL, the download while one runs."""
    docker = _ready_docker()
    lines = stack_status.describe(state.whales(docker), repo_root() / "stacks")
    click.echo("\n".join(lines) if lines else "no stack is up (builder up brings one up)")


@click.command("down")
@click.option("--volumes", "-v", is_flag=True, help="Also delete the stack's volumes: the downloaded model, the chats, the keys.")
def down_command(volumes: bool) -> None:
    """Stop the stack and remove its containers and network; with -v, first say which volumes go, then delete them."""
    docker = _ready_docker()
    targets = stack_down.found(state.whales(docker), repo_root() / "stacks")
    if not targets:
        click.echo("no stack to stop")
        return
    for t in targets:
        if volumes and t.volumes:
            click.echo(f"{t.project}: deleting the volumes {', '.join(t.volumes)} (the model, the chats and the keys)")
        stack_down.down(docker, t, volumes)
        click.echo(f"{t.project}: stopped" + (", volumes deleted" if volumes else " (volumes kept; -v deletes them)"))


COMMANDS = (up_command, status_command, down_command)
