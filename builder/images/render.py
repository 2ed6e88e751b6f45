"""Render a target's Dockerfile: a pure function of (target, options); no I/O but reading the template."""

from __future__ import annotations

from typing import Any, Mapping

import jinja2

from builder.core.templates import environment
from builder.images.catalog import Target


def _environment(target: Target) -> jinja2.Environment:
    # The folder's own template, and the other image folders' (model-init imports llamacpp/source.j2).
    return environment(jinja2.FileSystemLoader([target.folder, target.folder.parent]))


def context(target: Target, settings: Mapping[str, str]) -> dict[str, Any]:
    """The template's variables: fixed parameters, checked options, the target's name and version, and the pins
    (`pin`: this folder's, `pins.<folder>`: any folder's; each with version, source_url, sha256)."""
    return {**target.params, **target.resolve(settings), "target": target.name, "version": target.version,
            "pin": target.pin, "pins": target.pins}


def render(target: Target, settings: Mapping[str, str] | None = None) -> str:
    values = context(target, settings or {})
    text = _environment(target).get_template(target.template).render(values)
    return "\n".join(line.rstrip() for line in text.splitlines()) + "\n"


def image_tag(target: Target, settings: Mapping[str, str] | None = None) -> str:
    """The versioned tag of this variant, from the spec's `tag` template (e.g. b10864-cu12-blis)."""
    values = context(target, settings or {})
    return environment().from_string(target.tag).render(values).strip()
