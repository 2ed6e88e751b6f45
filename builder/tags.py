"""Image references: one scheme for `builder build`, the images workflow and the stacks.

<registry>/<target>:<tag>, where <tag> comes from the target's `tag` template in its image.yaml
(for example ghcr.io/r1kit/llamacpp-cuda:b10864-cu12-blis). $BUILDER_REGISTRY overrides the registry.
"""

from __future__ import annotations

import os
from typing import Mapping

from builder.catalog import Target
from builder.render import image_tag

DEFAULT_REGISTRY = "ghcr.io/r1kit"


def registry(override: str | None = None) -> str:
    return (override or os.environ.get("BUILDER_REGISTRY") or DEFAULT_REGISTRY).rstrip("/")


def image_refs(target: Target, settings: Mapping[str, str], registry_override: str | None = None) -> list[str]:
    return [f"{registry(registry_override)}/{target.name}:{image_tag(target, settings)}"]
