"""The stack a bundle carries, as compose itself resolves it: the compose files of a stack name, the images its
services run, the volume model-init fills, the model, and the settings (the variables the stack files read).

Compose's own `config` does the resolving, with the same environment and `.env` a `docker compose up` in that folder
would use, so the bundle holds exactly what `up` would run. (python-on-whales runs compose with this process's
environment only; a save for another MODEL needs its own, so compose runs as a subprocess here.)
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import yaml

from builder.core.errors import UserError, shown
from builder.core.values import plain

VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")
MODEL_SERVICE = "model-init"
MODEL_VOLUME = "models"
MODEL_ROOT = "/models"  # where model-init mounts its volume


@dataclass(frozen=True)
class ResolvedStack:
    name: str
    folder: Path
    files: tuple[str, ...]  # compose files, relative to folder
    project: str
    images: tuple[str, ...]  # every image a service runs, in the order compose lists the services
    model: str
    volume: str  # the docker volume model-init writes
    model_init_image: str
    path_file: str | None  # model-init's --path-file, relative to the volume's root


def stack_names(folder: Path) -> list[str]:
    """`ENGINE` for each stacks/ENGINE-webui.yml, and `ENGINE-cpu` where stacks/ENGINE-cpu.yml overrides it."""
    engines = sorted(p.name.removesuffix("-webui.yml") for p in folder.glob("*-webui.yml"))
    return [n for e in engines for n in (e, f"{e}-cpu") if n == e or (folder / f"{e}-cpu.yml").is_file()]


def compose_files(folder: Path, name: str) -> tuple[str, ...]:
    names = stack_names(folder)
    if name not in names:
        raise UserError(f"no stack {shown(name)} in {folder}: choose one of {', '.join(names) or '(none: is this a stacks/ folder?)'}")
    engine = name.removesuffix("-cpu")
    return (f"{engine}-webui.yml", f"{engine}-cpu.yml") if name != engine else (f"{engine}-webui.yml",)


def compose(folder: Path, files: tuple[str, ...], *args: str, env: Mapping[str, str]) -> str:
    cmd = ["docker", "compose", "--project-directory", str(folder)]
    for f in files:
        cmd += ["-f", str(folder / f)]
    try:
        done = subprocess.run([*cmd, *args], capture_output=True, text=True, env=dict(env), timeout=120)
    except FileNotFoundError:
        raise UserError("no docker client on PATH: install Docker and compose v2") from None
    if done.returncode != 0:
        said = " ".join(done.stderr.split()) or "no output"
        raise UserError(f"docker compose config failed for {', '.join(files)} in {folder}: {shown(said, 300)} (is compose v2 installed?)")
    return done.stdout


def resolve(folder: Path, name: str, env: Mapping[str, str]) -> ResolvedStack:
    files = compose_files(folder, name)
    config = json.loads(compose(folder, files, "config", "--format", "json", env=env))
    services = config.get("services", {})
    init = services.get(MODEL_SERVICE)
    if init is None or MODEL_VOLUME not in config.get("volumes", {}):
        raise UserError(f"stack {name} has no {MODEL_SERVICE} service writing a {MODEL_VOLUME} volume: it cannot be bundled")
    command = list(init.get("command") or [])
    path_file = command[command.index("--path-file") + 1] if "--path-file" in command[:-1] else None
    if path_file is not None:
        path_file = str(Path(path_file).relative_to(MODEL_ROOT))
    images = tuple(dict.fromkeys(s["image"] for s in services.values() if s.get("image")))
    return ResolvedStack(name, folder, files, config["name"], images, command[0], config["volumes"][MODEL_VOLUME]["name"], init["image"], path_file)


def secret_variables(folder: Path) -> set[str]:
    """The variables the stacks take secrets from (stacks/shared/resources.yml, `environment:` secrets): never bundled."""
    resources = yaml.safe_load((folder / "shared" / "resources.yml").read_text())
    return {s["environment"] for s in (resources.get("secrets") or {}).values() if isinstance(s, dict) and "environment" in s}


def stack_variables(folder: Path) -> set[str]:
    return {m for p in sorted(folder.rglob("*.yml")) for m in VARIABLE.findall(p.read_text())}


def settings(stack: ResolvedStack, env: Mapping[str, str]) -> dict[str, str]:
    """The values compose would substitute for the variables the stack files read (the environment's, else .env's),
    secrets left out: a bundle is carried around, and a key is made again (or set again) on the other host."""
    wanted = stack_variables(stack.folder) - secret_variables(stack.folder)
    out = {}
    for line in compose(stack.folder, stack.files, "config", "--environment", env=env).splitlines():
        key, sep, value = line.partition("=")
        if sep and key in wanted:
            out[key] = plain(value, f"the setting {key}")
    if out.get("MODEL", stack.model) != stack.model:
        raise UserError(f"MODEL is {out['MODEL']} in the settings but the stack resolves {stack.model}")
    out["MODEL"] = stack.model
    return dict(sorted(out.items()))


def environment(model: str | None) -> dict[str, str]:
    """This process's environment, with MODEL where the command names one (it then wins over .env, as in compose)."""
    return {**os.environ, **({"MODEL": model} if model else {})}
