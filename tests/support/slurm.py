"""What the SLURM tests share: the `vllm serve` arguments a generated script will run, read from the script itself
(its serve_args array, evaluated by bash), and those arguments parsed by vLLM's own parser."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from support.prerequisites import REPO

PARSE = REPO / "tests" / "support" / "vllm_parse.py"
SERVE_ARGS = re.compile(r"^serve_args=\($.*?^\)$", re.MULTILINE | re.DOTALL)
# What r1kit-cluster head appends to the script's arguments (images/vllm/cluster.py).
RAY_BACKEND = ["--distributed-executor-backend", "ray"]


def script_serve_args(script: str) -> list[str]:
    """The serve_args array exactly as bash reads the script's text (quoting included)."""
    block = SERVE_ARGS.search(script)
    assert block, "the script has no serve_args=( ... ) array"
    out = subprocess.run(["bash", "-c", block.group(0) + '\nprintf "%s\\0" "${serve_args[@]}"'], capture_output=True, check=True)
    return out.stdout.decode().split("\0")[:-1]


def vllm_parse(python: Path, arg_lists: list[list[str]]) -> list[dict]:
    """One result per argument list: {"ok": {...}} or {"error": [...]} (tests/support/vllm_parse.py)."""
    done = subprocess.run([str(python), "-P", str(PARSE)], input=json.dumps(arg_lists), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])["results"]
