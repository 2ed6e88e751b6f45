"""The vLLM image (amd64), built for real from PyPI (heavy: about 11 minutes cold and 10 GB; `--heavy`). Inside it:
`vllm --version`, the stack's exact `vllm serve` arguments parsed by the image's own vLLM, the preflight refusing bad
settings in one line before vLLM loads, the API key taken from a file only, and the user it runs as."""

from __future__ import annotations

import json
import subprocess

import pytest
from python_on_whales import DockerClient
from support.prerequisites import REPO
from support.vllm_settings import SETTINGS, vllm_command

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.heavy]


def run(image: str, *args: str, entrypoint: str | None = None, stdin: str | None = None, volumes: list[str] = ()) -> subprocess.CompletedProcess:
    cmd = ["docker", "run", "--rm", "-i", "--read-only", "--tmpfs", "/tmp"]
    for v in volumes:
        cmd += ["-v", v]
    if entrypoint:
        cmd += ["--entrypoint", entrypoint]
    return subprocess.run([*cmd, image, *args], input=stdin, capture_output=True, text=True, timeout=900)


def test_vllm_version(vllm_image: str):
    result = run(vllm_image, "VLLM_TARGET_DEVICE=cpu", "vllm", "--version", entrypoint="env")
    assert result.returncode == 0 and result.stdout.strip().splitlines()[-1] == "0.33.0", result.stderr[-2000:]


def test_runs_as_uid_10001_with_ray_pinned(vllm_image: str, docker: DockerClient):
    config = docker.image.inspect(vllm_image).config
    assert config.user == "10001:10001" and config.entrypoint == ["r1kit-vllm"]
    assert config.healthcheck.test[-1].startswith("curl -fsS http://127.0.0.1:8000/health")
    assert config.labels["org.opencontainers.image.version"] == "0.33.0"
    versions = run(vllm_image, "-c", "import importlib.metadata as m; print(m.version('ray'), m.version('torch'))", entrypoint="python3")
    assert versions.stdout.split() == ["2.60.0", "2.14.0"], versions.stderr
    # A fresh volume on the cache folder (as the stack mounts one) is the engine user's to write.
    volume = f"r1kit-test-vllm-cache-{vllm_image.rsplit(':', 1)[1]}"
    try:
        cache = run(vllm_image, "-c", "touch /home/vllm/.cache/written && stat -c %u /home/vllm/.cache", entrypoint="sh",
                    volumes=[f"{volume}:/home/vllm/.cache"])
        assert cache.returncode == 0 and cache.stdout.strip() == "10001", cache.stderr
    finally:
        subprocess.run(["docker", "volume", "rm", "-f", volume], capture_output=True)


def test_the_stacks_arguments_parse_in_the_images_vllm(vllm_image: str):
    commands = [vllm_command(env) for env, _ in SETTINGS.values()]
    result = run(vllm_image, "-P", "/r1kit-test/vllm_parse.py", entrypoint="python3", stdin=json.dumps(commands),
                 volumes=[f"{REPO / 'tests/support/vllm_parse.py'}:/r1kit-test/vllm_parse.py:ro"])
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    for (name, (_, want)), got in zip(SETTINGS.items(), out["results"]):
        assert "ok" in got and {k: got["ok"][k] for k in want} == want, name


@pytest.mark.parametrize(("args", "says"), [
    (["--tensor-parallel-size=-1"], "--tensor-parallel-size must be positive, not -1"),
    (["--reasoning-parser=deepseek-r1"], "--reasoning-parser 'deepseek-r1' is not one vLLM knows"),
    (["--api-key=sk-visible"], "--api-key on the command line"),
])
def test_bad_settings_stop_before_vllm_starts(vllm_image: str, args: list[str], says: str):
    result = run(vllm_image, "/models/any", *args)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], result.stderr[-2000:]


def test_the_api_key_comes_from_its_file_only(vllm_image: str, tmp_path):
    """The entrypoint exports the file's key as VLLM_API_KEY and execs `vllm serve` with the arguments unchanged:
    a `vllm` placed first on PATH shows what it receives (the image's python3 still runs the preflight). With a key,
    the middleware that asks for it on every route (r1kit_keyguard) is added, and imports from the PYTHONPATH given."""
    keys, stub = tmp_path / "keys", tmp_path / "stub"
    keys.mkdir()
    stub.mkdir()
    (stub / "vllm").write_text('#!/bin/sh\npython3 -c "import r1kit_keyguard" && echo "key=$VLLM_API_KEY args=$*"\n')
    (stub / "vllm").chmod(0o755)
    (keys / "key").write_text("")
    for p in (keys, keys / "key"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    docker = ["docker", "run", "--rm", "-e", "VLLM_API_KEY_FILE=/keys/key", "-e", "PATH=/stub:/opt/vllm/bin:/usr/local/bin:/usr/bin:/bin",
              "-v", f"{keys}:/keys:ro", "-v", f"{stub}:/stub:ro", vllm_image, "/models/any", "--max-model-len=8192"]
    empty = subprocess.run(docker, capture_output=True, text=True, timeout=300)
    assert empty.returncode == 2 and empty.stderr.strip() == "error: /keys/key is empty: the stack's secrets-init writes the key there"
    (keys / "key").write_text("the-key\n")
    given = subprocess.run(docker, capture_output=True, text=True, timeout=300)
    assert given.returncode == 0 and given.stdout.strip() == ("key=the-key args=serve /models/any --max-model-len=8192 "
                                                                  "--middleware r1kit_keyguard.KeyOnEveryRoute"), given.stderr
    assert "memory check skipped: no NVIDIA GPU visible" in given.stderr
