"""The `builder` command line as the tests run it, and this run's tag suffix.

Three ways, for what each test needs:

- `builder_in_process`: builder.cli.main in this Python, through click's CliRunner: no interpreter start and no
  imports per call (most of a subprocess call's time), for tests of what the command prints, writes and exits with.
  Everything the code reads at call time (cwd, os.environ, stdin) is set for the call and put back after it, and so
  are the SIGINT/SIGTERM handlers the command installs (pytest's own Ctrl-C handling needs SIGINT back).
- `builder`: a real `python -m builder.cli` process, for builds (long output, real Docker) and wherever the process
  itself is under test: signals, exit statuses of a killed process, concurrent runs.
- `builder_with_env`: a real process with exactly the given environment, for `builder download`: huggingface_hub
  reads HF_ENDPOINT, HF_HOME and the token's variables when it is first imported, so they cannot be set per call in
  one process.

Each returns a subprocess.CompletedProcess (returncode, stdout, stderr), so the tests assert the same things whichever
way they run the command.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Iterator

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


@contextlib.contextmanager
def _as_a_process_would_see(cwd: Path, env: dict[str, str] | None) -> Iterator[None]:
    """cwd, os.environ (replaced, as subprocess's env= does) and the signal handlers, put back afterwards."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    saved_env = dict(os.environ)
    saved_cwd = os.getcwd()
    try:
        os.chdir(cwd)
        if env is not None:
            os.environ.clear()
            os.environ.update(env)
        yield
    finally:
        os.chdir(saved_cwd)
        if env is not None:
            os.environ.clear()
            os.environ.update(saved_env)
        for s, handler in handlers.items():
            signal.signal(s, handler)


def builder_in_process(*args: str, check: bool = True, capture_output: bool = False, env: dict[str, str] | None = None,
                       input: str | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """Run builder.cli.main in this process; the result as `builder` would return it (text, stderr apart from
    stdout). An exception the command lets out is exit status 1 and its traceback on stderr, as Python does.

    capture_output is accepted for the same calls as `builder`; the output is always captured, and echoed to this
    process's stdout/stderr (pytest shows it for a failed test) where the caller did not ask to capture it.
    """
    from click.testing import CliRunner

    from builder.cli import main

    with _as_a_process_would_see(cwd, env):
        result = CliRunner().invoke(main, list(args), input=input, prog_name="builder", catch_exceptions=True)
    stdout, stderr = result.stdout, result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(*result.exc_info))
    if not capture_output:
        sys.stdout.write(stdout)
        sys.stderr.write(stderr)
    done = subprocess.CompletedProcess(["builder", *args], result.exit_code, stdout, stderr)
    if check:
        done.check_returncode()
    return done


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """The CLI's contract for a refusal: exit status 2 and one `error: ` line on stderr; that line."""
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]
