"""`builder slurm`: an sbatch script that starts a multi-node vLLM cluster (Ray) on SLURM.

The script (slurm.sbatch.j2) starts the per-node launcher `r1kit-cluster` (images/vllm/cluster.py) with
srun: `head` on the first node (Ray head, the wait for every node, then `vllm serve`), `worker` on the others.
A preset (slurm_presets.yaml) gives the cluster's shape and storage; options override each value. Everything is
checked here, before anything is written or submitted: a layout vLLM would reject after loading 690 GB is one
`error:` line now.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

import jinja2
import yaml

import builder.images.catalog
import builder.models.catalog
from builder.core.errors import UserError, shown
from builder.core.paths import atomic_write, find_repo_root, output_file
from builder.core.templates import environment
from builder.core.values import matching, plain, unsafe_character
from builder.images import runtime
from builder.images.render import image_tag
from builder.images.tags import resolve_registry
from builder.models.catalog import Model, ModelCatalog

LAUNCHERS = ("pyxis", "apptainer", "bare")
GPU_REQUESTS = ("gres", "gpus-per-node", "none")
# `uname -m` and Docker's names for the two platforms the vLLM image is built for.
ARCHES = {"x86_64": "linux/amd64", "amd64": "linux/amd64", "aarch64": "linux/arm64", "arm64": "linux/arm64"}
# The patterns are full matches (values.matching): a `$` anchor would let a trailing newline through.
# Values that land on `#SBATCH` lines, which the shell does not parse: no quoting protects them.
SBATCH_WORD = re.compile(r"[A-Za-z0-9_.+-]+")
SBATCH_TIME = re.compile(r"([0-9]+-)?[0-9]+(:[0-9]+){0,2}")  # [0-9], not \d: \d takes any script's digits
# NCCL_SOCKET_IFNAME: names, prefixes, `^` (exclude) and `=` (exact), comma-separated.
IFNAME = re.compile(r"[\^=]?[A-Za-z0-9_.:-]+(,[A-Za-z0-9_.:-]+)*")
HOST = re.compile(r"[A-Za-z0-9_.:-]+")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
VLLM_TARGET = "vllm"
API_KEY_IN_CONTAINER = "/run/r1kit/api-key"  # where a container launcher mounts --api-key-file
MODEL_INIT_TARGET = "model-init"
# How long the head waits for every node's Ray to join (not the model load, which starts after that): covers each
# node importing the 10 GB image on first use (enroot, apptainer) and its preflight. A 690 GB first load over
# network storage took 30-40 minutes, and no node-count timeout needs to wait for it.
WAIT_TIMEOUT = 900


@dataclass(frozen=True)
class Layout:
    """What a preset fixes and a job may override: the machines, the parallelism, the model's storage and size."""

    nodes: int
    gpus_per_node: int
    tensor_parallel: int
    pipeline_parallel: int
    arch: str
    models_dir: str
    download: bool
    max_model_len: int
    gpu_memory_utilization: float


@dataclass(frozen=True)
class Preset(Layout):
    name: str
    description: str


@dataclass(frozen=True)
class Presets:
    presets: Mapping[str, Preset]
    attention_heads: Mapping[str, int]

    def get(self, name: str) -> Preset:
        try:
            return self.presets[name]
        except KeyError:
            raise UserError(f"unknown preset {shown(name)}: choose one of {', '.join(self.presets)} (see `builder slurm --list`)") from None


@dataclass(frozen=True)
class Job(Layout):
    """Every setting of one script, checked (see `check`)."""

    preset: str
    model: str = "r1-0528-fp8"  # R1-0528, the R1 most run now (--model r1-671b-fp8: the original)
    launcher: str = "pyxis"
    image: str | None = None  # None: the project's published vLLM image
    model_init_image: str | None = None
    partition: str | None = None
    account: str | None = None
    time: str | None = None
    job_name: str = "r1kit-vllm"
    wait_timeout: int = WAIT_TIMEOUT
    ray_port: int = 6379
    host: str = "127.0.0.1"
    port: int = field(default_factory=lambda: runtime.load(VLLM_TARGET).port)
    served_model_name: str | None = None
    api_key_file: str | None = None
    ifname: str | None = None
    gpu_request: str = "gres"
    venv: str = "/opt/vllm"
    r1kit_home: str = "/opt/r1kit"
    extra_args: tuple[str, ...] = ()


def load_presets(text: str | None = None) -> Presets:
    raw = yaml.safe_load(text if text is not None else resources.files("builder.cluster").joinpath("slurm_presets.yaml").read_text())
    names = {f.name for f in fields(Preset)} - {"name"}
    out = {}
    for name, spec in raw["presets"].items():
        missing = names - set(spec)
        if missing:
            raise UserError(f"slurm_presets.yaml: preset {name!r} lacks {', '.join(sorted(missing))}")
        out[name] = Preset(name=name, **{k: spec[k] for k in names})
    return Presets(out, {str(k): int(v) for k, v in raw.get("attention_heads", {}).items()})


def job(preset: Preset, overrides: Mapping[str, Any]) -> Job:
    """The preset's values, each replaced by an option the user gave (None: not given)."""
    base = {f.name: getattr(preset, f.name) for f in fields(Layout)}
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(given) - {f.name for f in fields(Job)}
    if unknown:
        raise ValueError(f"not a Job field: {sorted(unknown)}")  # a programming error, not the user's
    return Job(preset=preset.name, **{**base, **given})


def _positive(value: Any, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{what} must be a positive whole number, not {shown(value)}")


def _absolute(value: str, what: str) -> None:
    plain(value, what)
    path = PurePosixPath(value)
    # srun --container-mounts and apptainer --bind separate mounts with `,` and fields with `:`.
    if not path.is_absolute() or any(c in value for c in ",:") or ".." in path.parts:
        raise UserError(f"{what} {shown(value)} must be an absolute path (the same on every node) without ',', ':' or '..'")


def _plain_text(j: Job) -> None:
    """Every string the script carries, on one line and printable (values.plain), before any other check: a
    line break in a value would end a comment or a quoted word early, and bash would run what follows. The
    checks below add each value's own shape; this one covers the values that have none (--image,
    --served-model-name, vllm serve's own arguments)."""
    for what, value in (("PRESET", j.preset), ("--model", j.model), ("--arch", j.arch), ("--launcher", j.launcher),
                        ("--gpu-request", j.gpu_request), ("--image", j.image), ("--model-init-image", j.model_init_image),
                        ("--served-model-name", j.served_model_name), *(("vllm serve's argument", a) for a in j.extra_args)):
        if value is not None:
            plain(value, what)


def check(j: Job, presets: Presets, catalog: ModelCatalog) -> Model:
    """Refuse, in one line, what vLLM or SLURM would refuse later (or what would expose the endpoint)."""
    _plain_text(j)
    for what, value in (("--nodes", j.nodes), ("--gpus-per-node", j.gpus_per_node), ("--tensor-parallel", j.tensor_parallel),
                        ("--pipeline-parallel", j.pipeline_parallel), ("--wait-timeout", j.wait_timeout), ("--max-model-len", j.max_model_len)):
        _positive(value, what)
    gpus, parallel = j.nodes * j.gpus_per_node, j.tensor_parallel * j.pipeline_parallel
    if parallel != gpus:
        raise UserError(f"tensor × pipeline = {j.tensor_parallel} × {j.pipeline_parallel} = {parallel} GPUs but {j.nodes} nodes × "
                        f"{j.gpus_per_node} GPUs = {gpus}: every GPU of the job serves one rank; make them equal "
                        f"(e.g. --tensor-parallel {j.gpus_per_node} --pipeline-parallel {j.nodes})")
    tp, g = j.tensor_parallel, j.gpus_per_node
    # Ray places ranks node by node: a tensor-parallel group must fill whole nodes, or fit whole into one.
    if (tp > g and tp % g) or (tp < g and g % tp):
        raise UserError(f"tensor parallel {tp} and {g} GPUs per node: a tensor-parallel group would straddle two nodes; "
                        f"choose a tensor-parallel size that divides {g} or is a multiple of it")
    model = catalog.get(j.model)
    if model.format != "safetensors" or "vllm" not in model.engines:
        raise UserError(f"model {j.model} is {model.format} for {', '.join(model.engines)}: vLLM serves the safetensors models "
                        f"({', '.join(m.name for m in catalog.models.values() if m.format == 'safetensors' and 'vllm' in m.engines)})")
    if model.layers and j.pipeline_parallel > model.layers:
        raise UserError(f"pipeline parallel {j.pipeline_parallel} but {j.model} has {model.layers} layers: each stage needs at least one")
    heads = presets.attention_heads.get(model.arch or "")
    if heads and heads % tp:
        raise UserError(f"tensor parallel {tp} does not divide {j.model}'s {heads} attention heads: vLLM splits them evenly across the ranks")
    if j.arch not in ARCHES:
        raise UserError(f"--arch {shown(j.arch)}: the vLLM image is built for x86_64 (amd64) and aarch64 (arm64) only")
    if not 0 < j.gpu_memory_utilization <= 1:
        raise UserError(f"--gpu-memory-utilization is a fraction of each GPU's memory (0 to 1], not {shown(j.gpu_memory_utilization)}")
    for what, port in (("--ray-port", j.ray_port), ("--port", j.port)):
        if not 1 <= port <= 65535:
            raise UserError(f"{what} {port} is not a TCP port (1 to 65535)")
    if j.launcher not in LAUNCHERS:
        raise UserError(f"--launcher {shown(j.launcher)}: choose one of {', '.join(LAUNCHERS)}")
    if j.gpu_request not in GPU_REQUESTS:
        raise UserError(f"--gpu-request {shown(j.gpu_request)}: choose one of {', '.join(GPU_REQUESTS)}")
    _absolute(j.models_dir, "--models-dir")
    for what, path in (("--venv", j.venv), ("--r1kit-home", j.r1kit_home), ("--api-key-file", j.api_key_file)):
        if path is not None:
            _absolute(path, what)
    for what, value in (("--partition", j.partition), ("--account", j.account), ("--job-name", j.job_name)):
        if value is not None:
            matching(SBATCH_WORD, value, what, "letters, digits and _ . + - only (it lands on an #SBATCH line)")
    if j.time is not None:
        matching(SBATCH_TIME, j.time, "--time", "a SLURM time limit such as 24:00:00 or 2-00:00:00")
    if j.ifname is not None:
        matching(IFNAME, j.ifname, "--ifname", "a network interface name (or NCCL_SOCKET_IFNAME list such as ib0 or ^lo,docker)")
    matching(HOST, j.host, "--host", "an address to listen on")
    if j.host not in LOOPBACK and j.api_key_file is None:
        raise UserError(f"--host {j.host} without --api-key-file would serve an endpoint anyone on the network can use: give "
                        "--api-key-file PATH (a file holding the key, readable on the head node)")
    if any(a == "--api-key" or a.startswith("--api-key=") or a.startswith("--api_key") for a in j.extra_args):
        raise UserError("--api-key on vllm's command line shows in `ps` and the job's records: use --api-key-file PATH")
    if j.launcher == "bare" and (j.image or j.model_init_image):
        raise UserError("--launcher bare runs the software installed on the nodes (--venv, --r1kit-home): --image and --model-init-image are for pyxis and apptainer")
    return model


def _published(target_name: str) -> str:
    """The project's published reference of a target's default variant (image.yaml's tag template), so that a
    version bump (`builder pin`) carries into the scripts."""
    root = find_repo_root()
    if root is None:
        raise UserError(f"no checkout to read images/{target_name}/image.yaml from: give the image with --image / --model-init-image")
    target = builder.images.catalog.load(root / "images").get(target_name)
    return f"{resolve_registry()}/{target.name}:{image_tag(target, {})}"


def _check_platform(target_name: str, arch: str) -> None:
    root = find_repo_root()
    if root is None:
        return
    target = builder.images.catalog.load(root / "images").get(target_name)
    if ARCHES[arch] not in target.platforms:
        raise UserError(f"--arch {arch}: the {target_name} image is built for {', '.join(target.platforms)} only")


def launcher_image(ref: str, launcher: str) -> str:
    """A registry reference in the launcher's spelling: enroot separates the registry with `#`
    (ghcr.io#r1kit/vllm:TAG), apptainer wants a docker:// URI. A path (.sqsh, .sif) or an already-spelled reference
    stays as it is."""
    if ref.startswith("/") or "://" in ref or "#" in ref:
        return ref
    first, sep, rest = ref.partition("/")
    is_registry = sep and ("." in first or ":" in first or first == "localhost")
    if launcher == "pyxis":
        return f"{first}#{rest}" if is_registry else ref
    if launcher == "apptainer":
        return f"docker://{ref}"
    return ref


def model_path(j: Job) -> str:
    """Where vLLM finds the model: the models folder is mounted at /models in a container."""
    folder = "/models" if j.launcher != "bare" else j.models_dir.rstrip("/")
    return f"{folder}/{j.model}"


def serve_args(j: Job) -> list[str]:
    """`vllm serve`'s arguments, each setting with the flag images/vllm/runtime.yaml gives it; r1kit-cluster adds
    `--distributed-executor-backend ray`."""
    settings = {
        "VLLM_SERVED_MODEL_NAME": j.served_model_name or j.model,
        "VLLM_TENSOR_PARALLEL_SIZE": str(j.tensor_parallel),
        "VLLM_PIPELINE_PARALLEL_SIZE": str(j.pipeline_parallel),
        "VLLM_MAX_MODEL_LEN": str(j.max_model_len),
        "VLLM_GPU_MEMORY_UTILIZATION": f"{j.gpu_memory_utilization:g}",
        # R1's thinking arrives in the answer's `reasoning` field (--enable-reasoning is gone).
        "VLLM_REASONING_PARSER": "deepseek_r1",
    }
    return [model_path(j), "--host", j.host, "--port", str(j.port), *runtime.load(VLLM_TARGET).flags(settings), *j.extra_args]


def _lines(args: list[str]) -> list[str]:
    """The arguments shell-quoted, an option and its value on one line (the script's serve_args array)."""
    lines: list[str] = []
    for arg in args:
        if lines and lines[-1].startswith("--") and " " not in lines[-1] and not arg.startswith("-"):
            lines[-1] += " " + shlex.quote(arg)
        else:
            lines.append(shlex.quote(arg))
    return lines


def _gpu_step(j: Job) -> list[str]:
    """Each step asks for the node's GPUs itself: a step inherits the job's GPU request only in some SLURM versions."""
    return {"gres": [f"--gres=gpu:{j.gpus_per_node}"], "gpus-per-node": [f"--gpus-per-node={j.gpus_per_node}"], "none": []}[j.gpu_request]


def _environment() -> jinja2.Environment:
    # Bash's ${#array[@]} would open a Jinja comment.
    env = environment(jinja2.PackageLoader("builder.cluster", "."), comment_start_string="{{#", comment_end_string="#}}")
    env.filters["q"] = lambda value: shlex.quote(str(value))
    return env


def render(j: Job, presets: Presets | None = None, catalog: ModelCatalog | None = None) -> str:
    """The sbatch script: checked first, so that no script exists for a job that cannot start."""
    presets = presets or load_presets()
    model = check(j, presets, catalog or builder.models.catalog.load())
    image = model_init = None
    if j.launcher != "bare":
        _check_platform(VLLM_TARGET, j.arch)
        image = launcher_image(j.image or _published(VLLM_TARGET), j.launcher)
        if j.download:
            model_init = launcher_image(j.model_init_image or _published(MODEL_INIT_TARGET), j.launcher)
    text = _environment().get_template("slurm.sbatch.j2").render(
        job=j, model=model, image=image, model_init_image=model_init, serve_lines=_lines(serve_args(j)),
        gpu_step=_gpu_step(j), api_key_in_container=API_KEY_IN_CONTAINER, engine=runtime.load(VLLM_TARGET),
    )
    return _script_lines(text)


def _script_lines(text: str) -> str:
    """The rendered text with trailing blanks cut, split on "\n" only: bash ends a line there and nowhere else, while
    str.splitlines() also breaks on \r, \x0b, \x0c, \x1c-\x1e, \x85, U+2028 and U+2029, so a value holding one would
    be read differently by this check and by bash. Any such character left (from a preset or catalog file, not an
    option: check() refused those) stops the script here."""
    lines = [line.rstrip(" \t") for line in text.rstrip("\n").split("\n")]
    for number, line in enumerate(lines, 1):
        ch = unsafe_character(line, allow_tab=True)
        if ch is not None:
            raise UserError(f"the script's line {number} would hold the control character {ch!r}: {shown(line)}")
    return "\n".join(lines) + "\n"


def output_path(path: Path, force: bool = False) -> Path:
    """Where `-o PATH` writes, checked before anything is rendered (core.paths.output_file): a symlink's target,
    never a FIFO or a device; an existing file or a dangling link only with --force."""
    try:
        return output_file(Path(plain(str(path), "-o")), "-o", force=force)
    except OSError as e:  # a name the file system refuses (too long, a loop of links): one line, as for any other refusal
        raise UserError(f"-o {shown(str(path))}: {e.strerror or e}") from None


def write(target: Path, text: str) -> None:
    """The whole script or nothing (a temp file renamed), executable, at the path output_path() gave."""
    atomic_write(target, text, mode=0o755)


def submit(text: str, sbatch: str | None = None) -> str:
    """Hand the script to sbatch on its standard input; sbatch's answer (Submitted batch job N)."""
    sbatch = sbatch or shutil.which("sbatch")
    if sbatch is None:
        raise UserError("no sbatch on PATH: run this on the cluster's login node, or write the script with -o FILE "
                        "(or print it with --dry-run) and submit it there")
    done = subprocess.run([sbatch], input=text, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        said = " ".join(done.stderr.split()) or f"exit status {done.returncode}"
        raise UserError(f"sbatch refused the job: {said[:500]}")
    return done.stdout.strip()


def listing(presets: Presets) -> list[str]:
    rows = [f"{'preset':<12} {'GPUs':<8} {'TP x PP':<8} {'arch':<8} {'storage':<28} description"]
    for p in presets.presets.values():
        storage = f"{p.models_dir} ({'per node' if p.download else 'shared'})"
        rows.append(f"{p.name:<12} {f'{p.nodes}x{p.gpus_per_node}':<8} {f'{p.tensor_parallel}x{p.pipeline_parallel}':<8} "
                    f"{p.arch:<8} {storage:<28} {p.description}")
    return rows

