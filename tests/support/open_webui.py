"""Open WebUI for the tests: a stand-in image built from PyPI, and the running container's HTTP API.

Upstream's image (ghcr.io/open-webui/open-webui) cannot be pulled here, so tests/images/open-webui/Dockerfile
installs the same release from PyPI with the CPU torch wheel that lies on the machine. The image keeps
upstream's port, data folder, health route and environment variables, so stacks run it through
OPEN_WEBUI_IMAGE unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from python_on_whales import Container, DockerClient, Network

from builder.images.build import host_ca_bundle
from builder.images.docker import Backend
from support.http import LOOPBACK_ANY_PORT, post_json, published_url, wait_until_healthy
from support.prerequisites import REPO

OPEN_WEBUI_IMAGE = "r1kit-test/open-webui"  # the suite tags it per run
OPEN_WEBUI_VERSION = "0.12.4"
DOCKERFILE_FOLDER = REPO / "tests" / "images" / "open-webui"
# open-webui pulls torch through sentence-transformers; PyPI's default torch is the multi-GB CUDA build.
TORCH_WHEEL_GLOB = "torch-2.13.0+cpu-cp311-cp311-*.whl"
# Where the machines keep it; TORCH_WHEEL_DIR names another folder (the CPU wheels live on download.pytorch.org).
WHEEL_FOLDERS = (Path("/opt/wheels"), REPO / ".cache" / "wheels")


def cpu_torch_wheel() -> Path:
    """The CPU torch wheel for python 3.11, the image's python."""
    folders = [Path(os.environ["TORCH_WHEEL_DIR"])] if os.environ.get("TORCH_WHEEL_DIR") else list(WHEEL_FOLDERS)
    for folder in folders:
        found = sorted(folder.glob(TORCH_WHEEL_GLOB))
        if found:
            return found[-1]
    raise FileNotFoundError(f"no {TORCH_WHEEL_GLOB} in {', '.join(map(str, folders))}: download it from "
                            "https://download.pytorch.org/whl/cpu into one of them (or set TORCH_WHEEL_DIR)")


def build_image(backend: Backend, base_image: str, tag: str, log: Path | None = None) -> float:
    """Build the stand-in image with BuildKit (it needs RUN --mount); returns the seconds the build took.

    The build log goes to `log` (or is dropped): a cold build prints thousands of pip lines."""
    with tempfile.TemporaryDirectory(prefix="open-webui-context-") as tmp:
        context = Path(tmp)
        shutil.copy2(DOCKERFILE_FOLDER / "Dockerfile", context / "Dockerfile")
        (context / "wheels").mkdir()
        wheel = cpu_torch_wheel()
        # A hard link costs nothing where /tmp and the wheel share a file system; else a copy.
        try:
            os.link(wheel, context / "wheels" / wheel.name)
        except OSError:
            shutil.copy2(wheel, context / "wheels" / wheel.name)
        (context / "certs").mkdir()
        shutil.copy2(host_ca_bundle(), context / "certs" / "ca-certificates.crt")
        cmd = [*backend.build_command, "--progress", "plain", "--tag", tag,
               "--build-arg", f"BASE_IMAGE={base_image}", "--build-arg", f"OPEN_WEBUI_VERSION={OPEN_WEBUI_VERSION}"]
        if backend.kind == "buildx":
            cmd.append("--load")
        started = time.monotonic()
        with open(log or os.devnull, "w") as out:
            done = subprocess.run([*cmd, str(context)], env={**os.environ, **backend.env}, stdout=out, stderr=subprocess.STDOUT, check=False)
        if done.returncode != 0:
            tail = log.read_text()[-4000:] if log else ""
            raise RuntimeError(f"building {tag} failed (exit {done.returncode}):\n{tail}")
        return time.monotonic() - started


def get_json(url: str, token: str | None = None, timeout: float = 30) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as r:
        return json.loads(r.read())


def sign_in(url: str, email: str, password: str) -> str:
    """An API token for an existing account (Open WebUI's own sign-in route)."""
    return post_json(f"{url}/api/v1/auths/signin", {"email": email, "password": password})["token"]


def model_ids(url: str, token: str) -> list[str]:
    """The models Open WebUI offers, as its chat page lists them (GET /api/models)."""
    return [m["id"] for m in get_json(f"{url}/api/models", token)["data"]]


def newest_chat_messages(url: str, token: str) -> list[dict[str, Any]]:
    """The messages of the account's newest chat as Open WebUI stored them (role, content, model, error, ...)."""
    chats = get_json(f"{url}/api/v1/chats/", token)
    assert chats, "the account has no chat"
    chat = get_json(f"{url}/api/v1/chats/{chats[0]['id']}", token)["chat"]
    return list(chat["history"]["messages"].values())


@contextmanager
def running_open_webui(docker: DockerClient, network: Network, image: str, api_key: str) -> Iterator[tuple[Container, str]]:
    """Open WebUI on `network`, configured as a stack configures upstream's image, reaching an OpenAI-compatible engine
    named `llama` on that network; yields the container and its URL on 127.0.0.1."""
    container = docker.run(
        image,
        detach=True,
        name=f"{network.name}-open-webui",
        networks=[network],
        publish=[(LOOPBACK_ANY_PORT, 8080)],
        envs={
            "OPENAI_API_BASE_URL": "http://llama:8080/v1",
            "OPENAI_API_KEY": api_key,
            "ENABLE_OLLAMA_API": "False",
            "WEBUI_SECRET_KEY": "test-secret-not-secret",
        },
    )
    try:
        # The first start runs migrations and imports torch: about a minute on two cores.
        url = published_url(container)
        wait_until_healthy(f"{url}/health", timeout=300)
        yield container, url
    finally:
        # volumes=True: the anonymous volume the image declares for /app/backend/data goes too.
        container.remove(force=True, volumes=True)


@contextmanager
def user_network(docker: DockerClient, prefix: str) -> Iterator[Network]:
    """A user-defined network, as a compose stack has: containers reach each other by name."""
    net = docker.network.create(f"{prefix}-{uuid.uuid4().hex[:8]}")
    try:
        yield net
    finally:
        docker.network.remove(net)
