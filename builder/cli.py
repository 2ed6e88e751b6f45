"""The `builder` command: parse, call the domain modules, turn their errors into one line and exit status 2."""

from __future__ import annotations

import dataclasses
import json
import signal
import sys
from pathlib import Path
from typing import Any

import click

from builder.bench.measure import bench_command
from builder.cluster import slurm
from builder.core.errors import Stopped, UserError, own_signals, shown
from builder.core.paths import check_folder, find_repo_root, repo_root
from builder.images import build as builds
from builder.images import catalog, docker, sync
from builder.images import workflow as ci
from builder.images import tags as tagging
from builder.images.catalog import Target
from builder.images.render import render as render_dockerfile
from builder.models import catalog as models
from builder.models import download as downloads
from builder.models import shapes
from builder.models import steps as download_steps
from builder.plan import envfile, hardware
from builder.plan import planner as planning

ERROR_MAX = 2000  # characters of an error line: a backstop; messages cut the user's values shorter themselves
USAGE_MAX = 300  # click's usage messages: short but for the value they repeat
NUM_CTX_MAX = 1024 * 1024  # tokens: beyond any model's context
LAYERS_MAX = 1024


def _error(message: str, limit: int = ERROR_MAX) -> None:
    """One line on stderr: newlines in a message (or in a value it repeats) would split it."""
    line = " ".join(message.split())
    click.echo(f"error: {line if len(line) <= limit else line[:limit] + '...'}", err=True)


class Command(click.Group):
    """Every failure is one line on stderr and an exit status: a UserError or a usage error 2, a signal 128 + its
    number (Ctrl-C 130, SIGTERM 143), as shells report a process that signal killed."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:  # type: ignore[override]
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        own_signals()
        try:
            status = super().main(*args, standalone_mode=False, **kwargs)
        except click.UsageError as e:  # click's own three lines (usage, hint, error) as one
            where = e.ctx.command_path if e.ctx else "builder"
            _error(f"{e.format_message()} (see '{where} --help')", USAGE_MAX)
            sys.exit(e.exit_code)
        except click.ClickException as e:
            _error(e.format_message(), USAGE_MAX)
            sys.exit(e.exit_code)
        except click.Abort:  # Ctrl-C outside a command (click turns KeyboardInterrupt into Abort there)
            _error("interrupted")
            sys.exit(128 + signal.SIGINT)
        sys.exit(status if isinstance(status, int) else 0)

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except UserError as e:
            _error(str(e))
            ctx.exit(2)
        except KeyboardInterrupt:
            _error("interrupted (SIGINT)")
            ctx.exit(128 + signal.SIGINT)
        except Stopped as e:
            _error(f"stopped by {e}" + (f"; {e.hint}" if e.hint else ""))
            ctx.exit(e.exit_status)


class Size(click.ParamType):
    """A size such as 500M or 2G (downloads.parse_size)."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return downloads.parse_size(str(value))
        except UserError as e:
            self.fail(str(e), param, ctx)


class Layers(click.ParamType):
    """--num-gpu: a number of layers, or `auto`."""

    name = "layers"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int | str:
        text = str(value)
        if text == "auto" or isinstance(value, int):
            return value
        if not text.isdigit() or len(text) > 4 or int(text) > LAYERS_MAX:
            self.fail(f"{shown(text)} is not a number of layers (0 to {LAYERS_MAX}) or auto", param, ctx)
        return int(text)


def _settings(target: Target, variant: str | None, sets: tuple[str, ...], extra: list[str]) -> dict[str, str]:
    """A published variant's options (if named), overridden by --set KEY=VALUE and by the target's own options
    given as flags (`--blas blis` for a target that declares `blas`; any other target refuses it by name)."""
    out = dict(tagging.variant(target, variant).settings) if variant else {}
    for pair in sets:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--set {shown(pair)} is not KEY=VALUE")
        out[key] = value
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


# The options a target declares in image.yaml are taken as flags too (`--blas blis`): click leaves them in ctx.args
# and _settings checks each against the target.
TARGET_OPTIONS = {"ignore_unknown_options": True, "allow_extra_args": True}


def option_flags(f):
    f = click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Set a target option (see `builder list`); or --KEY VALUE.")(f)
    return click.option("--variant", help="Start from a published variant's options, e.g. cu13-blis (see `builder list`).")(f)


def release_flag(f):
    return click.option("--release", help="This project's release (v0.2.0): only its immutable tags (<version>-r1kit<release>; model-init: the release).")(f)


@click.group(cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Build the images and run the stacks that self-host DeepSeek-R1."""


main.add_command(bench_command)  # builder/bench/measure.py: its options live there


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
            "engine": t.engine,
            "source": {"url": t.pin.source_url, "sha256": t.pin.sha256} if t.pin.url else None,
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


@main.command(context_settings=TARGET_OPTIONS)
@click.argument("target")
@option_flags
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), help="Write DIR/Dockerfile instead of printing it.")
@click.pass_context
def render(ctx: click.Context, target: str, variant: str | None, sets: tuple[str, ...], output: Path | None) -> None:
    """Print TARGET's Dockerfile, or write it under DIR."""
    if output is not None:
        check_folder(output, "-o")
    t = catalog.load().get(target)
    text = render_dockerfile(t, _settings(t, variant, sets, ctx.args))
    if output is None:
        click.echo(text, nl=False)
        return
    output.mkdir(parents=True, exist_ok=True)
    (output / "Dockerfile").write_text(text)
    click.echo(output / "Dockerfile", err=True)


SOURCE_HELP = "Build from this checkout or tarball (staged as source/); NAME=PATH for a named source (see image.yaml extra_sources)."


@main.command(context_settings=TARGET_OPTIONS)
@click.argument("target")
@option_flags
@click.option("--source", "sources", multiple=True, metavar="[NAME=]PATH", help=SOURCE_HELP)
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False, path_type=Path), help="A new or empty folder.")
@click.pass_context
def stage(ctx: click.Context, target: str, variant: str | None, sets: tuple[str, ...], sources: tuple[str, ...], output: Path) -> None:
    """Write TARGET's full build context (what `builder build` sends to BuildKit) into DIR."""
    check_folder(output, "-o")
    t = catalog.load().get(target)
    source, named = builds.split_sources(t, sources)
    plan = builds.plan(t, _settings(t, variant, sets, ctx.args), source=source, extra_sources=named)
    builds.stage(plan, output)
    click.echo(output, err=True)


@main.command(context_settings=TARGET_OPTIONS)
@click.argument("target")
@option_flags
@click.option("--platform", "platforms", multiple=True, help="linux/amd64, linux/arm64 (repeat or comma-separate).")
@click.option("--tag", "tags", multiple=True, help="Image reference to tag (default: the project's scheme, see README).")
@click.option("--registry", help="Registry and owner for the default tags (default $BUILDER_REGISTRY or ghcr.io/r1kit).")
@release_flag
@click.option("--push", is_flag=True, help="Push the image (and build every --platform).")
@click.option("--build-arg", "build_args", multiple=True, metavar="KEY=VALUE", help="Pass a build arg to docker.")
@click.option("--source", "sources", multiple=True, metavar="[NAME=]PATH", help=SOURCE_HELP)
@click.option("--no-cache", is_flag=True, help="Rebuild every layer.")
@click.option("--dry-run", is_flag=True, help="Print the docker command and build nothing.")
@click.pass_context
def build(
    ctx: click.Context,
    target: str,
    variant: str | None,
    sets: tuple[str, ...],
    platforms: tuple[str, ...],
    tags: tuple[str, ...],
    registry: str | None,
    release: str | None,
    push: bool,
    build_args: tuple[str, ...],
    sources: tuple[str, ...],
    no_cache: bool,
    dry_run: bool,
) -> None:
    """Build TARGET's image with BuildKit, then run its smoke test."""
    split = tuple(p.strip() for value in platforms for p in value.split(",") if p.strip())
    t = catalog.load().get(target)
    source, named = builds.split_sources(t, sources)
    plan = builds.plan(
        t,
        _settings(t, variant, sets, ctx.args),
        platforms=split,
        tags=tags,
        build_args=build_args,
        source=source,
        extra_sources=named,
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
        staged = ([f"{plan.source} as source/"] if plan.source else []) + [f"{p} as source-{n}/" for n, p in plan.extra_sources.items()]
        click.echo(f"# {builds.CONTEXT}: {plan.target.folder}, the rendered Dockerfile" + "".join(f", and {s}" for s in staged))
        click.echo(plan.shell_line(backend))
        return
    builds.run(plan, backend)
    output = builds.smoke_test(plan, backend)
    if output:
        click.echo(output.strip().splitlines()[-1], err=True)
    click.echo("\n".join(plan.tags))


@main.command(context_settings=TARGET_OPTIONS)
@click.argument("target")
@option_flags
@click.option("--registry", help="Registry and owner (default $BUILDER_REGISTRY or ghcr.io/r1kit).")
@release_flag
@click.option("--sha", help="The commit of a push to main: adds its sha-<commit> tag.")
@click.pass_context
def tags(ctx: click.Context, target: str, variant: str | None, sets: tuple[str, ...], registry: str | None, release: str | None, sha: str | None) -> None:
    """Print the image references `builder build` and the images workflow tag TARGET with, one a line."""
    t = catalog.load().get(target)
    click.echo("\n".join(tagging.image_refs(t, _settings(t, variant, sets, ctx.args), registry, release, sha)))


@main.command("sync")
@click.option("--check", is_flag=True, help="Write nothing; exit 1 naming every file that is out of date.")
def sync_command(check: bool) -> None:
    """Regenerate what derives from images/*/image.yaml: the committed renders, the stacks' default image tags,
    the README's tag table."""
    root = repo_root()
    cat = catalog.load()
    if check:
        stale = sync.stale(root, cat)
        if stale:
            _error(f"out of date: {', '.join(str(p.relative_to(root)) for p in stale)}; run `builder sync`")
            sys.exit(1)
        return
    for path in sync.write(root, cat):
        click.echo(path.relative_to(root), err=True)


@main.command()
@click.argument("engine")
@click.argument("version")
@click.option("--sha256", help="The sha256 of the release tarball (image.yaml source.url) at VERSION.")
def pin(engine: str, version: str, sha256: str | None) -> None:
    """Pin ENGINE (a folder under images/) to VERSION, then sync: what the bump workflow runs."""
    root = repo_root()
    folder = root / "images" / engine
    before = catalog.load()
    if engine not in before.pins:
        raise UserError(f"no image folder {shown(engine)}: choose one of {', '.join(sorted(before.pins))}")
    if before.pins[engine].url and sha256 is None:
        raise UserError(f"{engine} builds from {before.pins[engine].url}: give that tarball's --sha256 at {version}")
    sync.pin(folder, version, sha256)
    for path in sync.write(root, catalog.load()):
        click.echo(path.relative_to(root), err=True)


@main.command()
def upstreams() -> None:
    """One line per engine that the bump workflow follows: FOLDER REPO TAG_PATTERN VERSION SHA256 URL_TEMPLATE
    (SHA256 is `-` until computed)."""
    for p in catalog.load().pins.values():
        if p.upstream_repo:
            click.echo(" ".join([p.folder, p.upstream_repo, p.tag_pattern or ".", p.version, p.sha256 or "-", p.url or "-"]))


@main.command()
@click.option("--job", type=click.Choice(["build", "merge"]), required=True, help="build: one entry per variant and platform; merge: per variant.")
@click.option("--registry", help="Registry and owner (default $BUILDER_REGISTRY or ghcr.io/r1kit).")
@release_flag
@click.option("--sha", help="The commit a push to main builds: adds its immutable sha-<commit> tags.")
@click.option("--source", default="", help="The repository's URL, for the index's org.opencontainers.image.source annotation.")
def matrix(job: str, registry: str | None, release: str | None, sha: str | None, source: str) -> None:
    """Print the images workflow's matrix include list for JOB as one line of JSON."""
    click.echo(json.dumps(ci.matrix(catalog.load(), job, registry, release, sha, source), separators=(",", ":")))


@main.command("publish-gate")
@click.option("--event", required=True, help="github.event_name")
@click.option("--ref", required=True, help="github.ref (refs/heads/main, refs/tags/v0.2.0, ...)")
@click.option("--sha", default="", help="github.sha")
@click.option("--main-head", default="", help="main's head commit now: a run of an older main commit publishes nothing.")
def publish_gate(event: str, ref: str, sha: str, main_head: str) -> None:
    """Print publish=, release=, sha=, reason= lines (for $GITHUB_OUTPUT): only main and release tags publish."""
    click.echo("\n".join(ci.publish_gate(event, ref, sha, main_head).lines()))


def _platforms(value: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in value.split(",") if p.strip())


@main.command()
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--image", required=True, help="The image the digests belong to (registry/owner/target).")
@click.option("--platforms", required=True, help="The variant's platforms, comma-separated (the merge matrix's `platforms`).")
def digests(folder: Path, image: str, platforms: str) -> None:
    """Print IMAGE@sha256:... for each digest file in FOLDER: exactly one per platform, or fail."""
    click.echo("\n".join(ci.digest_refs(folder, image, _platforms(platforms))))


@main.command("check-index")
@click.argument("index", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--platforms", required=True, help="The platforms the index must hold, comma-separated.")
@click.option("--digest", "digest_refs", multiple=True, help="IMAGE@sha256:... the builds pushed (each must be in the index).")
@click.option("--annotation", "annotations", multiple=True, help="index:KEY=VALUE the index must carry.")
def check_index(index: Path, platforms: str, digest_refs: tuple[str, ...], annotations: tuple[str, ...]) -> None:
    """Check a pushed index (`docker buildx imagetools inspect --raw`) against the variant's platforms and digests."""
    problems = ci.check_index(ci.load_index(index), _platforms(platforms), tuple(d.split("@", 1)[-1] for d in digest_refs), annotations)
    if problems:
        raise UserError(f"{index}: " + "; ".join(problems))
    click.echo(f"{index}: {platforms}", err=True)


@main.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print the catalog as a JSON array.")
def list_models(as_json: bool) -> None:
    """The model catalog: what `builder download NAME` fetches."""
    cat = models.load()
    root = find_repo_root()
    if root is not None:  # the model-init image carries no images/ folder to check the engines against
        models.check_engines(cat, catalog.load(root / "images").engines(root / "stacks"))
    rows = [{**dataclasses.asdict(m), "default": m.name == cat.default} for m in cat.models.values()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for m in cat.models.values():
        size = f"~{m.approx_size_gb:g} GB" if m.approx_size_gb else "?"
        shards = f"{m.shards} files" if m.shards else "1 file"
        mark = " (default)" if m.name == cat.default else ""
        click.echo(f"{m.name:<22} {size:>10} {shards:>9}  {m.format:<11} {','.join(m.engines):<30} {m.description}{mark}")


@main.command()
@click.argument("model", required=False)
@click.option("--dest", type=click.Path(file_okay=False, path_type=Path), default="models", show_default=True, envvar="BUILDER_MODELS_DIR",
              help="Folder the files land in, as DEST/<path in the repo> ($BUILDER_MODELS_DIR).")
@click.option("--include", "include", multiple=True, metavar="GLOB", help="Files of the repo to fetch (repeat); replaces a catalog entry's patterns.")
@click.option("--revision", help="Branch, tag or commit of the repo (default: the catalog's, or main).")
@click.option("--dry-run", is_flag=True, help="Print the plan (files, sizes, destination, free space) and fetch nothing.")
@click.option("--verify", is_flag=True, help="Hash every file again, even those a previous run verified.")
@click.option("--merge", type=click.Path(dir_okay=False, path_type=Path), metavar="OUT.gguf",
              help="Also join the shards into one file (llama-gguf-split; a single file is hard-linked).")
@click.option("--force", is_flag=True, help="Let --merge overwrite an existing OUT.gguf that builder did not write.")
@click.option("--modelfile", type=click.Path(dir_okay=False, path_type=Path), metavar="PATH", help="Also write an Ollama Modelfile.")
@click.option("--num-ctx", type=click.IntRange(512, NUM_CTX_MAX), default=8192, show_default=True, help="The Modelfile's context length.")
@click.option("--num-gpu", type=Layers(), help="The Modelfile's layers on the GPU: a number, or auto to let ollama decide (default: every layer where the catalog knows the count).")
@click.option("--path-file", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE", help="Also write the engine's model path to FILE.")
@click.option("--min-free", type=Size(), metavar="SIZE",
              help="Space to leave free after the download, e.g. 500M or 2G (default: 3% of what is written, at least 16 MiB).")
@click.option("--connections", type=click.IntRange(1, downloads.CONNECTIONS_MAX), default=downloads.CONNECTIONS, show_default=True,
              help="Ranged requests at once, across files and parts of a file (1 for a slow or shared link).")
@click.option("--part-size", type=Size(), default=downloads.PART_SIZE, metavar="SIZE", show_default="64M",
              help="Large files are fetched in parts of this size, each resumable on its own.")
def download(**options: Any) -> None:
    """Fetch MODEL (a catalog name, OWNER/REPO:QUANT, or OWNER/REPO --include GLOB; default: the catalog's default)
    into DEST, resumably and verified; print the path the engine loads."""
    with downloads.stop_on_signals():
        try:
            click.echo("\n".join(download_steps.run(download_steps.Request(**options)).lines))
        except Stopped as e:
            raise Stopped(e.signum, "what was fetched is kept: run the same command again to resume") from None


@main.command("plan")
@click.argument("model", required=False)
@click.option("--engine", help="llamacpp, ollama or vllm (default: the best the model allows).")
@click.option("--ctx", "context", type=click.IntRange(256, NUM_CTX_MAX), help="Context length in tokens (default 8192).")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.option("--write", type=click.Path(dir_okay=False, path_type=Path), metavar="ENV_FILE", help="Set the plan's variables in a stack's .env file (e.g. stacks/.env), keeping its other lines.")
@click.option("--gpus", help="Describe the GPUs instead of detecting them: 4xRTX4090, 2x80 (GiB each), 24,24, or none.")
@click.option("--ram", "ram_gib", type=click.FloatRange(1, 1 << 20), help="RAM the engine may use, in GiB (default: this machine's available).")
@click.option("--cores", type=click.IntRange(1, 4096), help="Physical CPU cores (default: this machine's).")
@click.option("--numa", type=click.IntRange(1, 64), help="NUMA nodes (default: this machine's).")
@click.option("--cpu", help="The best of the CPU's vector extensions: amx, avx512, avx2 or baseline (default: this machine's).")
@click.option("--ram-bandwidth", type=click.FloatRange(1, 100000), help="Memory bandwidth in GB/s, for the speed estimate (default: a guess from the cores).")
@click.option("--nodes", type=click.IntRange(1, 1024), default=1, show_default=True, help="Identical machines (vLLM across nodes).")
@click.option("--dest", type=click.Path(file_okay=False, path_type=Path), default="models", show_default=True, envvar="BUILDER_MODELS_DIR", help="Where models go (its free space is checked).")
def plan_command(model: str | None, engine: str | None, context: int | None, as_json: bool, write: Path | None, dest: Path, **machine: Any) -> None:
    """The best model, engine and settings for this machine (or one the flags describe). MODEL is a catalog name
    or a downloaded .gguf (its header gives the exact sizes); without it, the best DeepSeek-R1 variant that fits."""
    box = hardware.describe(**machine, models_dir=dest)
    cat = models.load()
    passed: list[str] = []
    if model is None:
        chosen, passed = planning.recommend(cat, box, engine, context)
    elif model.endswith(".gguf") or "/" in model:
        # A file, not a catalog name: the stack's MODEL stays as it is.
        chosen = planning.plan_model(Path(model).name, shapes.from_gguf(Path(model)), box, engine or "llamacpp", context, catalog_name=False)
    else:
        entry = cat.get(model)
        engines = planning.engines_for(entry, engine)
        if not engines:
            raise UserError(f"{model}: the planner knows none of its engines ({', '.join(entry.engines) or 'none yet'})")
        chosen = planning.plan_model(model, planning.shape_for(entry, cat.architectures), box, engines[0], context)
    click.echo(json.dumps({**chosen.as_json(), "passed_over": passed}, indent=2) if as_json else planning.report(chosen, box, passed))
    if write is not None:
        changes = envfile.update(write, chosen.settings)
        for key, old, new in changes:
            click.echo(f"{write}: {key}={new}" + (f" (was {old!r})" if old is not None else " (added)"), err=True)
        if not changes:
            click.echo(f"{write}: already up to date", err=True)


@main.command("slurm")
@click.argument("preset", required=False)
@click.argument("vllm_args", nargs=-1, type=click.UNPROCESSED, metavar="[-- VLLM_SERVE_ARGS...]")
@click.option("--list", "list_presets", is_flag=True, help="Show the presets and exit.")
@click.option("--nodes", type=click.IntRange(1, 4096), help="Nodes in the job (the preset's by default).")
@click.option("--gpus-per-node", type=click.IntRange(1, 64), help="GPUs each node brings.")
@click.option("--tensor-parallel", type=click.IntRange(1, 4096), help="vLLM's tensor-parallel size (best: the GPUs of one node).")
@click.option("--pipeline-parallel", type=click.IntRange(1, 4096), help="vLLM's pipeline-parallel size (best: the nodes).")
@click.option("--arch", help="The nodes' CPU architecture: x86_64 (amd64) or aarch64 (arm64).")
@click.option("--launcher", type=click.Choice(slurm.LAUNCHERS), help="pyxis (srun --container-image, the default), apptainer, or bare (the image's layout installed on the nodes).")
@click.option("--image", help="The vLLM image (default: the project's published one); pyxis: a registry reference or .sqsh, apptainer: a .sif or docker:// URI.")
@click.option("--model-init-image", help="The model-init image for --download with a container launcher (default: the project's published one).")
@click.option("--model", help="A catalog model in safetensors (default r1-671b-fp8; see `builder models`).")
@click.option("--models-dir", help="Absolute folder holding MODEL's folder on every node: shared storage, or node-local with --download.")
@click.option("--download/--no-download", default=None, help="Fetch the model on every node first (builder download) into --models-dir.")
@click.option("--partition", help="#SBATCH --partition.")
@click.option("--account", help="#SBATCH --account.")
@click.option("--time", help="#SBATCH --time, e.g. 24:00:00 (default: the partition's limit).")
@click.option("--job-name", help="#SBATCH --job-name (default r1kit-vllm); the output is JOBNAME-JOBID.out.")
@click.option("--gpu-request", type=click.Choice(slurm.GPU_REQUESTS), help="How the job asks for GPUs: --gres=gpu:G (default), --gpus-per-node=G, or none.")
@click.option("--wait-timeout", type=click.IntRange(1, 86400), help=f"Seconds the head waits for every node to join Ray (default {slurm.WAIT_TIMEOUT}; the model load comes after).")
@click.option("--ray-port", type=click.IntRange(1, 65535), help="Ray's port on the head (default 6379).")
@click.option("--host", help="The address vLLM listens on (default 127.0.0.1; another needs --api-key-file).")
@click.option("--port", type=click.IntRange(1, 65535), help="vLLM's port (default 8000).")
@click.option("--served-model-name", help="The model's name in the API (default: the catalog name).")
@click.option("--max-model-len", type=click.IntRange(1, NUM_CTX_MAX), help="vLLM's --max-model-len (the preset's by default).")
@click.option("--gpu-memory-utilization", type=click.FloatRange(0, 1, min_open=True), help="vLLM's --gpu-memory-utilization (the preset's by default).")
@click.option("--api-key-file", help="A file on the head node holding the API key (VLLM_API_KEY_FILE); without it the endpoint has no key.")
@click.option("--ifname", help="The network interface NCCL and Gloo use (NCCL_SOCKET_IFNAME, GLOO_SOCKET_IFNAME), e.g. ib0.")
@click.option("--venv", help="--launcher bare: the venv with vLLM and Ray on every node (default /opt/vllm).")
@click.option("--r1kit-home", help="--launcher bare: the folder with cluster.py, preflight.py and entrypoint.sh (default /opt/r1kit).")
@click.option("--dry-run", is_flag=True, help="Print the script and submit nothing.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write the script to FILE (mode 0755) instead of submitting it.")
@click.option("--force", is_flag=True, help="Let -o replace an existing FILE.")
def slurm_command(preset: str | None, vllm_args: tuple[str, ...], list_presets: bool, dry_run: bool, output: Path | None,
                  force: bool, **options: Any) -> None:
    """Write (or submit with sbatch) a SLURM job that starts vLLM across nodes with Ray, from PRESET (see --list).
    Arguments after `--` go to `vllm serve`."""
    presets = slurm.load_presets()
    if list_presets or preset is None:
        click.echo("\n".join(slurm.listing(presets)))
        return
    if dry_run and output is not None:
        raise UserError("give --dry-run (print the script) or -o FILE (write it), not both")
    # click takes everything after `--` as arguments; vllm serve's start with an option (the model is ours).
    if vllm_args and not vllm_args[0].startswith("-"):
        raise UserError(f"unexpected argument {shown(vllm_args[0])}: one PRESET, then vllm serve's own options after `--`")
    text = slurm.render(slurm.job(presets.get(preset), {**options, "extra_args": vllm_args or None}), presets)
    if dry_run:
        click.echo(text, nl=False)
    elif output is not None:
        slurm.write(output, text, force)
        click.echo(output, err=True)
    else:
        click.echo(slurm.submit(text))


if __name__ == "__main__":
    sys.exit(main())
