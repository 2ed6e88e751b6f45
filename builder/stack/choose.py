"""Which compose files bring up an engine's stack on this machine: stacks/<engine>-webui.yml, its CPU override where
there is no GPU, the offline override where asked, and the user's own files; and the compose project they make."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from builder.core.errors import UserError, shown

NAME = re.compile(r"^name:\s*([a-z0-9][a-z0-9_-]*)\s*$", re.M)
OFFLINE = "offline.yml"  # stacks/offline.yml: no Hub, no registry (air-gapped hosts)


@dataclass(frozen=True)
class StackFiles:
    engine: str
    project: str
    files: tuple[Path, ...]
    gpu: bool


def engines(stacks: Path) -> dict[str, Path]:
    """Each engine with a chat stack: stacks/<engine>-webui.yml."""
    return {p.name.removesuffix("-webui.yml"): p for p in sorted(stacks.glob("*-webui.yml"))}


def project_of(stack_file: Path) -> str:
    """The project a stack's containers, network and volumes carry: $COMPOSE_PROJECT_NAME (compose's own variable,
    so plain compose commands and builder name the same one), else the file's `name:`."""
    if os.environ.get("COMPOSE_PROJECT_NAME"):
        return os.environ["COMPOSE_PROJECT_NAME"]
    # A line, not YAML: the stack files carry compose's own tags (!reset, !override), which yaml cannot load.
    name = NAME.search(stack_file.read_text())
    if name is None:
        raise UserError(f"{stack_file} has no `name:`: every stack names its compose project")
    return name.group(1)


def projects(stacks: Path) -> dict[str, str]:
    """Project name -> engine, for every engine's stack."""
    return {project_of(path): engine for engine, path in engines(stacks).items()}


def choose(stacks: Path, engine: str, *, gpu: bool, offline: bool = False, extra: tuple[Path, ...] = ()) -> StackFiles:
    """The files for `engine`'s stack: the CPU override where no GPU is planned (an engine without one needs GPUs)."""
    known = engines(stacks)
    if engine not in known:
        raise UserError(f"no stack for engine {shown(engine)}: stacks/ has {', '.join(known) or 'none'}")
    files = [known[engine]]
    if not gpu:
        cpu = stacks / f"{engine}-cpu.yml"
        if not cpu.is_file():
            raise UserError(f"{engine} needs an NVIDIA GPU and none is planned here: pick another engine (--engine llamacpp) or run on a GPU machine")
        files.append(cpu)
    if offline:
        if not (stacks / OFFLINE).is_file():
            raise UserError(f"--offline needs {stacks / OFFLINE}, which this checkout does not have")
        files.append(stacks / OFFLINE)
    for path in extra:
        if not path.is_file():
            raise UserError(f"-f {shown(str(path))}: no such file")
        files.append(path.resolve())
    return StackFiles(engine, project_of(known[engine]), tuple(files), gpu)
