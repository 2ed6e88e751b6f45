"""The `builder` command: parse, call the domain modules, turn their errors into one line and exit status 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from builder import build as builds
from builder import catalog, ci, docker
from builder import tags as tagging
from builder.catalog import Target
from builder.errors import UserError
from builder.render import render as render_dockerfile


class Command(click.Group):
    """Turns a UserError anywhere below into `error: ...` on stderr and exit status 2."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except UserError as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(2)


def _settings(target: Target, variant: str | None, blas: str | None, sets: tuple[str, ...]) -> dict[str, str]:
    """A published variant's options (if named), overridden by --set and --blas."""
    out = dict(tagging.variant(target, variant).settings) if variant else {}
    for pair in sets:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--set {pair!r} is not KEY=VALUE")
        out[key] = value
    if blas is not None:
        out["blas"] = blas
    return out


def option_flags(f):
    f = click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Set a template option (see `builder list`).")(f)
    f = click.option("--variant", help="Start from a published variant's options, e.g. cu13-blis (see `builder list`).")(f)
    return click.option("--blas", help="BLAS library for CPU prompt processing (same as --set blas=...).")(f)


def release_flag(f):
    return click.option("--release", help="This project's release (v0.2.0) for the stable <version>-r1kit<release> tag.")(f)


@click.group(cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Build the images and run the stacks that self-host DeepSeek-R1."""


@main.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array (the images workflow's build matrix).")
def list_targets(as_json: bool) -> None:
    """Every target with its platforms and options."""
    targets = catalog.load().targets.values()
    rows = [
        {
            "name": t.name,
            "description": t.description,
            "platforms": list(t.platforms),
            "version": t.version,
            "folder": str(t.folder.relative_to(t.folder.parent.parent)),
            "options": {o.name: {"default": o.default, "choices": list(o.choices), "help": o.help} for o in t.options.values()},
            "variants": [
                {"name": v.name, "settings": dict(v.settings), "platforms": list(v.platforms), "tags": tagging.tags(t, v.settings)}
                for v in tagging.variants(t)
            ],
        }
        for t in targets
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        click.echo(f"{row['name']:<16} {','.join(row['platforms']):<26} {row['description']}")
        for name, opt in row["options"].items():
            values = "|".join(opt["choices"]) or opt["default"]
            click.echo(f"{'':<16}   --set {name}={values}  (default {opt['default']})")


@main.command()
@click.argument("target")
@option_flags
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), help="Write DIR/Dockerfile instead of printing it.")
def render(target: str, variant: str | None, blas: str | None, sets: tuple[str, ...], output: Path | None) -> None:
    """Print TARGET's Dockerfile, or write it under DIR."""
    t = catalog.load().get(target)
    text = render_dockerfile(t, _settings(t, variant, blas, sets))
    if output is None:
        click.echo(text, nl=False)
        return
    output.mkdir(parents=True, exist_ok=True)
    (output / "Dockerfile").write_text(text)
    click.echo(output / "Dockerfile", err=True)


@main.command()
@click.argument("target")
@option_flags
@click.option("--source", type=click.Path(path_type=Path), help="Stage this engine checkout or tarball as source/.")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False, path_type=Path), help="A new or empty folder.")
def stage(target: str, variant: str | None, blas: str | None, sets: tuple[str, ...], source: Path | None, output: Path) -> None:
    """Write TARGET's full build context (what `builder build` sends to BuildKit) into DIR."""
    t = catalog.load().get(target)
    plan = builds.plan(t, _settings(t, variant, blas, sets), source=source.resolve() if source else None)
    builds.stage(plan, output)
    click.echo(output, err=True)


@main.command()
@click.argument("target")
@option_flags
@click.option("--platform", "platforms", multiple=True, help="linux/amd64, linux/arm64 (repeat or comma-separate).")
@click.option("--tag", "tags", multiple=True, help="Image reference to tag (default: the project's scheme, see README).")
@click.option("--registry", help="Registry and owner for the default tags (default $BUILDER_REGISTRY or ghcr.io/r1kit).")
@release_flag
@click.option("--push", is_flag=True, help="Push the image (and build every --platform).")
@click.option("--build-arg", "build_args", multiple=True, metavar="KEY=VALUE", help="Pass a build arg to docker.")
@click.option("--source", type=click.Path(path_type=Path), help="Build the engine from this checkout or tarball.")
@click.option("--no-cache", is_flag=True, help="Rebuild every layer.")
@click.option("--dry-run", is_flag=True, help="Print the docker command and build nothing.")
def build(
    target: str,
    variant: str | None,
    blas: str | None,
    sets: tuple[str, ...],
    platforms: tuple[str, ...],
    tags: tuple[str, ...],
    registry: str | None,
    release: str | None,
    push: bool,
    build_args: tuple[str, ...],
    source: Path | None,
    no_cache: bool,
    dry_run: bool,
) -> None:
    """Build TARGET's image with BuildKit, then run its smoke test."""
    split = tuple(p.strip() for value in platforms for p in value.split(",") if p.strip())
    t = catalog.load().get(target)
    plan = builds.plan(
        t,
        _settings(t, variant, blas, sets),
        platforms=split,
        tags=tags,
        build_args=build_args,
        source=source.resolve() if source else None,
        push=push,
        no_cache=no_cache,
        registry=registry,
        release=release,
    )
    backend = docker.dry_run_backend() if dry_run else docker.find_backend()
    # Checked before a dry run too, so that it never prints a command that would build one platform of several.
    if len(split) > 1 and backend.kind != "buildx":
        raise UserError("building several platforms needs the docker buildx plugin")
    if dry_run:
        click.echo(f"# {builds.CONTEXT}: {plan.target.folder}, the rendered Dockerfile" + (f", and {plan.source} as source/" if plan.source else ""))
        click.echo(plan.shell_line(backend))
        return
    builds.run(plan, backend)
    output = builds.smoke_test(plan, backend)
    if output:
        click.echo(output.strip().splitlines()[-1], err=True)
    click.echo("\n".join(plan.tags))


@main.command()
@click.argument("target")
@option_flags
@click.option("--registry", help="Registry and owner (default $BUILDER_REGISTRY or ghcr.io/r1kit).")
@release_flag
def tags(target: str, variant: str | None, blas: str | None, sets: tuple[str, ...], registry: str | None, release: str | None) -> None:
    """Print the image references `builder build` and the images workflow tag TARGET with, one a line."""
    t = catalog.load().get(target)
    click.echo("\n".join(tagging.image_refs(t, _settings(t, variant, blas, sets), registry, release)))


@main.command()
@click.option("--job", type=click.Choice(["build", "merge"]), required=True, help="build: one entry per variant and platform; merge: per variant.")
@click.option("--registry", help="Registry and owner (default $BUILDER_REGISTRY or ghcr.io/r1kit).")
@release_flag
def matrix(job: str, registry: str | None, release: str | None) -> None:
    """Print the images workflow's matrix include list for JOB as one line of JSON."""
    click.echo(json.dumps(ci.matrix(catalog.load(), job, registry, release), separators=(",", ":")))


if __name__ == "__main__":
    sys.exit(main())
