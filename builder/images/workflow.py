"""The images workflow's logic, as commands that run (and are tested) offline.

- `builder publish-gate`: from the event and ref, whether this run publishes, and what (main: the moving tags and
  the commit's own; a release tag vX.Y.Z: the release's immutable tags; anything else: build only).
- `builder matrix --job build|merge`: one build per (target, published variant, platform), each on a native runner;
  one merge per (target, variant), which joins the per-platform digests into one multi-arch index. Every name the
  jobs pass between them (artifacts, their download patterns) and every tag is decided here and in tags.py.
- `builder digests`: the merge's digest files, checked against the variant's platforms, as image references.
- `builder check-index`: the pushed index (`imagetools inspect --raw`) holds exactly the variant's platforms.
- `builder stack-images`, `builder check-pulls` (stack_images.py): after main publishes, every image a stack names by
  default can be pulled without a login.
The workflow only passes these values on.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.core.errors import UserError, shown
from builder.images.catalog import ImageCatalog
from builder.images.tags import commit, resolve_registry, tags, variants

# Native runners: no QEMU emulation, which would make a CUDA compile take many hours.
RUNNERS = {"linux/amd64": "ubuntu-24.04", "linux/arm64": "ubuntu-24.04-arm"}
# Parallel compile jobs per runner (the JOBS build arg of images/llamacpp/build.sh): GitHub's standard Linux runners
# have 4 cores and 16 GB; nvcc compiling six architectures takes 2 to 3 GB a job, so 4 jobs fit with room for the
# linker. A larger (paid) runner would take its own row here.
JOBS = {"ubuntu-24.04": 4, "ubuntu-24.04-arm": 4}
DEFAULT_BRANCH = "refs/heads/main"
# The events that may publish from main; pull requests and anything from another branch only build.
MAIN_EVENTS = ("push", "schedule", "workflow_dispatch")
RELEASE_EVENTS = ("push", "workflow_dispatch")
# docs/publishing.md's `cosign verify --certificate-identity-regexp` must accept exactly the refs that publish.
RELEASE_REF = re.compile(r"^refs/tags/(v\d+\.\d+\.\d+(?:-[0-9A-Za-z.]+)?)$")
DIGEST_NAME = re.compile(r"^[0-9a-f]{64}$")
# OCI annotations on every index (GHCR shows the description of a multi-arch image from the index, not its labels).
LICENSES = "MIT"


@dataclass(frozen=True)
class Gate:
    """What one run of the images workflow publishes."""

    publish: bool
    release: str = ""  # vX.Y.Z on a release tag
    sha: str = ""  # the commit, on a push to main: its immutable sha-<commit> tags
    reason: str = ""

    def lines(self) -> list[str]:
        return [f"publish={str(self.publish).lower()}", f"release={self.release}", f"sha={self.sha}", f"reason={self.reason}"]


def publish_gate(event: str, ref: str, sha: str = "", main_head: str = "") -> Gate:
    """Publish only from main (push, the weekly schedule, a manual run) and from release tags (vX.Y.Z).

    Only a push to main writes the commit's own tag: a scheduled or manual rebuild of the same commit would
    otherwise overwrite it. A release run writes only the release's tags (tags.py), never `latest`. Given main's
    head as it is now (`main_head`), a main run of an older commit (a re-run) publishes nothing: its moving tags
    would go backwards."""
    if event in ("pull_request", "pull_request_target", "merge_group"):
        return Gate(False, reason=f"{event}: build only")
    if ref == DEFAULT_BRANCH:
        if event not in MAIN_EVENTS:
            return Gate(False, reason=f"{event} on main: build only")
        if main_head and commit(main_head) != commit(sha):
            return Gate(False, reason=f"main is at {main_head[:12]} now, past this run's {sha[:12]}: its moving tags would go backwards")
        return Gate(True, sha=(commit(sha) or "") if event == "push" else "", reason=f"{event} on main")
    match = RELEASE_REF.match(ref)
    if match and event in RELEASE_EVENTS:
        return Gate(True, release=match.group(1), reason=f"release {match.group(1)}")
    return Gate(False, reason=f"{event} on {ref}: only main and release tags (vX.Y.Z) publish")


def artifact(target: str, variant: str, arch: str) -> str:
    return f"digest-{target}-{variant}-{arch}"


def artifact_pattern(target: str, variant: str, platforms: tuple[str, ...]) -> str:
    """download-artifact's `pattern` (minimatch) for exactly this variant's artifacts: their names, no wildcard, so
    that no other variant's can match (`cu12-*` matched `cu12-blis-amd64`). minimatch expands {a,b}; a brace
    with one element is literal, so one platform is its plain name."""
    archs = [p.split("/")[1] for p in platforms]
    if len(archs) == 1:
        return artifact(target, variant, archs[0])
    return artifact(target, variant, "{" + ",".join(archs) + "}")


def index_annotations(description: str, source: str) -> str:
    """`imagetools create --annotation` values, one a line, on the index itself."""
    pairs = (("description", description), ("source", source), ("licenses", LICENSES))
    return "\n".join(f"index:org.opencontainers.image.{k}={v}" for k, v in pairs if v)


def _metadata_tags(tag_names: list[str]) -> str:
    """docker/metadata-action's `tags` input: one raw tag a line, so that it adds none of its own."""
    return "\n".join(f"type=raw,value={t}" for t in tag_names)


def matrix(
    catalog: ImageCatalog, job: str, registry: str | None = None, release: str | None = None, sha: str | None = None, source: str = ""
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    names: set[str] = set()
    for target in catalog.targets.values():
        image = f"{resolve_registry(registry)}/{target.name}"
        for v in variants(target):
            tag_names = tags(target, v.settings, release, sha)
            common = {
                "target": target.name,
                "variant": v.name,
                "image": image,
                "description": target.description,
                "metadata_tags": _metadata_tags(tag_names),
                "tags": "\n".join(f"{image}:{t}" for t in tag_names),
                # `docker run --entrypoint <first> IMAGE <rest>`, as `builder build` runs it (build.smoke_test).
                "smoke_entrypoint": target.smoke_test[0] if target.smoke_test else "",
                "smoke_args": " ".join(target.smoke_test[1:]),
            }
            if job == "merge":
                rows.append(
                    {
                        **common,
                        "platforms": ",".join(v.platforms),
                        "artifact_pattern": artifact_pattern(target.name, v.name, v.platforms),
                        "index_artifact": f"index-{target.name}-{v.name}",
                        "annotations": index_annotations(target.description, source),
                        # Written once: the merge refuses to overwrite one that exists (a re-run of a release).
                        "immutable_tags": "\n".join(
                            f"{image}:{t}" for t in tag_names if release or t.startswith("sha-")
                        ),
                    }
                )
                continue
            for platform in v.platforms:
                arch = platform.split("/")[1]
                name = artifact(target.name, v.name, arch)
                if name in names:
                    raise UserError(f"two builds would upload the artifact {name}: target and variant names must tell them apart")
                names.add(name)
                rows.append(
                    {
                        **common,
                        "platform": platform,
                        "arch": arch,
                        "runner": RUNNERS[platform],
                        "jobs": JOBS[RUNNERS[platform]],
                        "cache": f"{image}:buildcache-{v.name}-{arch}",
                        "artifact": name,
                        "index_artifact": f"index-{target.name}-{v.name}",
                    }
                )
    return rows


def digest_refs(folder: Path, image: str, platforms: tuple[str, ...]) -> list[str]:
    """The merge's downloaded digest files (each named by its digest, holding its platform) as IMAGE@sha256:...,
    in the order of `platforms`. Exactly one per platform, or an error naming what differs."""
    found: dict[str, str] = {}
    files = sorted(p for p in folder.iterdir()) if folder.is_dir() else []
    for path in files:
        if not DIGEST_NAME.match(path.name):
            raise UserError(f"{shown(path.name)} in {folder} is not a digest file (64 hex digits)")
        platform = path.read_text().strip()
        if platform in found:
            raise UserError(f"two digests for {platform} ({found[platform][:12]}, {path.name[:12]}): an artifact of another build crossed in")
        found[platform] = path.name
    if len(files) != len(platforms) or set(found) != set(platforms):
        raise UserError(
            f"{image}: {len(files)} digests for {len(platforms)} platforms: expected {', '.join(platforms)}, "
            f"got {', '.join(sorted(found)) or 'none'} (a build failed, or an artifact of another variant crossed in)"
        )
    return [f"{image}@sha256:{found[p]}" for p in platforms]


def check_index(index: dict[str, Any], platforms: tuple[str, ...], digests: tuple[str, ...] = (), annotations: tuple[str, ...] = ()) -> list[str]:
    """Problems with a pushed index (`docker buildx imagetools inspect --raw`): one image manifest per platform
    (attestation manifests, platform unknown/unknown, aside), the expected digests, the index annotations."""
    problems = []
    images = [
        m for m in index.get("manifests", [])
        if m.get("platform", {}).get("os") != "unknown" and m.get("annotations", {}).get("vnd.docker.reference.type") != "attestation-manifest"
    ]
    seen = [f"{m['platform']['os']}/{m['platform']['architecture']}" for m in images if "platform" in m]
    if sorted(seen) != sorted(platforms):
        problems.append(f"platforms {', '.join(seen) or 'none'}, expected {', '.join(platforms)}")
    if digests and sorted(m["digest"] for m in images) != sorted(digests):
        problems.append("its image manifests are not the digests the builds pushed")
    have = index.get("annotations", {})
    for pair in annotations:
        key, _, value = pair.removeprefix("index:").partition("=")
        if have.get(key) != value:
            problems.append(f"annotation {key} is {have.get(key)!r}, expected {value!r}")
    return problems


def load_index(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not an image index ({e})") from None
