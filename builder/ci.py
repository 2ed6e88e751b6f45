"""The images workflow's build matrix, from the catalog: adding an image folder adds its images to CI.

`builder matrix --job build` gives one entry per (target, published variant, platform), each on a native
runner; `--job merge` gives one per (target, variant), which joins the per-platform digests into one multi-arch
tag. The workflow only passes these values on; every name and tag is decided here and in tags.py.
"""

from __future__ import annotations

from typing import Any

from builder.catalog import Catalog
from builder.tags import registry as registry_of
from builder.tags import tags, variants

# Native runners: no QEMU emulation, which would make a CUDA compile take many hours.
RUNNERS = {"linux/amd64": "ubuntu-24.04", "linux/arm64": "ubuntu-24.04-arm"}


def _metadata_tags(tag_names: list[str]) -> str:
    """docker/metadata-action's `tags` input: one raw tag a line, so that it adds none of its own."""
    return "\n".join(f"type=raw,value={t}" for t in tag_names)


def matrix(catalog: Catalog, job: str, registry: str | None = None, release: str | None = None) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for target in catalog.targets.values():
        image = f"{registry_of(registry)}/{target.name}"
        for v in variants(target):
            common = {
                "target": target.name,
                "variant": v.name,
                "image": image,
                "description": target.description,
                "metadata_tags": _metadata_tags(tags(target, v.settings, release)),
            }
            if job == "merge":
                rows.append({**common, "platforms": ",".join(v.platforms), "artifact_pattern": f"digest-{target.name}-{v.name}-*"})
                continue
            for platform in v.platforms:
                arch = platform.split("/")[1]
                rows.append(
                    {
                        **common,
                        "platform": platform,
                        "arch": arch,
                        "runner": RUNNERS[platform],
                        "cache": f"{image}:buildcache-{v.name}-{arch}",
                        "artifact": f"digest-{target.name}-{v.name}-{arch}",
                    }
                )
    return rows
