"""The image catalog: every images/<engine>/image.yaml read into frozen dataclasses.

Validation happens here, once: an unknown target, option or value is rejected before anything renders.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import yaml

from builder.core.errors import UserError, shown
from builder.core.paths import images_dir

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
class Pin:
    """An image folder's pinned release: its version and, for an engine built from upstream source, the archive's
    URL, its sha256 and the source tree inside it, and the PyPI release `builder bump` follows. Every other file that
    names them is generated from here (`builder sync`)."""

    folder: str
    version: str
    url: str | None = None
    sha256: str | None = None
    tree: str | None = None
    upstream: str | None = None  # the PyPI project whose sdist carries the source
    release: str | None = None  # its pinned release

    @property
    def source_url(self) -> str | None:
        return self.url.replace("{version}", self.version) if self.url else None

    @property
    def source_tree(self) -> str | None:
        return self.tree.replace("{version}", self.version) if self.tree else None


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
    # Further local sources (`--source NAME=PATH`): name -> the build arg that selects them.
    extra_sources: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    # The engine this target runs (image.yaml `engine:`), as the model catalog names it.
    engine: str | None = None
    # Every image folder's pin, by folder name: a template may name another folder's pin (model-init builds
    # llama-gguf-split from llama.cpp's), and this folder's own is pins[folder.name].
    pins: Mapping[str, Pin] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def pin(self) -> Pin:
        return self.pins.get(self.folder.name) or Pin(self.folder.name, self.version)

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
class ImageCatalog:
    targets: Mapping[str, Target]
    pins: Mapping[str, Pin] = field(default_factory=lambda: MappingProxyType({}))

    def engines(self, stacks: Path | None = None) -> set[str]:
        """The engines the project runs: those its image folders build (image.yaml `engine:`), and those a stack
        runs from an upstream image (stacks/<engine>-webui.yml, e.g. Ollama's)."""
        from_stacks = {p.name.removesuffix("-webui.yml") for p in stacks.glob("*-webui.yml")} if stacks else set()
        return {t.engine for t in self.targets.values() if t.engine} | from_stacks

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


def _schema() -> dict[str, Any]:
    return json.loads(resources.files("builder.images").joinpath("image.schema.json").read_text())


def read_spec(spec_path: Path) -> dict[str, Any]:
    """image.yaml, parsed and checked against builder/images/image.schema.json: one line naming the file and the key."""
    try:
        spec = yaml.safe_load(spec_path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise UserError(f"{spec_path}{f':{mark.line + 1}' if mark else ''}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    # Imported here: `builder download` (the model-init image) never reads image.yaml and need not load jsonschema.
    import jsonschema

    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(_schema()).iter_errors(spec))
    if error is not None:
        where = ".".join(str(p) for p in error.absolute_path) or "top level"
        raise UserError(f"{spec_path}: {where}: {error.message}")
    return spec


def _pin(folder: Path, spec: Mapping[str, Any]) -> Pin:
    source, upstream = spec.get("source") or {}, spec.get("upstream") or {}
    return Pin(folder.name, str(spec["version"]), source.get("url"), source.get("sha256"), source.get("tree"),
               upstream.get("pypi"), upstream.get("release"))


def load_folder(folder: Path) -> list[Target]:
    """The targets one image folder declares."""
    spec_path = folder / "image.yaml"
    spec = read_spec(spec_path)
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
            extra_sources=MappingProxyType(dict(spec.get("extra_sources", {}))),
            engine=spec.get("engine"),
            pins=MappingProxyType({folder.name: _pin(folder, spec)}),
        )
        targets.append(replace(target, published=_published(target, t.get("publish"), spec_path)))
    return targets


def load(root: Path | None = None) -> ImageCatalog:
    root = root or images_dir()
    targets: dict[str, Target] = {}
    pins: dict[str, Pin] = {}
    for spec in sorted(root.glob("*/image.yaml")):
        for target in load_folder(spec.parent):
            if target.name in targets:
                raise UserError(f"target {target.name} is declared twice ({targets[target.name].folder}, {spec.parent})")
            targets[target.name] = target
            pins.update(target.pins)
    every = MappingProxyType(pins)
    return ImageCatalog(MappingProxyType({name: replace(t, pins=every) for name, t in targets.items()}), every)
