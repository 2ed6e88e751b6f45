"""Turn a target and the user's choices into a build plan, and run it with BuildKit.

The only module that builds images. A plan is plain data; `command()` is the exact argv that runs it,
which `--dry-run` prints.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import ssl
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping

from python_on_whales.exceptions import DockerException
from python_on_whales.utils import stream_stdout_and_stderr

from builder.core.errors import UserError, shown
from builder.core.progress import BuildProgress
from builder.images import options, render
from builder.images.catalog import Pin, Target
from builder.images.docker import Backend
from builder.images.tags import image_refs

CONTEXT = "<context>"  # stands for the staging folder in a printed command
SOURCE_EXCLUDES = {".git", "build", "node_modules", "__pycache__"}


@dataclass(frozen=True)
class BuildPlan:
    target: Target
    settings: Mapping[str, str]
    dockerfile: str
    tags: tuple[str, ...]
    platforms: tuple[str, ...]
    build_args: Mapping[str, str]
    source: Path | None
    push: bool
    no_cache: bool
    # Further local sources (`--source NAME=PATH`), staged as source-NAME/.
    extra_sources: Mapping[str, Path] = field(default_factory=dict)
    # BuildKit secrets (id -> file): mounted into the steps that ask for them, kept in no layer.
    secrets: Mapping[str, Path] = field(default_factory=dict)

    def command(self, backend: Backend, context: str = CONTEXT) -> list[str]:
        cmd = [*backend.build_command, "--progress", "plain", "--file", f"{context}/Dockerfile"]
        for tag in self.tags:
            cmd += ["--tag", tag]
        for key, value in self.build_args.items():
            cmd += ["--build-arg", f"{key}={value}"]
        for key, path in self.secrets.items():
            cmd += ["--secret", f"id={key},src={path}"]
        if self.no_cache:
            cmd.append("--no-cache")
        if backend.kind == "buildx":
            cmd += ["--platform", ",".join(self.platforms)] if self.platforms else []
            cmd.append("--push" if self.push else "--load")
        elif self.platforms:
            cmd += ["--platform", self.platforms[0]]
        return [*cmd, context]

    def shell_line(self, backend: Backend, context: str = CONTEXT) -> str:
        env = [f"{k}={v}" for k, v in backend.env.items()]
        return shlex.join([*env, *self.command(backend, context)])


def host_ca_bundle() -> Path | None:
    """The CA bundle this host trusts. Where TLS is inspected on the way out (a company proxy), only it verifies
    PyPI; a build's downloads use it through the secret `ca`, and trust what they fetch for its pinned hash."""
    for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "PIP_CERT"):
        if os.environ.get(name) and Path(os.environ[name]).is_file():
            return Path(os.environ[name])
    default = Path(ssl.get_default_verify_paths().openssl_cafile)
    return default if default.is_file() else None


NAMED_SOURCE = re.compile(r"^([a-z][a-z0-9-]*)=(.+)$")


def split_sources(target: Target, values: tuple[str, ...]) -> tuple[Path | None, dict[str, Path]]:
    """`--source PATH` (the target's own source) and `--source NAME=PATH` (one of its extra_sources)."""
    primary: Path | None = None
    named: dict[str, Path] = {}
    for value in values:
        match = NAMED_SOURCE.match(value)
        if match and not Path(value).exists():
            name, path = match.groups()
            if name not in target.extra_sources:
                known = ", ".join(target.extra_sources) or "none"
                raise UserError(f"target {target.name} takes no --source {shown(name)}=... (its named sources: {known})")
            named[name] = Path(path).resolve()
        elif primary is None:
            primary = Path(value).resolve()
        else:
            raise UserError(f"--source {shown(value)}: give the target's own source once, others as NAME=PATH")
    return primary, named


def _check_source(flag: str, source: Path) -> None:
    if not source.exists():
        raise UserError(f"{flag} {source} does not exist: give a source checkout folder or a .tar.gz of one")
    if not (source.is_dir() or tarfile.is_tarfile(source)):
        raise UserError(f"{flag} {source} is neither a folder nor a tarball")


def plan(
    target: Target,
    settings: Mapping[str, str],
    *,
    platforms: tuple[str, ...] = (),
    tags: tuple[str, ...] = (),
    build_args: tuple[str, ...] = (),
    source: Path | None = None,
    extra_sources: Mapping[str, Path] | None = None,
    push: bool = False,
    no_cache: bool = False,
    registry: str | None = None,
    release: str | None = None,
) -> BuildPlan:
    """Check every input and fix the build; nothing is written or run."""
    target.check_platforms(platforms)
    args = options.build_args(build_args)
    if source is not None:
        if not target.source_arg:
            raise UserError(f"target {target.name} takes no --source")
        _check_source("--source", source)
        args = {target.source_arg: "local", **args}
    for name, path in (extra_sources or {}).items():
        _check_source(f"--source {name}=", path)
        args = {target.extra_sources[name]: "local", **args}
    if len(platforms) > 1 and not push:
        raise UserError("several --platform values need --push (a local image store holds one platform)")
    # The project's tags (tags.py), the same the images workflow pushes, unless the user names their own.
    # Every value that reaches docker's command line is checked here, so that a dry run shows what a real build runs.
    if registry is not None or not tags:
        registry = options.registry(registry)
    refs = options.image_references(tags or tuple(image_refs(target, settings, registry, release)), "--tag" if tags else "image reference")
    ca = host_ca_bundle()
    return BuildPlan(
        target=target,
        settings=dict(settings),
        dockerfile=render.render(target, settings),
        tags=refs,
        platforms=platforms,
        build_args=args,
        source=source,
        push=push,
        no_cache=no_cache,
        extra_sources=dict(extra_sources or {}),
        secrets={"ca": ca} if ca else {},
    )


STAGE_EXCLUDES = {"image.yaml", "runtime.yaml", "source"}  # and source-NAME/ folders (below)


def check_backend(build: BuildPlan, backend: Backend) -> None:
    """Checked before a dry run too, so that it never prints a command that would build one platform of several."""
    if len(build.platforms) > 1 and backend.kind != "buildx":
        raise UserError("building several platforms needs the docker buildx plugin")


def fetched_sources(build: BuildPlan) -> list[Pin]:
    """The pinned sources the build downloads and checks: those whose sha256 the Dockerfile holds, unless a local
    `--source` replaces them."""
    local = set(build.extra_sources) | ({build.target.folder.name} if build.source else set())
    return [p for p in build.target.pins.values() if p.sha256 and p.sha256 in build.dockerfile and p.folder not in local]


def dry_run(build: BuildPlan, backend: Backend) -> list[str]:
    """What `--dry-run` prints: what the context holds, the sources the build fetches, then the command."""
    staged = ([f"{build.source} as source/"] if build.source else []) + [f"{p} as source-{n}/" for n, p in build.extra_sources.items()]
    fetched = [f"# fetches {p.folder} {p.version}: {p.source_url} (sha256 {p.sha256}), its {p.source_tree}/" for p in fetched_sources(build)]
    return [f"# {CONTEXT}: {build.target.folder}, the rendered Dockerfile" + "".join(f", and {s}" for s in staged),
            *fetched, build.shell_line(backend)]


def _check_outside_sources(build: BuildPlan, into: Path) -> None:
    sources = [("", build.source), *((f"{n}=", s) for n, s in build.extra_sources.items())]
    for name, source in sources:
        # A folder source holding the context would be copied into itself until the disk is full (seen: 74 GB).
        if source is not None and source.is_dir() and into.resolve().is_relative_to(source.resolve()):
            raise UserError(f"--source {name}{source} holds the folder the build context is written to ({into}): "
                            "give a folder of its own, or write the context elsewhere")


def stage_context(build: BuildPlan, into: Path) -> None:
    """The build context: the image folder, the rendered Dockerfile and, with --source, source/."""
    # Left out: the template, spec and runtime facts, the committed renders (*.Dockerfile and their .dockerignore, for compose
    # `build:`) and a local source/ folder (compose builds with LLAMACPP_SOURCE=local use it; `builder build`
    # stages --source instead).
    _check_outside_sources(build, into)
    top = build.target.folder
    shutil.copytree(top, into, dirs_exist_ok=True,
                    ignore=lambda d, names: [n for n in names if n == "__pycache__" or Path(d) == top and (n in STAGE_EXCLUDES or n.startswith("source-") or n.endswith((".j2", ".Dockerfile", ".dockerignore")))])
    (into / "Dockerfile").write_text(build.dockerfile)
    repo = build.target.folder.parent.parent
    for name in build.target.repo_files:
        path = repo / name
        if path.is_dir():
            shutil.copytree(path, into / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(path, into / name)
    if build.source is not None:
        _stage_source(build.source, into / "source", into / "unpacked")
    for name, path in build.extra_sources.items():
        _stage_source(path, into / f"source-{name}", into / f"unpacked-{name}")


def _stage_source(source: Path, dest: Path, scratch: Path) -> None:
    """A checkout folder (copied without .git and build/) or a tarball (unpacked) as `dest`."""
    if source.is_dir():
        shutil.copytree(source, dest, symlinks=True, ignore=lambda d, names: [n for n in names if n in SOURCE_EXCLUDES and Path(d) == source])
        return
    with tarfile.open(source) as tar:
        tar.extractall(scratch, filter="data")
    top = list(scratch.iterdir())
    # A release tarball holds one top folder (llama.cpp-b1234/): its content is the source.
    (top[0] if len(top) == 1 and top[0].is_dir() else scratch).rename(dest)
    if scratch.exists():
        shutil.rmtree(scratch)


def stage(build: BuildPlan, into: Path) -> None:
    """Write the build context into a new or empty folder: `builder stage`, which the images workflow builds from."""
    if into.exists() and (not into.is_dir() or any(into.iterdir())):
        raise UserError(f"{into} is not an empty folder: stage the build context into a new or empty one")
    _check_outside_sources(build, into)
    into.mkdir(parents=True, exist_ok=True)
    stage_context(build, into)


def _lines(backend: Backend, cmd: list[str]) -> Iterator[str]:
    try:
        for _, raw in stream_stdout_and_stderr(cmd, env=dict(backend.env)):
            yield raw.decode(errors="replace").rstrip("\n")
    except DockerException as e:
        raise UserError(f"docker build failed with exit status {e.return_code}: see the log above") from None


def run(build: BuildPlan, backend: Backend) -> list[str]:
    """Stage the context, stream the build log, then push (classic builder) where asked. Returns the log."""
    log: list[str] = []
    with tempfile.TemporaryDirectory(prefix="builder-context-") as tmp:
        context = Path(tmp) / "context"
        stage_context(build, context)
        cmd = build.command(backend, str(context))
        print("+ " + build.shell_line(backend, str(context)), file=sys.stderr, flush=True)
        with BuildProgress(build.target.name) as progress:
            for line in _lines(backend, cmd):
                log.append(line)
                progress.line(line)
    if build.push and backend.kind == "classic":
        for tag in build.tags:
            subprocess.run([backend.client, "push", tag], check=True, env={**os.environ, **backend.env})
    return log


def smoke_test(build: BuildPlan, backend: Backend) -> str:
    """Run the target's smoke test in the built image; its output, or a UserError."""
    if not build.target.smoke_test or build.push:
        return ""
    command = list(build.target.smoke_test)
    try:
        return str(backend.whales().run(build.tags[0], command[1:], entrypoint=command[0], remove=True))
    except DockerException as e:
        last = (e.stderr or "").strip().splitlines()[-1:]  # python-on-whales leaves stderr None when it was not captured
        raise UserError(f"smoke test `{shlex.join(command)}` failed in {build.tags[0]}: {last[0] if last else e}") from None
