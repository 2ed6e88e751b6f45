"""The image catalog: every images/<engine>/image.yaml read into frozen dataclasses.

Validation happens here, once: an unknown target, option or value is rejected before anything renders.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import yaml

from builder.errors import UserError, shown
from builder.paths import images_dir

PLATFORM = re.compile(r"^linux/(amd64|arm64)$")


@dataclass(frozen=True)
class Option:
    """A template parameter the user may set (`--set NAME=VALUE`)."""

    name: str
    help: str
    default: str
    choices: tuple[str, ...] = ()
    pattern: str | None = None

    def check(self, value: str) -> str:
        if self.choices and value not in self.choices:
            raise UserError(f"option {self.name}={shown(value)} is not one of {', '.join(self.choices)}")
        if self.pattern and not re.fullmatch(self.pattern, value):
            raise UserError(f"option {self.name}={shown(value)} is malformed: {self.help}")
        return value


@dataclass(frozen=True)
class Published:
    """One variant the images workflow builds and pushes: option settings, and the platforms to build them for."""

    settings: Mapping[str, str]
    platforms: tuple[str, ...]


@dataclass(frozen=True)
class Target:
    """One buildable image: a template, fixed parameters, options and platforms."""

    name: str
    folder: Path
    description: str
    template: str
    version: str
    platforms: tuple[str, ...]
    params: Mapping[str, str]
    options: Mapping[str, Option]
    smoke_test: tuple[str, ...]
    tag: str = "{{ version }}"
    source_arg: str | None = None
    # Paths of this repository (e.g. the builder package) that the build context also needs.
    repo_files: tuple[str, ...] = ()
    # The variants CI publishes (image.yaml `publish:`); by default the default options on every platform.
    published: tuple[Published, ...] = ()

    def resolve(self, settings: Mapping[str, str]) -> dict[str, str]:
        """Every option's value: the defaults, overridden by checked `settings`."""
        unknown = sorted(set(settings) - set(self.options))
        if unknown:
            known = ", ".join(self.options) or "none"
            raise UserError(f"target {self.name} has no option {shown(unknown[0])} (its options: {known})")
        return {name: opt.check(settings.get(name, opt.default)) for name, opt in self.options.items()}

    def check_platforms(self, platforms: tuple[str, ...]) -> tuple[str, ...]:
        for p in platforms:
            if p not in self.platforms:
                raise UserError(f"target {self.name} does not support platform {shown(p)} (it supports {', '.join(self.platforms)})")
        return platforms


@dataclass(frozen=True)
class Catalog:
    targets: Mapping[str, Target]

    def get(self, name: str) -> Target:
        try:
            return self.targets[name]
        except KeyError:
            raise UserError(f"unknown target {shown(name)}: choose one of {', '.join(sorted(self.targets))} (see `builder list`)") from None


def _options(raw: Mapping[str, Any], where: Path) -> dict[str, Option]:
    opts = {}
    for name, spec in raw.items():
        try:
            opt = Option(
                name=name,
                help=str(spec["help"]),
                default=str(spec["default"]),
                choices=tuple(str(c) for c in spec.get("choices", ())),
                pattern=spec.get("pattern"),
            )
        except (KeyError, TypeError) as e:
            raise UserError(f"{where}: option {name!r} needs help and default ({e})") from None
        opt.check(opt.default)
        opts[name] = opt
    return opts


def _published(target: Target, raw: Any, where: Path) -> tuple[Published, ...]:
    """The `publish:` entries, each checked like the command line's options, or the defaults on every platform."""
    if raw is None:
        return (Published(MappingProxyType({}), target.platforms),)
    out: list[Published] = []
    seen: list[dict[str, str]] = []
    for entry in raw:
        entry = dict(entry or {})
        platforms = tuple(entry.pop("platforms", target.platforms))
        settings = {k: str(v) for k, v in entry.items()}
        try:
            resolved = target.resolve(settings)
            target.check_platforms(platforms)
        except UserError as e:
            raise UserError(f"{where}: target {target.name}: publish entry {entry or '{}'}: {e}") from None
        if resolved in seen:
            raise UserError(f"{where}: target {target.name} publishes {settings or 'the defaults'} twice")
        seen.append(resolved)
        out.append(Published(MappingProxyType(settings), platforms))
    return tuple(out)


def load_folder(folder: Path) -> list[Target]:
    """The targets one image folder declares."""
    spec_path = folder / "image.yaml"
    spec = yaml.safe_load(spec_path.read_text())
    shared = _options(spec.get("options", {}), spec_path)
    targets = []
    for name, t in spec["targets"].items():
        platforms = tuple(t.get("platforms", spec.get("platforms", ())))
        bad = [p for p in platforms if not PLATFORM.match(p)]
        if bad or not platforms:
            raise UserError(f"{spec_path}: target {name} has bad platforms {bad or platforms}")
        target = Target(
            name=name,
            folder=folder,
            description=t.get("description", spec.get("description", "")),
            template=spec.get("template", "Dockerfile.j2"),
            version=str(spec["version"]),
            platforms=platforms,
            params=MappingProxyType({k: str(v) for k, v in t.get("params", {}).items()}),
            options=MappingProxyType({**shared, **_options(t.get("options", {}), spec_path)}),
            smoke_test=tuple(spec.get("smoke_test", ())),
            tag=t.get("tag", spec.get("tag", "{{ version }}")),
            source_arg=spec.get("source_arg"),
            repo_files=tuple(spec.get("repo_files", ())),
        )
        targets.append(replace(target, published=_published(target, t.get("publish"), spec_path)))
    return targets


def load(root: Path | None = None) -> Catalog:
    root = root or images_dir()
    targets: dict[str, Target] = {}
    for spec in sorted(root.glob("*/image.yaml")):
        for target in load_folder(spec.parent):
            if target.name in targets:
                raise UserError(f"target {target.name} is declared twice ({targets[target.name].folder}, {spec.parent})")
            targets[target.name] = target
    return Catalog(MappingProxyType(targets))
