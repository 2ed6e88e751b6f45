"""`builder up`: doctor, the plan, stacks/.env, the compose files, `docker compose up -d --wait` with model-init's
download shown as it runs, and what to do next. Every refusal comes before anything is written or started."""

from __future__ import annotations

import datetime
import os
import re
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import python_on_whales.utils
from python_on_whales import DockerClient
from python_on_whales.exceptions import DockerException
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TransferSpeedColumn,
)

from builder.core.errors import UserError, shown
from builder.core.paths import output_file, repo_root
from builder.doctor import checks
from builder.doctor.context import check_context, report, stack_token
from builder.images import runtime
from builder.models import catalog
from builder.plan import envfile, hardware, planner
from builder.plan.commands import write_settings
from builder.stack import state
from builder.stack.choose import StackFiles, choose, engines, projects

UNITS = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4}
TOTAL_LINE = re.compile(r"^download: total \d+% ([\d.]+) (\w+)/([\d.]+) (\w+)")
PLAN_TOTAL = re.compile(r"^\s*([\d.]+) (\w+)\s+total in \d+ file\(s\); ([\d.]+) (\w+) to fetch")


@dataclass(frozen=True)
class Summary:
    url: str | None
    key_command: str | None
    stop_command: str


def other_engine_up(client: DockerClient, stacks: Path, stack: StackFiles) -> str | None:
    """The engine of another stack that is up (its project's containers run), or None."""
    names = set(engines(stacks))
    for project in dict.fromkeys([*projects(stacks), stack.project]):
        if not state.running(client, project):
            continue
        engine = next((s.name for s in state.services(client, project) if s.name in names), None)
        if engine is not None and engine != stack.engine:
            return engine
    return None


def config_hashes(client: DockerClient) -> dict[str, str]:
    """compose's hash of each service's configuration, as the .env and the files make it now: a container whose
    label carries the same hash is what `up` would leave as it is."""
    out = python_on_whales.utils.run(client.client_config.docker_compose_cmd + ["config", "--hash", "*"])
    return dict(line.split(None, 1) for line in out.splitlines() if line.strip())  # type: ignore[union-attr]


def already_up(client: DockerClient, project: str) -> bool:
    """Every service of the stack is up as it should be, from the configuration compose would apply now."""
    found = {s.name: s for s in state.services(client, project)}
    hashes = config_hashes(client)
    if not found or set(found) != set(hashes) or not all(s.ready for s in found.values()):
        return False
    labels = {c.config.labels.get(state.SERVICE_LABEL): c.config.labels.get(state.HASH_LABEL) for c in state.containers(client, project)}
    return all(labels.get(name) == h for name, h in hashes.items())


def _bytes(number: str, unit: str) -> int:
    return int(float(number) * UNITS.get(unit, 1))


class DownloadView:
    """model-init's log lines as progress: a rich bar in a terminal, the lines themselves in a log."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.bar: Progress | None = None
        self.task = None

    def line(self, text: str) -> None:
        if not self.console.is_terminal:
            self.console.print(f"model-init: {text}", markup=False, highlight=False)
            return
        total = PLAN_TOTAL.match(text)
        if total and self.bar is None:
            self.bar = Progress(TextColumn("downloading the model"), BarColumn(), TaskProgressColumn(), DownloadColumn(binary_units=True),
                                TransferSpeedColumn(), console=self.console)
            size, to_fetch = _bytes(*total.group(1, 2)), _bytes(*total.group(3, 4))
            self.task = self.bar.add_task("model", total=size, completed=size - to_fetch)
            self.bar.start()
            return
        seen = TOTAL_LINE.match(text)
        if seen and self.bar is not None:
            self.bar.update(self.task, completed=_bytes(*seen.group(1, 2)))  # type: ignore[arg-type]
        elif not text.startswith("download: ") and not text.startswith("  "):
            self.console.print(f"model-init: {text}", markup=False, highlight=False, style="dim")

    def close(self) -> None:
        if self.bar is not None:
            if self.task is not None:
                self.bar.update(self.task, completed=self.bar.tasks[0].total)
            self.bar.stop()
            self.bar = None


def follow_model_init(client: DockerClient, project: str, since: datetime.datetime, view: DownloadView, busy: Callable[[], bool]) -> None:
    """Show model-init's log from `since` (this run's start) until it exits, while compose is still at work."""
    while busy():
        ours = [c for c in state.containers(client, project) if c.config.labels.get(state.SERVICE_LABEL) == "model-init"]
        if ours and (ours[0].state.status in ("running", "exited") and ours[0].state.started_at and ours[0].state.started_at >= since):
            try:
                for _, chunk in client.container.logs(ours[0], follow=True, stream=True, since=since):
                    for text in chunk.decode(errors="replace").splitlines():
                        view.line(text)
            except DockerException:
                pass  # the container went away (a down from elsewhere): compose's own result says what happened
            return
        time.sleep(0.5)


def compose_up(client: DockerClient, stack: StackFiles, console: Console) -> None:
    """`docker compose up -d --wait` in a thread, model-init's download followed here. Ctrl-C or SIGTERM stops the
    stack's containers (model-init keeps its partial files), so that the next `up` resumes the download."""
    errors: list[DockerException] = []

    def up() -> None:
        try:
            client.compose.up(detach=True, wait=True, quiet=True)
        except DockerException as e:
            errors.append(e)

    since = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=2)
    worker = threading.Thread(target=up, name="compose-up", daemon=True)
    view = DownloadView(console)
    worker.start()
    try:
        follow_model_init(client, stack.project, since, view, worker.is_alive)
        view.close()
        while worker.is_alive():
            worker.join(0.5)  # a timed join: a signal still reaches this thread
    except BaseException:  # Ctrl-C (KeyboardInterrupt) or SIGTERM (Stopped): stop what was started, then go
        view.close()
        console.print("stopping the stack's containers; `builder up` again resumes the download", markup=False)
        client.compose.stop()
        raise
    if errors:
        said = " ".join(((errors[0].stderr or "") + " " + (errors[0].stdout or "")).split())[-600:]
        logs = failed_service_logs(client, stack.project)
        raise UserError(f"docker compose up failed: {said}{logs}; see `builder status` and `docker compose -p {stack.project} logs`")


def failed_service_logs(client: DockerClient, project: str) -> str:
    """The last log line of a one-shot that failed (model-init refusing a download says why there)."""
    for s in state.services(client, project):
        if s.name in state.ONE_SHOTS and s.state == "exited" and s.exit_code != 0:
            last = [line for line in client.container.logs(s.id, tail=5).splitlines() if line.strip()]
            return f" ({s.name}: {' '.join(last[-1].split())[:300]})" if last else ""
    return ""


def summary(client: DockerClient, stack: StackFiles) -> Summary:
    facts = runtime.load(stack.engine)
    key = None
    if facts.api_key_file:
        key = f"docker compose -p {stack.project} exec {stack.engine} cat /run/r1kit/keys/{stack.engine}_api_key"
    return Summary(state.url(client, stack.project), key, f"builder down   (or: docker compose -p {stack.project} down)")


def next_steps(s: Summary) -> list[str]:
    lines = [f"open:     {s.url or '(Open WebUI publishes no port)'}",
             "sign up:  the first account made there becomes the admin (sign-ups after it wait for the admin's approval)"]
    if s.key_command:
        lines.append(f"API key:  {s.key_command}")
    lines.append(f"stop:     {s.stop_command}")
    return lines



@dataclass(frozen=True)
class UpRequest:
    """`builder up`'s options."""

    model: str | None
    engine: str | None
    cpu: bool
    port: int | None
    yes: bool
    env_file: Path | None
    extra: tuple[Path, ...]
    offline: bool
    data_root: Path | None


def bring_up(r: UpRequest, console: Console, echo: Callable[[str], None], confirm: Callable[[], None]) -> list[str]:
    """`builder up` in its order; every refusal before the .env is written or a container made. Returns the next
    steps to print."""
    stacks = repo_root() / "stacks"
    env_path = r.env_file or stacks / ".env"
    env_target = output_file(env_path, "--env-file", overwrite=True)  # refused before any work
    box = hardware.describe(gpus="none" if r.cpu else None)
    plan, passed = planner.choose(catalog.load(), box, r.model, r.engine, None)
    stack = choose(stacks, plan.engine, gpu=bool(box.gpus), offline=r.offline, extra=r.extra)
    if not r.yes and not sys.stdin.isatty():
        raise UserError("stdin is not a terminal to answer the question: give --yes to bring the stack up without asking")
    docker = state.ready_docker()
    client = state.whales(docker, stack, env_target)
    other = other_engine_up(client, stacks, stack)
    if other:
        raise UserError(f"the {other} stack is up: stop it first (builder down), or keep it (builder up --engine {other})")
    settings = dict(plan.settings) | ({"WEBUI_PORT": str(r.port)} if r.port else {}) | ({"HF_HUB_OFFLINE": "1"} if r.offline else {})
    current = envfile.read_values(env_target)
    is_up = state.running(client, stack.project)
    if is_up and all(current.get(k, "") == v for k, v in settings.items() if v) and already_up(client, stack.project):
        console.print(f"the {stack.engine} stack ({stack.project}) is up and as configured: nothing to do", markup=False)
        return next_steps(summary(client, stack))
    values = current | {k: v for k, v in settings.items() if v}
    bind = os.environ.get("WEBUI_BIND") or values.get("WEBUI_BIND") or "127.0.0.1"
    raw_port = str(r.port or os.environ.get("WEBUI_PORT") or values.get("WEBUI_PORT") or 3000)
    if not raw_port.isdigit() or not 0 < int(raw_port) < 65536:
        raise UserError(f"WEBUI_PORT {shown(raw_port)} is not a port number: fix it in {env_path} or the environment, or give --port")
    web_port = int(raw_port)
    t = check_context(engine=plan.engine, model=plan.model, gpu=stack.gpu, ports=() if is_up else ((bind, web_port),), data_root=r.data_root,
               offline=r.offline, download_bytes=plan.download or None)
    found = checks.run_all(t, ram=box.ram, numa_nodes=box.numa_nodes, token=stack_token(env_target))
    console.print(report(found), markup=False)
    failed = [c for c in found if c.status == "fail"]
    if failed:
        raise UserError(f"doctor: {failed[0].name}: {failed[0].detail}" + (f" ({len(failed) - 1} more above)" if len(failed) > 1 else "")
                        + (f"; fix: {failed[0].fix}" if failed[0].fix else ""))
    echo(planner.report(plan, box, passed))
    echo(f"stack:    {' '.join('-f ' + str(f.relative_to(stacks) if f.is_relative_to(stacks) else f) for f in stack.files)} (project {stack.project})")
    if not r.yes:
        confirm()
    write_settings(env_path, env_target, settings)
    console.print(f"starting the {stack.engine} stack: docker compose up -d --wait (images are pulled where missing)", markup=False)
    compose_up(client, stack, console)
    return next_steps(summary(client, stack))

