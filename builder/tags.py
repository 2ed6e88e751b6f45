"""Image references: one scheme for `builder build`, the images workflow and the stacks.

<registry>/<target>:<tag>. Each variant (a combination of a target's options) gets:
- its versioned tag, from the target's `tag` template in image.yaml: <engine version>[-<variant>], for example
  b10864-cu12-blis. It moves only when the image is rebuilt (the weekly rebuild picks up base-image fixes);
- a moving alias without the engine version, the variant alone (cu12-blis), where the variant has a name;
- `latest`, for the target's default variant only;
- on a release of this project (git tag vX.Y.Z), <versioned tag>-r1kit<X.Y.Z>, which no later build reuses.
$BUILDER_REGISTRY overrides the registry (default ghcr.io/r1kit).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Mapping

from builder.catalog import Target
from builder.errors import UserError, shown
from builder.render import image_tag

DEFAULT_REGISTRY = "ghcr.io/r1kit"
DEFAULT_VARIANT = "default"  # the name of a variant whose versioned tag is the bare engine version
RELEASE = re.compile(r"^v?(\d+\.\d+\.\d+(?:-[0-9A-Za-z.]+)?)$")


def registry(override: str | None = None) -> str:
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
    """The versioned tag without the engine version (b10864-cu12-blis: cu12-blis), or 'default' where nothing is left."""
    tag = image_tag(target, settings)
    if not tag.startswith(target.version):
        raise UserError(f"target {target.name}: its tag template must start with the engine version ({tag!r} does not)")
    return tag[len(target.version):].lstrip("-") or DEFAULT_VARIANT


def tags(target: Target, settings: Mapping[str, str], release: str | None = None) -> list[str]:
    """Every tag of this variant, the versioned one first."""
    versioned = image_tag(target, settings)
    out = [versioned]
    name = variant_name(target, settings)
    if name != DEFAULT_VARIANT:
        out.append(name)
    if target.resolve(settings) == target.resolve({}):
        out.append("latest")
    version = release_version(release)
    if version:
        out.append(f"{versioned}-r1kit{version}")
    return out


def image_refs(target: Target, settings: Mapping[str, str], registry_override: str | None = None, release: str | None = None) -> list[str]:
    return [f"{registry(registry_override)}/{target.name}:{tag}" for tag in tags(target, settings, release)]


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
