"""What the SLURM tests share: the presets, scripts rendered by `builder slurm --dry-run`, and the `vllm serve`
arguments a generated script will run, read from the script itself (its serve_args array, evaluated by bash). vLLM's
parser reads them through tests/support/vllm_venv.py (vllm_parse)."""

from __future__ import annotations

import re
import subprocess

from builder.cluster import slurm
from support.builder import builder_in_process

PRESETS = list(slurm.load_presets().presets)
# The options a cluster admin is likeliest to add, all at once (the script's other branches).
EVERYTHING = ["--host", "0.0.0.0", "--api-key-file", "/etc/r1kit/vllm-key", "--ifname", "ib0", "--partition", "gpu",
              "--account", "proj-1", "--time", "2-00:00:00", "--gpu-request", "gpus-per-node", "--download",
              "--", "--enable-expert-parallel", "--max-num-seqs", "32"]
SERVE_ARGS = re.compile(r"^serve_args=\($.*?^\)$", re.MULTILINE | re.DOTALL)
# What r1kit-cluster head appends to the script's arguments (images/vllm/cluster.py).
RAY_BACKEND = ["--distributed-executor-backend", "ray"]


def script_serve_args(script: str) -> list[str]:
    """The serve_args array exactly as bash reads the script's text (quoting included)."""
    block = SERVE_ARGS.search(script)
    assert block, "the script has no serve_args=( ... ) array"
    out = subprocess.run(["bash", "-c", block.group(0) + '\nprintf "%s\\0" "${serve_args[@]}"'], capture_output=True, check=True)
    return out.stdout.decode().split("\0")[:-1]


def render(preset: str, *args: str) -> str:
    """The script `builder slurm PRESET --dry-run ARGS` prints."""
    return builder_in_process("slurm", preset, "--dry-run", *args, capture_output=True).stdout
