"""What the user chose for a target: its options from flags, --set and a published variant; KEY=VALUE pairs;
platform lists; and the checks of what reaches docker's command line (image references, build args, the registry)."""

from __future__ import annotations

import os
import re

from builder.core.errors import UserError, shown
from builder.core.values import matching, plain
from builder.images import tags
from builder.images.catalog import Target

# Docker's reference grammar (distribution/reference), ASCII only, each used as a full match (values.matching).
# A path component: lower-case letters and digits, joined by `.`, `_`, `__` or dashes.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_LABEL = r"(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])"
# A registry host is told from a first path component by a `.` or a port, or by being localhost (as docker does).
_DOMAIN = rf"(?:localhost(?::[0-9]{{1,5}})?|{_LABEL}(?:\.{_LABEL})+(?::[0-9]{{1,5}})?|{_LABEL}:[0-9]{{1,5}}|\[[0-9A-Fa-f:.]+\](?::[0-9]{{1,5}})?)"
_NAME = rf"(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*"
IMAGE_REFERENCE = re.compile(rf"(?P<name>{_NAME})(?::[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})?(?:@[a-z0-9]+(?:[+._-][a-z0-9]+)*:[0-9a-fA-F]{{32,}})?")
NAME_MAX = 255  # docker refuses a longer repository name
# What the default tags start with: host[:port], then an owner path, all lower case (tags.resolve_registry lowers it).
_LOWER_LABEL = r"(?:[a-z0-9]|[a-z0-9][a-z0-9-]*[a-z0-9])"
REGISTRY = re.compile(rf"{_LOWER_LABEL}(?:\.{_LOWER_LABEL})*(?::[0-9]{{1,5}})?(?:/{_COMPONENT})*")
BUILD_ARG = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def parse_pairs(pairs: tuple[str, ...], what: str) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"{what} {shown(pair)} is not KEY=VALUE")
        out[key] = value
    return out


def build_args(pairs: tuple[str, ...]) -> dict[str, str]:
    """--build-arg KEY=VALUE: a key docker takes as a build argument's name, a value on one line. Docker gets each as
    one argument, so nothing here is a shell's concern; a newline would still reach the Dockerfile's RUN lines and
    the build's log."""
    out = parse_pairs(pairs, "--build-arg")
    for key, value in out.items():
        matching(BUILD_ARG, key, "--build-arg", "a build argument name (letters, digits and _, not starting with a digit)")
        plain(value, f"--build-arg {key}=")
    return out


def image_references(refs: tuple[str, ...], what: str) -> tuple[str, ...]:
    """Each of `refs` an image reference docker accepts ([host[:port]/]path[:tag][@digest], lower-case path), so
    that a dry run shows only a command that a real build would run, and a real build fails here, not in docker."""
    for ref in refs:
        matching(IMAGE_REFERENCE, ref, what, "an image reference such as ghcr.io/me/llama:1 (lower-case path, tag of letters, digits, _ . -)")
        match = IMAGE_REFERENCE.fullmatch(ref)
        if match and len(match["name"]) > NAME_MAX:
            raise UserError(f"{what} {shown(ref)}: an image name is at most {NAME_MAX} characters")
    return refs


def registry(override: str | None) -> str:
    """The registry and owner the default tags start with (tags.resolve_registry), checked: --registry, else
    $BUILDER_REGISTRY, else the project's. Checked where it is read, so that `; rm -rf ~` in the environment is
    refused as surely as on the command line."""
    what = "--registry" if override else "$BUILDER_REGISTRY"
    plain(override or os.environ.get("BUILDER_REGISTRY") or "", what)
    return matching(REGISTRY, tags.resolve_registry(override), what,
                    "a registry and owner such as ghcr.io/me or registry.example:5000/team (lower-case host[:port]/path)")


def settings(target: Target, variant: str | None, sets: tuple[str, ...], extra: list[str]) -> dict[str, str]:
    """A published variant's options (if named), overridden by --set KEY=VALUE and by the target's own options
    given as flags (`--blas blis` for a target that declares `blas`; any other target refuses it by name)."""
    out = dict(tags.variant(target, variant).settings) if variant else {}
    out.update(parse_pairs(sets, "--set"))
    rest = list(extra)
    while rest:
        flag = rest.pop(0)
        if not flag.startswith("--") or len(flag) < 3:
            raise UserError(f"unexpected argument {shown(flag)}")
        key, sep, value = flag[2:].partition("=")
        name = key.replace("-", "_")
        if name not in target.options:
            known = ", ".join(target.options) or "none"
            raise UserError(f"no such option {flag[:40]}: target {target.name} has no option {shown(name)} "
                            f"(its options: {known}; see `builder list` or --help)")
        if not sep:
            if not rest:
                raise UserError(f"--{key} needs a value")
            value = rest.pop(0)
        out[name] = value
    return out


def platforms(values: tuple[str, ...] | str) -> tuple[str, ...]:
    """linux/amd64,linux/arm64, given once comma-separated or as repeated flags."""
    given = (values,) if isinstance(values, str) else values
    return tuple(p.strip() for value in given for p in value.split(",") if p.strip())
