"""The image commands: list, render, stage, build, tags, sync, pin, bump, and the images workflow's steps
(matrix, publish-gate, digests, check-index, stack-images, check-pulls). Each parses, calls its domain module and prints."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from builder.core.command import error_line
from builder.core.errors import UserError
from builder.core.paths import check_folder, repo_root
from builder.images import (
    build,
    bump,
    catalog,
    docker,
    listing,
    options,
    render,
    stack_images,
    sync,
    tags,
    workflow,
)

# The options a target declares in image.yaml are taken as flags too (`--blas blis`): click leaves them in ctx.args
# and options.settings checks each against the target.
TARGET_OPTIONS = {"ignore_unknown_options": True, "allow_extra_args": True}
SOURCE_HELP = "Build from this checkout or tarball (staged as source/); NAME=PATH for a named source (see image.yaml extra_sources)."
REGISTRY_HELP = "Registry and owner (default $BUILDER_REGISTRY or ghcr.io/r1kit)."


def option_flags(f):
    f = click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Set a target option (see `builder list`); or --KEY VALUE.")(f)
    return click.option("--variant", help="Start from a published variant's options, e.g. cu13-blis (see `builder list`).")(f)


def release_flag(f):
    return click.option("--release", help="This project's release (v0.2.0): only its immutable tag, <versioned tag>-r1kit<release>.")(f)


@click.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array (the images workflow's build matrix).")
def list_targets(as_json: bool) -> None:
    """Every target with its platforms and options."""
    rows = [listing.describe(t) for t in catalog.load().targets.values()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        click.echo("\n".join(listing.lines(row)))


@click.command("render", context_settings=TARGET_OPTIONS)
@click.argument("target")
@option_flags
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), help="Write DIR/Dockerfile instead of printing it.")
@click.pass_context
def render_command(ctx: click.Context, target: str, variant: str | None, sets: tuple[str, ...], output: Path | None) -> None:
    """Print TARGET's Dockerfile, or write it under DIR."""
    if output is not None:
        check_folder(output, "-o")
    t = catalog.load().get(target)
    text = render.render(t, options.settings(t, variant, sets, ctx.args))
    if output is None:
        click.echo(text, nl=False)
        return
    output.mkdir(parents=True, exist_ok=True)
    (output / "Dockerfile").write_text(text)
    click.echo(output / "Dockerfile", err=True)


@click.command("stage", context_settings=TARGET_OPTIONS)
@click.argument("target")
@option_flags
@click.option("--source", "sources", multiple=True, metavar="[NAME=]PATH", help=SOURCE_HELP)
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False, path_type=Path), help="A new or empty folder.")
@click.pass_context
def stage_command(ctx: click.Context, target: str, variant: str | None, sets: tuple[str, ...], sources: tuple[str, ...], output: Path) -> None:
    """Write TARGET's full build context (what `builder build` sends to BuildKit) into DIR."""
    check_folder(output, "-o")
    t = catalog.load().get(target)
    source, named = build.split_sources(t, sources)
    build.stage(build.plan(t, options.settings(t, variant, sets, ctx.args), source=source, extra_sources=named), output)
    click.echo(output, err=True)


@click.command("build", context_settings=TARGET_OPTIONS)
@click.argument("target")
@option_flags
@click.option("--platform", "platforms", multiple=True, help="linux/amd64, linux/arm64 (repeat or comma-separate).")
@click.option("--tag", "tags", multiple=True, help="Image reference to tag (default: the project's scheme, see docs/publishing.md).")
@click.option("--registry", help="Registry and owner for the default tags (default $BUILDER_REGISTRY or ghcr.io/r1kit).")
@release_flag
@click.option("--push", is_flag=True, help="Push the image (and build every --platform).")
@click.option("--build-arg", "build_args", multiple=True, metavar="KEY=VALUE", help="Pass a build arg to docker.")
@click.option("--source", "sources", multiple=True, metavar="[NAME=]PATH", help=SOURCE_HELP)
@click.option("--no-cache", is_flag=True, help="Rebuild every layer.")
@click.option("--dry-run", is_flag=True, help="Print the docker command and build nothing.")
@click.pass_context
def build_command(ctx: click.Context, target: str, variant: str | None, sets: tuple[str, ...], platforms: tuple[str, ...], tags: tuple[str, ...],
          registry: str | None, release: str | None, push: bool, build_args: tuple[str, ...], sources: tuple[str, ...],
          no_cache: bool, dry_run: bool) -> None:
    """Build TARGET's image with BuildKit, then run its smoke test."""
    t = catalog.load().get(target)
    source, named = build.split_sources(t, sources)
    plan = build.plan(t, options.settings(t, variant, sets, ctx.args), platforms=options.platforms(platforms), tags=tags,
                       build_args=build_args, source=source, extra_sources=named, push=push, no_cache=no_cache,
                       registry=registry, release=release)
    backend = docker.dry_run_backend() if dry_run else docker.find_backend()
    build.check_backend(plan, backend)
    if dry_run:
        click.echo("\n".join(build.dry_run(plan, backend)))
        return
    build.run(plan, backend)
    output = build.smoke_test(plan, backend)
    if output:
        click.echo(output.strip().splitlines()[-1], err=True)
    click.echo("\n".join(plan.tags))


@click.command("tags", context_settings=TARGET_OPTIONS)
@click.argument("target")
@option_flags
@click.option("--registry", help=REGISTRY_HELP)
@release_flag
@click.option("--sha", help="The commit of a push to main: adds its sha-<commit> tag.")
@click.pass_context
def tags_command(ctx: click.Context, target: str, variant: str | None, sets: tuple[str, ...], registry: str | None, release: str | None, sha: str | None) -> None:
    """Print the image references `builder build` and the images workflow tag TARGET with, one a line."""
    t = catalog.load().get(target)
    click.echo("\n".join(tags.image_refs(t, options.settings(t, variant, sets, ctx.args), registry, release, sha)))


@click.command("sync")
@click.option("--check", is_flag=True, help="Write nothing; exit 1 naming every file that is out of date.")
def sync_command(check: bool) -> None:
    """Regenerate what derives from images/*/image.yaml: the committed renders, the stacks' default image tags,
    the docs' tag table (docs/publishing.md) and image references."""
    root = repo_root()
    cat = catalog.load()
    if check:
        stale = sync.stale(root, cat)
        if stale:
            error_line(f"out of date: {', '.join(str(p.relative_to(root)) for p in stale)}; run `builder sync`")
            sys.exit(1)
        return
    for path in sync.write(root, cat):
        click.echo(path.relative_to(root), err=True)


@click.command("pin")
@click.argument("engine")
@click.argument("version")
@click.option("--sha256", help="The sha256 of the folder's source archive (image.yaml source.url) at VERSION, computed from its bytes.")
@click.option("--url", help="A new source archive URL ({version} stands for VERSION), e.g. a GitHub tarball.")
@click.option("--tree", help="The source tree's path inside the new archive.")
def pin_command(engine: str, version: str, sha256: str | None, url: str | None, tree: str | None) -> None:
    """Pin ENGINE (a folder under images/) to VERSION by hand, then sync. `builder bump` does it from upstream."""
    root = repo_root()
    for path in sync.pin_engine(root, engine, version, sha256, url, tree):
        click.echo(path.relative_to(root), err=True)


@click.command("bump")
@click.option("--index", envvar="BUILDER_PYPI_URL", default=bump.DEFAULT_INDEX, show_default=True,
              help="The Python package index to ask (its JSON API; $BUILDER_PYPI_URL).")
def bump_command(index: str) -> None:
    """Pin every engine with an `upstream:` to its newest release, hashed from the bytes fetched, then sync.
    Prints one line per engine bumped (the bump workflow's pull request says them); nothing when all are current."""
    for b in bump.bump(repo_root(), index):
        click.echo(b.summary())


@click.command()
@click.option("--job", type=click.Choice(["build", "merge"]), required=True, help="build: one entry per variant and platform; merge: per variant.")
@click.option("--registry", help=REGISTRY_HELP)
@release_flag
@click.option("--sha", help="The commit a push to main builds: adds its immutable sha-<commit> tags.")
@click.option("--source", default="", help="The repository's URL, for the index's org.opencontainers.image.source annotation.")
def matrix(job: str, registry: str | None, release: str | None, sha: str | None, source: str) -> None:
    """Print the images workflow's matrix include list for JOB as one line of JSON."""
    click.echo(json.dumps(workflow.matrix(catalog.load(), job, registry, release, sha, source), separators=(",", ":")))


@click.command("publish-gate")
@click.option("--event", required=True, help="github.event_name")
@click.option("--ref", required=True, help="github.ref (refs/heads/main, refs/tags/v0.2.0, ...)")
@click.option("--sha", default="", help="github.sha")
@click.option("--main-head", default="", help="main's head commit now: a run of an older main commit publishes nothing.")
def publish_gate(event: str, ref: str, sha: str, main_head: str) -> None:
    """Print publish=, release=, sha=, reason= lines (for $GITHUB_OUTPUT): only main and release tags publish."""
    click.echo("\n".join(workflow.publish_gate(event, ref, sha, main_head).lines()))


@click.command()
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--image", required=True, help="The image the digests belong to (registry/owner/target).")
@click.option("--platforms", required=True, help="The variant's platforms, comma-separated (the merge matrix's `platforms`).")
def digests(folder: Path, image: str, platforms: str) -> None:
    """Print IMAGE@sha256:... for each digest file in FOLDER: exactly one per platform, or fail."""
    click.echo("\n".join(workflow.digest_refs(folder, image, options.platforms(platforms))))


@click.command("check-index")
@click.argument("index", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--platforms", required=True, help="The platforms the index must hold, comma-separated.")
@click.option("--digest", "digest_refs", multiple=True, help="IMAGE@sha256:... the builds pushed (each must be in the index).")
@click.option("--annotation", "annotations", multiple=True, help="index:KEY=VALUE the index must carry.")
def check_index(index: Path, platforms: str, digest_refs: tuple[str, ...], annotations: tuple[str, ...]) -> None:
    """Check a pushed index (`docker buildx imagetools inspect --raw`) against the variant's platforms and digests."""
    problems = workflow.check_index(workflow.load_index(index), options.platforms(platforms),
                                    tuple(d.split("@", 1)[-1] for d in digest_refs), annotations)
    if problems:
        raise UserError(f"{index}: " + "; ".join(problems))
    click.echo(f"{index}: {platforms}", err=True)



@click.command("stack-images")
@click.option("--registry", help="The registry the stacks pull from, as R1KIT_REGISTRY says (default $BUILDER_REGISTRY or ghcr.io/r1kit).")
@click.option("--files", "with_files", is_flag=True, help="Add the stack files that name each image, after a tab.")
def stack_images_command(registry: str | None, with_files: bool) -> None:
    """Print every image of ours that a stack pulls by default (stacks/, stacks/shared/, stacks/.env.example), one a line."""
    for image in stack_images.stack_images(repo_root(), registry):
        click.echo(f"{image.ref}\t{','.join(image.files)}" if with_files else image.ref)


@click.command("check-pulls")
@click.argument("answers", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--registry", help="The registry the answers are from (default $BUILDER_REGISTRY or ghcr.io/r1kit).")
@click.option("--owner-type", type=click.Choice(["User", "Organization"]), default="User", show_default=True,
              help="The registry owner's GitHub account type: where its package settings are.")
def check_pulls(answers: Path, registry: str | None, owner_type: str) -> None:
    """Check the registry's answers to anonymous pulls of every stack default (ANSWERS: REF<TAB>STATUS<TAB>OUTPUT
    lines): one error line per image a user cannot pull, and exit 1."""
    images = stack_images.stack_images(repo_root(), registry)
    found = stack_images.problems(images, stack_images.read_answers(answers), owner_type)
    for problem in found:
        error_line(problem)
    if found:
        sys.exit(1)
    click.echo(f"all {len(images)} stack default images pull anonymously", err=True)


COMMANDS = (list_targets, render_command, stage_command, build_command, tags_command, sync_command, pin_command, bump_command, matrix, publish_gate, digests, check_index, stack_images_command, check_pulls)
