"""A target as `builder list` shows it, and as the images workflow reads it (`builder list --json`)."""

from __future__ import annotations

from typing import Any

from builder.images.catalog import Target
from builder.images.tags import tags, variants


def describe(target: Target) -> dict[str, Any]:
    return {
        "name": target.name,
        "description": target.description,
        "platforms": list(target.platforms),
        "version": target.version,
        "engine": target.engine,
        "source": {"url": target.pin.source_url, "sha256": target.pin.sha256, "tree": target.pin.source_tree} if target.pin.url else None,
        "folder": str(target.folder.relative_to(target.folder.parent.parent)),
        "options": {o.name: {"default": o.default, "choices": list(o.choices), "help": o.help} for o in target.options.values()},
        "variants": [
            {"name": v.name, "settings": dict(v.settings), "platforms": list(v.platforms), "tags": tags(target, v.settings)}
            for v in variants(target)
        ],
    }


def lines(row: dict[str, Any]) -> list[str]:
    """The human listing: the target, then one line per option."""
    out = [f"{row['name']:<16} {','.join(row['platforms']):<26} {row['description']}"]
    for name, opt in row["options"].items():
        values = "|".join(opt["choices"]) or opt["default"]
        out.append(f"{'':<16}   --set {name}={values}  (default {opt['default']})")
    return out
