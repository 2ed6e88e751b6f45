"""The model volume, read and written from the host through short-lived containers of the stack's own model-init
image (as its user, uid 10001, with no network and no capability): bytes stream through the container's stdin or
stdout as tar, so nothing is ever staged on the host's disk."""

from __future__ import annotations

import json
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from builder.core.errors import UserError, shown

FILL_SCRIPT = Path(__file__).with_name("volume_fill.py")
ROOT = "/models"


def _run(image: str, volume: str, entrypoint: str, *args: str, read_only: bool) -> list[str]:
    mount = f"{volume}:{ROOT}" + (":ro" if read_only else "")
    return ["docker", "run", "--rm", "-i", "--network", "none", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
            "-v", mount, "--entrypoint", entrypoint, image, *args]


def read(image: str, volume: str, path: str) -> bytes | None:
    """A small file of the volume (model-init's records), or None where it has none."""
    done = subprocess.run(_run(image, volume, "cat", f"{ROOT}/{path}", read_only=True), capture_output=True)
    return done.stdout if done.returncode == 0 else None


@contextmanager
def exported(image: str, volume: str, paths: list[str]) -> Iterator[BinaryIO]:
    """A tar stream of `paths` (relative to the volume's root), in that order, read from the container's stdout."""
    proc = subprocess.Popen(_run(image, volume, "tar", "-C", ROOT, "-cf", "-", "--", *paths, read_only=True),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    try:
        yield proc.stdout  # type: ignore[misc]
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    err = proc.communicate()[1]
    if proc.returncode != 0:
        raise UserError(f"reading the model from volume {volume} failed: {shown(err.decode(errors='replace').strip()[-300:], 300)}")


def survey(image: str, volume: str, spec: dict) -> set[str]:
    """The model files already in place in the volume (a load run before, whole or stopped)."""
    done = subprocess.run(_run(image, volume, "python3", "-c", FILL_SCRIPT.read_text(), "survey", ROOT, json.dumps(spec), read_only=False),
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise UserError(f"reading volume {volume} with {image} failed: {shown(done.stderr.strip()[-300:], 300)}")
    return set(json.loads(done.stdout))


def fill(image: str, volume: str, spec: dict, write: Callable[[BinaryIO], None]) -> None:
    """Run the filler in the volume and hand `write` its stdin, to which it writes a tar stream of the files."""
    proc = subprocess.Popen(_run(image, volume, "python3", "-c", FILL_SCRIPT.read_text(), "fill", ROOT, json.dumps(spec), read_only=False),
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stderr is not None
    try:
        write(proc.stdin)  # type: ignore[arg-type]
    except BrokenPipeError:
        pass  # the filler stopped: its own message (below) says why
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        try:
            proc.stdin.close()
        except BrokenPipeError:
            pass
    err = proc.stderr.read()
    proc.wait()
    if proc.returncode != 0:
        raise UserError(f"writing the model into volume {volume} failed: {shown(err.decode(errors='replace').strip()[-300:], 300)}; run the same load again to resume")
