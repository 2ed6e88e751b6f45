"""images/vllm/entrypoint.sh run by a POSIX shell (dash) against the image's layout of /opt/r1kit (R1KIT_HOME: the
scripts, and r1kit_keyguard.py under python/, as the Dockerfile copies them), with a stand-in `vllm` first on PATH
that shows what it receives. The real preflight runs (standard library only). The middleware itself is tested on
vLLM's real app in tests/integration/test_vllm_keyguard.py."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from support.prerequisites import REPO

VLLM = REPO / "images" / "vllm"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "r1kit"
    (home / "python").mkdir(parents=True)
    for name in ("entrypoint.sh", "preflight.py"):
        shutil.copy(VLLM / name, home / name)
    shutil.copy(VLLM / "r1kit_keyguard.py", home / "python" / "r1kit_keyguard.py")
    stub = tmp_path / "bin"
    stub.mkdir()
    # The stand-in imports the middleware as vLLM's --middleware would: from the PYTHONPATH the entrypoint set.
    (stub / "vllm").write_text('#!/bin/sh\n[ -z "${PYTHONPATH:-}" ] || python3 -c "import r1kit_keyguard" || exit 9\necho "key=${VLLM_API_KEY:-} path=${PYTHONPATH:-} args=$*"\n')
    (stub / "vllm").chmod(0o755)
    return home


def entrypoint(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    path = f"{home.parent / 'bin'}:{os.environ['PATH']}"
    base = {"PATH": path, "R1KIT_HOME": str(home), "HOME": str(home.parent)}
    return subprocess.run(["dash", str(home / "entrypoint.sh"), *args], env={**base, **env}, capture_output=True, text=True, timeout=60)


def test_with_a_key_file_every_route_is_guarded(home: Path, tmp_path: Path):
    key = tmp_path / "key"
    key.write_text("the-key\nignored\n")
    done = entrypoint(home, "/models/any", "--max-model-len=8192", VLLM_API_KEY_FILE=str(key))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (f"key=the-key path={home}/python args=serve /models/any --max-model-len=8192 "
                                   "--middleware r1kit_keyguard.KeyOnEveryRoute")


def test_a_key_from_the_environment_is_guarded_too_and_pythonpath_is_kept(home: Path):
    done = entrypoint(home, "/models/any", VLLM_API_KEY="k", PYTHONPATH="/elsewhere")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"key=k path={home}/python:/elsewhere args=serve /models/any --middleware r1kit_keyguard.KeyOnEveryRoute"


def test_without_a_key_vllm_runs_unchanged(home: Path):
    """No key, nothing to check: the middleware would refuse to start (it never serves open by mistake)."""
    done = entrypoint(home, "/models/any")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "key= path= args=serve /models/any"


def test_the_middleware_refuses_to_start_without_a_key():
    import importlib.util

    spec = importlib.util.spec_from_file_location("r1kit_keyguard", VLLM / "r1kit_keyguard.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(RuntimeError, match="VLLM_API_KEY is empty"):
        module.KeyOnEveryRoute(app=None, keys=[""])


def test_the_dockerfile_puts_the_middleware_where_the_entrypoint_looks():
    for dockerfile in (VLLM / "Dockerfile.j2", VLLM / "vllm.Dockerfile"):
        assert "COPY --chmod=0644 r1kit_keyguard.py /opt/r1kit/python/" in dockerfile.read_text(), dockerfile
