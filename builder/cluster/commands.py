"""The slurm command: a SLURM job that starts vLLM across nodes with Ray, from a preset and overrides."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import click

from builder.cluster import slurm
from builder.core.errors import UserError, shown
from builder.models.catalog import CONTEXT_MAX

# The defaults a job has where neither the preset nor an option sets a value: read from Job, never repeated here.
DEFAULT = {f.name: f.default for f in dataclasses.fields(slurm.Job) if f.default is not dataclasses.MISSING}


@click.command("slurm")
@click.argument("preset", required=False)
@click.argument("vllm_args", nargs=-1, type=click.UNPROCESSED, metavar="[-- VLLM_SERVE_ARGS...]")
@click.option("--list", "list_presets", is_flag=True, help="Show the presets and exit.")
@click.option("--nodes", type=click.IntRange(1, 4096), help="Nodes in the job (the preset's by default).")
@click.option("--gpus-per-node", type=click.IntRange(1, 64), help="GPUs each node brings.")
@click.option("--tensor-parallel", type=click.IntRange(1, 4096), help="vLLM's tensor-parallel size (best: the GPUs of one node).")
@click.option("--pipeline-parallel", type=click.IntRange(1, 4096), help="vLLM's pipeline-parallel size (best: the nodes).")
@click.option("--arch", help="The nodes' CPU architecture: x86_64 (amd64) or aarch64 (arm64).")
@click.option("--launcher", type=click.Choice(slurm.LAUNCHERS), help=f"pyxis (srun --container-image), apptainer, or bare (the image's layout installed on the nodes); default {DEFAULT['launcher']}.")
@click.option("--image", help="The vLLM image (default: the project's published one); pyxis: a registry reference or .sqsh, apptainer: a .sif or docker:// URI.")
@click.option("--model-init-image", help="The model-init image for --download with a container launcher (default: the project's published one).")
@click.option("--model", help=f"A catalog model in safetensors (default {DEFAULT['model']}; see `builder models`).")
@click.option("--models-dir", help="Absolute folder holding MODEL's folder on every node: shared storage, or node-local with --download.")
@click.option("--download/--no-download", default=None, help="Fetch the model on every node first (builder download) into --models-dir.")
@click.option("--partition", help="#SBATCH --partition.")
@click.option("--account", help="#SBATCH --account.")
@click.option("--time", help="#SBATCH --time, e.g. 24:00:00 (default: the partition's limit).")
@click.option("--job-name", help=f"#SBATCH --job-name (default {DEFAULT['job_name']}); the output is JOBNAME-JOBID.out.")
@click.option("--gpu-request", type=click.Choice(slurm.GPU_REQUESTS), help=f"How the job asks for GPUs: --gres=gpu:G, --gpus-per-node=G, or none; default {DEFAULT['gpu_request']}.")
@click.option("--wait-timeout", type=click.IntRange(1, 86400), help=f"Seconds the head waits for every node to join Ray (default {DEFAULT['wait_timeout']}; the model load comes after).")
@click.option("--ray-port", type=click.IntRange(1, 65535), help=f"Ray's port on the head (default {DEFAULT['ray_port']}).")
@click.option("--host", help=f"The address vLLM listens on (default {DEFAULT['host']}; another needs --api-key-file).")
@click.option("--port", type=click.IntRange(1, 65535), help="vLLM's port (default: its port in images/vllm/runtime.yaml).")
@click.option("--served-model-name", help="The model's name in the API (default: the catalog name).")
@click.option("--max-model-len", type=click.IntRange(1, CONTEXT_MAX), help="vLLM's --max-model-len (the preset's by default).")
@click.option("--gpu-memory-utilization", type=click.FloatRange(0, 1, min_open=True), help="vLLM's --gpu-memory-utilization (the preset's by default).")
@click.option("--api-key-file", help="A file on the head node holding the API key (VLLM_API_KEY_FILE); without it the endpoint has no key.")
@click.option("--ifname", help="The network interface NCCL and Gloo use (NCCL_SOCKET_IFNAME, GLOO_SOCKET_IFNAME), e.g. ib0.")
@click.option("--venv", help=f"--launcher bare: the venv with vLLM and Ray on every node (default {DEFAULT['venv']}).")
@click.option("--r1kit-home", help=f"--launcher bare: the folder with cluster.py, preflight.py and entrypoint.sh (default {DEFAULT['r1kit_home']}).")
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
    # -o is checked before the script is rendered: a path that cannot be written is refused before any other work.
    target = slurm.output_path(output, force) if output is not None else None
    text = slurm.render(slurm.job(presets.get(preset), {**options, "extra_args": vllm_args or None}), presets)
    if dry_run:
        click.echo(text, nl=False)
    elif target is not None:
        slurm.write(target, text)
        # A symlink stays a link: its target gets the script, and the user is told which file that is.
        click.echo(output if target == output else f"{output}: a symlink, wrote its target {target}", err=True)
    else:
        click.echo(slurm.submit(text))


COMMANDS = (slurm_command,)
