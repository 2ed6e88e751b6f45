"""Image references: one scheme for `builder build`, the images workflow and the stacks.

<registry>/<target>:<tag>. Each variant (a combination of a target's options) gets, from every publishing run of main:
- its versioned tag, from the target's `tag` template in image.yaml: <version>[-<variant>], for example
  <version>-cu12-blis, where <version> is the engine's pin, or for an image of this project's own code (model-init:
  no `engine:`) r1kit's version (pyproject.toml). It moves only when the image is rebuilt (the weekly rebuild picks
  up base-image fixes). The stacks name it, so the first publishing run of main writes every tag they need;
- a moving alias without the version, the variant alone (cu12-blis), where the variant has a name;
- `latest`, for the target's default variant only;
- with a commit (`--sha`: pushes to main), sha-<12 hex of the commit>[-<variant>], which no later build reuses.
A release of this project (git tag vX.Y.Z) writes, for every image alike, only <versioned tag>-r1kit<X.Y.Z>, which no
other run writes: it moves nothing (no alias, no `latest`), so a release of an older commit never moves them back.
A release whose X.Y.Z differs from model-init's version (r1kit's) is refused: bump pyproject.toml first.
$BUILDER_REGISTRY overrides the registry (default ghcr.io/r1kit).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Mapping

from builder.core.errors import UserError, shown
from builder.images.catalog import Target
from builder.images.render import image_tag

DEFAULT_REGISTRY = "ghcr.io/r1kit"
DEFAULT_VARIANT = "default"  # the name of a variant whose versioned tag is the bare engine version
RELEASE = re.compile(r"^v?(\d+\.\d+\.\d+(?:-[0-9A-Za-z.]+)?)$")
COMMIT = re.compile(r"^[0-9a-f]{40}$")
SHA_LENGTH = 12  # of the commit in sha-<commit> tags: unambiguous in any repository this size


def resolve_registry(override: str | None = None) -> str:
    # Registries take lower-case repository names only; GitHub owners may have capitals.
    return (override or os.environ.get("BUILDER_REGISTRY") or DEFAULT_REGISTRY).rstrip("/").lower()


def release_version(value: str | None) -> str | None:
    """X.Y.Z from a release tag such as v0.2.0; None for no release."""
    if not value:
        return None
    match = RELEASE.match(value)
    if not match:
        raise UserError(f"release {shown(value)} is not a version such as v0.2.0 or 0.2.0")
    return match.group(1)


def variant_name(target: Target, settings: Mapping[str, str]) -> str:
    """The versioned tag without the version (<version>-cu12-blis: cu12-blis), or 'default' where nothing is left."""
    tag = image_tag(target, settings)
    if not tag.startswith(target.version):
        raise UserError(f"target {target.name}: its tag template must start with the engine version ({tag!r} does not)")
    return tag[len(target.version):].lstrip("-") or DEFAULT_VARIANT


def is_project_versioned(target: Target) -> bool:
    """An image of this project's own code (model-init): no engine, so its version is r1kit's (pyproject.toml)."""
    return target.engine is None and target.pin.upstream is None


def commit(value: str | None) -> str | None:
    if not value:
        return None
    if not COMMIT.match(value):
        raise UserError(f"commit {shown(value)} is not a full 40-hex git commit id")
    return value


def tags(target: Target, settings: Mapping[str, str], release: str | None = None, sha: str | None = None) -> list[str]:
    """Every tag a run writes for this variant: a release's immutable tag only; else the moving ones (the
    versioned one first), and the commit's own tag where a commit is given."""
    versioned = image_tag(target, settings)
    name = variant_name(target, settings)
    version = release_version(release)
    if version:
        if sha:
            raise UserError("a release publishes no per-commit tag: give --release or --sha, not both")
        if is_project_versioned(target) and target.version != version:
            raise UserError(
                f"release {shown(release)} but {target.name}'s version is {target.version} (pyproject.toml and "
                f"{target.folder.name}/image.yaml): bump it before tagging the release"
            )
        return [f"{versioned}-r1kit{version}"]
    out = [versioned]
    if name != DEFAULT_VARIANT:
        out.append(name)
    if target.resolve(settings) == target.resolve({}):
        out.append("latest")
    full = commit(sha)
    if full:
        out.append(f"sha-{full[:SHA_LENGTH]}" + ("" if name == DEFAULT_VARIANT else f"-{name}"))
    return out


def image_refs(
    target: Target, settings: Mapping[str, str], registry_override: str | None = None, release: str | None = None, sha: str | None = None
) -> list[str]:
    return [f"{resolve_registry(registry_override)}/{target.name}:{tag}" for tag in tags(target, settings, release, sha)]


@dataclass(frozen=True)
class Variant:
    """A published variant: the target, its name (the moving alias), its settings and platforms."""

    target: Target
    name: str
    settings: Mapping[str, str]
    platforms: tuple[str, ...]


def variants(target: Target) -> list[Variant]:
    """The variants the images workflow publishes (image.yaml `publish:`)."""
    out = [Variant(target, variant_name(target, p.settings), p.settings, p.platforms) for p in target.published]
    names = [v.name for v in out]
    if len(set(names)) != len(names):
        raise UserError(f"target {target.name}: two published variants share a tag ({', '.join(names)}): make the tag template tell them apart")
    return out


def variant(target: Target, name: str) -> Variant:
    for v in variants(target):
        if v.name == name:
            return v
    known = ", ".join(v.name for v in variants(target))
    raise UserError(f"target {target.name} publishes no variant {shown(name)} (its variants: {known})")
