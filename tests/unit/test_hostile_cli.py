"""Every string option and argument of every command, given hostile values: no traceback, no hang, and either a
one-line refusal or output that carries no control character (issue 29). Runs in a throwaway copy of the repository
with no network reachable, so an accepted value changes nothing of the checkout's and fetches nothing.

Each command needs one valid invocation to vary (BASE): a command added without one fails
`test_every_command_has_a_base_invocation`, so the sweep grows with the CLI.
"""

from __future__ import annotations

import os
from pathlib import Path

import click
import pytest
from support.builder import builder_in_process
from support.checkout import copy_repo

from builder.cli import main
from builder.core.command import ERROR_MAX
from builder.core.values import LINE_BREAKS

MARKER = "r1kit-hostile-marker"
HOSTILE = [
    *(f"a{ch}touch {MARKER} #" for ch in sorted(LINE_BREAKS)),
    "a\x00b", "a\x1b[2Jb", f"$(touch {MARKER})", f"`touch {MARKER}`", f"; touch {MARKER} #", "'\"", "x" * 100_000,
    "y" * 300, "a/" * 1500, "../" * 20 + "etc/passwd", "-", "--help", "",
]
DEAD = "https://127.0.0.1:9"  # nothing listens: a value that gets through fails fast, offline

# One valid invocation per command; {tmp} is a fresh folder.
BASE: dict[str, list[str]] = {
    "bench": ["http://127.0.0.1:9", "--requests", "1", "--timeout", "2"],
    "build": ["llamacpp-cpu", "--dry-run"],
    "bump": ["--index", DEAD],
    "bundle load": ["{tmp}/bundle"],
    "bundle save": ["llamacpp-cpu", "--to", "{tmp}/bundle"],  # Docker holds none of its images here: refused
    "check-index": ["{tmp}/index.json", "--platforms", "linux/amd64"],
    "check-pulls": ["{tmp}/answers"],
    "digests": ["{tmp}", "--image", "ghcr.io/r1kit/x", "--platforms", "linux/amd64"],
    "doctor": ["--cpu", "--offline", "--data-root", "{tmp}"],
    "down": [],
    "download": ["r1-distill-qwen-1.5b", "--dry-run", "--dest", "{tmp}/models"],
    "list": [],
    "matrix": ["--job", "build"],
    "models": [],
    "pin": ["vllm", "0.33.0"],
    "plan": ["--cpu", "auto", "--ram", "64", "--gpus", "none"],
    "publish-gate": ["--event", "push", "--ref", "refs/heads/main"],
    "render": ["llamacpp-cpu"],
    "slurm": ["4x4-h100", "--dry-run"],
    "stack-images": [],
    "stage": ["llamacpp-cpu", "-o", "{tmp}/context"],
    "status": [],
    "sync": ["--check"],
    "tags": ["llamacpp-cpu"],
    "up": ["r1-distill-qwen-1.5b", "--cpu", "--env-file", "{tmp}/.env"],  # no --yes and no terminal: refused before Docker
}


def commands() -> dict[str, click.Command]:
    """Every command, a group's as `GROUP COMMAND` (`bundle save`)."""
    out: dict[str, click.Command] = {}
    for name, command in main.commands.items():
        if isinstance(command, click.Group):
            out.update({f"{name} {sub}": c for sub, c in command.commands.items()})
        else:
            out[name] = command
    return out


def string_params(command: click.Command) -> list[click.Parameter]:
    """The options and arguments that take free text (strings and paths), not choices, numbers or flags."""
    out = []
    for p in command.params:
        if getattr(p, "is_flag", False) or isinstance(p.type, (click.Choice, click.types._NumberParamTypeBase)):
            continue
        if isinstance(p.type, (click.types.StringParamType, click.Path, click.types.UnprocessedParamType)) or p.type.name in ("text", "path"):
            out.append(p)
    return out


def test_every_command_has_a_base_invocation():
    assert sorted(commands()) == sorted(BASE), "add the new command's valid invocation to BASE"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_repo(tmp_path_factory.mktemp("hostile") / "repo")


def invocation(name: str, param: click.Parameter, value: str, tmp: Path) -> list[str]:
    args = [a.replace("{tmp}", str(tmp)) for a in BASE[name]]
    if isinstance(param, click.Argument):
        # Arguments are positional: the base's first positional words, in order, are replaced by position.
        positions = [i for i, a in enumerate(args) if not a.startswith("-") and (i == 0 or not args[i - 1].startswith("-"))]
        index = [p for p in commands()[name].params if isinstance(p, click.Argument)].index(param)
        if index < len(positions):
            args[positions[index]] = value
        else:
            args.append(value)
        return args
    return [*args, param.opts[0], value]


CASES = [(name, param.name) for name, command in sorted(commands().items()) if name in BASE for param in string_params(command)]


@pytest.mark.parametrize(("name", "param_name"), CASES, ids=[f"{n}-{p}" for n, p in CASES])
def test_hostile_values_are_refused_in_one_line_or_pass_through_harmlessly(sandbox: Path, tmp_path: Path, name: str, param_name: str):
    param = next(p for p in commands()[name].params if p.name == param_name)
    env = {**os.environ, "BUILDER_ROOT": str(sandbox), "HOME": str(tmp_path), "HF_ENDPOINT": DEAD, "HF_HUB_OFFLINE": "1",
           "BUILDER_PYPI_URL": DEAD, "NO_COLOR": "1"}
    for value in HOSTILE:
        work = tmp_path / f"w{HOSTILE.index(value)}"
        work.mkdir()
        result = builder_in_process(*name.split(), *invocation(name, param, value, work), check=False, capture_output=True, env=env, cwd=work)
        what = f"builder {name} {param.opts[0] if param.opts else param.name} {value[:40]!r}"
        assert "Traceback" not in result.stderr, f"{what}: {result.stderr[-1500:]}"
        assert result.returncode in (0, 1, 2), f"{what}: exit {result.returncode}"
        if result.returncode:
            last = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""
            assert last.startswith("error: ") and len(last) <= len("error: ") + ERROR_MAX + 3, f"{what}: {result.stderr[-600:]}"
        assert not any(ch in result.stdout for ch in LINE_BREAKS - {"\n"} | {"\x00", "\x1b"}), f"{what}: a control character in the output"
        assert not list(work.rglob(MARKER)) and not (sandbox / MARKER).exists(), f"{what}: ran a command"
