"""compose v2 on the stacks of stacks/ as a fresh clone has them: no stacks/.env read, and only PATH and HOME from the
caller's environment plus what the test sets. Shared by the stack tests (tests/unit/test_stacks.py) and the plan
tests that resolve a written .env (tests/unit/test_plan.py)."""

from __future__ import annotations

import os
import subprocess

from support.prerequisites import REPO
from support.stack import COMPOSE

STACKS = REPO / "stacks"


def compose(files: list[str], *args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    # Only PATH and HOME from the caller: a developer's own WEBUI_PORT or MODEL must not change the result. No
    # other variable by default: a fresh clone with no stacks/.env.
    base = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")}
    # Every profile: a service started only on request (cluster-shared-models.yml's staging model-init) is checked too.
    cmd = [COMPOSE, "--project-directory", str(STACKS), "--profile", "*"]
    for f in files:
        cmd += ["-f", str(STACKS / f)]
    # --env-file /dev/null: a developer's stacks/.env is not read either.
    cmd += ["--env-file", os.devnull, *args]
    return subprocess.run(cmd, env={**base, **(env or {})}, capture_output=True, text=True, check=check)
