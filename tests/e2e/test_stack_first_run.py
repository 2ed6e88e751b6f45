"""The user's own first run, in the real engine: `docker compose -f stacks/llamacpp-webui.yml up` from a fresh copy of
stacks/ with no .env and no secret in the environment. The keys are generated once into the keys volume; after
`down` and `up` again the admin's Open WebUI session and the engine's API key still work; no key shows in
`docker inspect` or `docker compose config`; our services run hardened (no capabilities, no privilege gain, the
engine on a read-only root, an init for the one-shots) and our images hold no setuid or setgid file. A key set by
the user wins.

The CPU override, the engine port and the local Hub (tests/e2e/hub-on-host.yml) are the only additions; the images
are the ones the suite builds (per-run tags), and Open WebUI is its stand-in (tests/images/open-webui).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time

import pytest

from support.http import post_json, status, wait_until_healthy
from support.prerequisites import REPO
from support.stack import ANY_PORT, Stack

pytestmark = [pytest.mark.docker, pytest.mark.slow]

FILES = ["llamacpp-webui.yml", "llamacpp-cpu.yml", "llamacpp-port.yml", "hub-on-host.yml"]
KEY_FILE = "/run/r1kit/keys/llamacpp_api_key"
ADMIN = {"name": "admin", "email": "admin@example.com", "password": "e2e-password-1"}


def engine_key(stack: Stack) -> str:
    return stack("exec", "-T", "llamacpp", "cat", KEY_FILE).stdout.strip()


@pytest.fixture(scope="module")
def images(llamacpp_cpu_image: str, model_init_image: str, open_webui_image: str) -> dict[str, str]:
    return {"llamacpp": llamacpp_cpu_image, "model-init": model_init_image, "open-webui": open_webui_image}


@pytest.fixture(scope="module")
def stack(images: dict[str, str], local_hub, tmp_path_factory: pytest.TempPathFactory):
    """compose in a copy of stacks/ (a fresh clone's: no .env there), with only non-secret settings in its environment."""
    from conftest import RUN

    folder = tmp_path_factory.mktemp("clone") / "stacks"
    shutil.copytree(REPO / "stacks", folder, ignore=shutil.ignore_patterns(".env"))
    shutil.copy2(REPO / "tests/e2e/hub-on-host.yml", folder / "hub-on-host.yml")
    env = {
        "PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"),
        "LLAMACPP_CPU_IMAGE": images["llamacpp"], "MODEL_INIT_IMAGE": images["model-init"], "OPEN_WEBUI_IMAGE": images["open-webui"],
        "HF_ENDPOINT": local_hub.url,
        "LLAMACPP_PORT": ANY_PORT, "WEBUI_PORT": ANY_PORT, "LLAMACPP_CTX_SIZE": "512", "LLAMACPP_THREADS": "2",
    }
    assert not any(k in env for k in ("WEBUI_SECRET_KEY", "LLAMACPP_API_KEY", "HF_TOKEN")) and not (folder / ".env").exists()
    with Stack(f"r1kit-test-{RUN}-first-run", [folder / f for f in FILES], env) as s:
        yield s


def up(stack: Stack, extra: dict[str, str] | None = None) -> None:
    stack("up", "-d", "--no-build", "--pull", "never", extra=extra)
    wait_until_healthy(f"{stack.url('llamacpp', 8080)}/health", timeout=180)
    base = webui(stack)
    deadline = time.monotonic() + 300
    while status(f"{base}/health") != 200:
        assert time.monotonic() < deadline, f"Open WebUI never answered /health\n{stack.logs('open-webui')}"
        time.sleep(2)


def webui(stack: Stack) -> str:
    return stack.url("open-webui", 8080)


def get(url: str, token: str) -> tuple[int, str]:
    out = subprocess.run(["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", "-H", f"Authorization: Bearer {token}", url], capture_output=True, text=True, check=True).stdout
    body, _, code = out.rpartition("\n")
    return int(code), body


def engine_accepts(stack: Stack, key: str) -> bool:
    return get(f"{stack.url('llamacpp', 8080)}/v1/models", key)[0] == 200


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
    key = engine_key(stack)
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
    assert engine_key(stack) == key and engine_accepts(stack, key)
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
        assert engine_key(stack) == mine["LLAMACPP_API_KEY"] and engine_accepts(stack, mine["LLAMACPP_API_KEY"])
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
