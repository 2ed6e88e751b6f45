"""The `builder` command line as the tests run it, and this run's tag suffix.

Two ways:

- `builder`: a real `python -m builder.cli` process, for builds (long output, real Docker) and wherever the process
  itself is under test: signals, exit statuses of a killed process, concurrent runs.
- `builder_with_env`: a real process with exactly the given environment, for `builder download`: huggingface_hub
  reads HF_ENDPOINT, HF_HOME and the token's variables when it is first imported, so they cannot be set per call in
  one process.

Each returns a subprocess.CompletedProcess (returncode, stdout, stderr), so the tests assert the same things whichever
way they run the command.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

from support.prerequisites import REPO

# The tags of the images the suite builds (the stack tests run these too) end in RUN: a fixed tag can be re-tagged
# mid-run by another checkout's suite on the same daemon (seen: 9 tests failing against the other checkout's image).
# The build cache stays shared, so a second run's builds are still cache hits.
RUN = f"run-{os.getpid()}-{secrets.token_hex(3)}"


def builder(*args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    """Run the real `builder` command line in a process of its own."""
    return subprocess.run([sys.executable, "-m", "builder.cli", *args], cwd=REPO, check=check, text=True, **kw)


def builder_with_env(*args: str, env: dict[str, str], check: bool = False) -> subprocess.CompletedProcess:
    """`builder` in a process of its own with exactly `env` (nothing inherited); check: assert it succeeded."""
    result = subprocess.run([sys.executable, "-m", "builder.cli", *args], cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """The CLI's contract for a refusal: exit status 2 and one `error: ` line on stderr; that line."""
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]
