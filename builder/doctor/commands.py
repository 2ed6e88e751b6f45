"""`builder doctor`: is this host ready to run the stack `builder up` would bring up?"""

from __future__ import annotations

import ipaddress
import json
import sys
from pathlib import Path

import click

from builder.core.command import error_line
from builder.core.errors import UserError, shown
from builder.core.paths import repo_root
from builder.doctor import checks
from builder.doctor.context import check_context, plan_check, report, stack_token
from builder.plan import hardware


@click.command("doctor")
@click.argument("model", required=False)
@click.option("--engine", help="Check for this engine's stack (default: the plan's).")
@click.option("--cpu", is_flag=True, help="Check for the CPU stack, as `builder up --cpu` runs it.")
@click.option("--port", type=click.IntRange(1, 65535), default=3000, show_default=True, help="Open WebUI's port, checked free on --bind.")
@click.option("--bind", default="127.0.0.1", show_default=True, help="The address the port is published on.")
@click.option("--data-root", type=click.Path(file_okay=False, path_type=Path), help="Check free space here instead of Docker's data root (where its volumes live).")
@click.option("--offline", is_flag=True, help="Do not ask the Hub.")
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
def doctor_command(model: str | None, engine: str | None, cpu: bool, port: int, bind: str, data_root: Path | None, offline: bool, as_json: bool) -> None:
    """Check the host for the stack: Docker, compose v2, BuildKit, the NVIDIA driver and container toolkit, disk,
    ports, /dev/shm, memlock, NUMA, AMX and the Hub. Each check says ok, warn, fail or skip (what it could not check
    and why) with a fix. Exit status 1 where a check fails. MODEL and --engine default to `builder plan`'s choice."""
    try:
        ipaddress.ip_address(bind)
    except ValueError:
        raise UserError(f"--bind {shown(bind)} is not an IP address (127.0.0.1, 0.0.0.0, ::1)") from None
    box = hardware.describe(gpus="none" if cpu else None)
    planned, model, engine, download = plan_check(box, model, engine)
    t = check_context(engine=engine, model=model, gpu=bool(box.gpus), ports=((bind, port),), data_root=data_root, offline=offline,
                      download_bytes=download)
    found = [planned, *checks.run_all(t, ram=box.ram, numa_nodes=box.numa_nodes, token=stack_token(repo_root() / "stacks" / ".env"))]
    if as_json:
        click.echo(json.dumps({"model": model, "engine": engine, "checks": [c.as_json() for c in found]}, indent=2))
    else:
        click.echo(f"checking for {model or 'no model'} on {engine}" + (" (GPU)" if t.gpu else " (CPU)"))
        click.echo(report(found))
    failed = [c.name for c in found if c.status == "fail"]
    if failed:
        error_line(f"doctor: {len(failed)} check(s) failed: {', '.join(failed)}")
    sys.exit(1 if failed else 0)


COMMANDS = (doctor_command,)
