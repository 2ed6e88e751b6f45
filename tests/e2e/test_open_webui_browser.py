"""Open WebUI in a real browser, in front of the llama.cpp CPU image serving a tiny model.

Both containers share a user-defined network, as in a compose stack: Open WebUI reaches llama-server by name,
and only Open WebUI's port is published, on 127.0.0.1. The model has random weights, so its answer is nonsense;
the test checks that an answer made by that model appears in the chat.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from playwright.sync_api import Page
from python_on_whales import Container, DockerClient
from support import browser
from support.containers import wait_until_container_healthy
from support.open_webui import (
    get_json,
    model_ids,
    newest_chat_messages,
    running_open_webui,
    sign_in,
    user_network,
)
from support.prerequisites import REPO

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.browser]

API_KEY = "test-key-not-secret"
MODEL = "tiny-llama"  # llama-server's --alias: the model id Open WebUI lists
ADMIN = {"name": "Ada Admin", "email": "admin@example.com", "password": "correct-horse-battery"}
PROMPT = "Count from one to ten in French"
SCREENSHOT = REPO / "docs" / "screenshots" / "open-webui-chat.png"


@pytest.fixture(scope="module")
def network(docker: DockerClient):
    with user_network(docker, "r1kit-webui") as net:
        yield net


@pytest.fixture(scope="module")
def llama_server(docker: DockerClient, network, llamacpp_cpu_image: str, tiny_model: Path):
    container = docker.run(
        llamacpp_cpu_image,
        ["-m", f"/models/{tiny_model.name}", "--alias", MODEL, "-c", "512", "-np", "1", "--api-key", API_KEY],
        detach=True,
        name=f"{network.name}-llama",
        networks=[network],
        network_aliases=["llama"],
        volumes=[(str(tiny_model.parent), "/models", "ro")],
    )
    try:
        wait_until_container_healthy(container)
        yield container
    finally:
        container.remove(force=True)


@pytest.fixture(scope="module")
def open_webui(docker: DockerClient, network, open_webui_image: str, llama_server: Container):
    """Open WebUI configured as a stack configures upstream's image; yields its URL on 127.0.0.1."""
    with running_open_webui(docker, network, open_webui_image, API_KEY) as running:
        yield running


def test_image_keeps_upstreams_contract(open_webui: tuple[Container, str], docker: DockerClient):
    container, url = open_webui
    assert get_json(f"{url}/health") == {"status": True}
    assert docker.execute(container, ["id", "-u"]).strip() == "10001"
    assert "/app/backend/data" in container.config.volumes
    docker.execute(container, ["test", "-s", "/app/backend/data/webui.db"])  # fails the test where the database is elsewhere
    # Stacks wait on the image's own HEALTHCHECK (depends_on: condition: service_healthy).
    wait_until_container_healthy(container, timeout=60)


def test_admin_chats_with_the_stack_model_in_the_browser(open_webui: tuple[Container, str], browser_page: Page, tmp_path: Path):
    _, url = open_webui
    page = browser_page

    browser.sign_up_admin(page, url, ADMIN["name"], ADMIN["email"], ADMIN["password"])
    # The account the browser made works for the API, which lists llama-server's model.
    token = sign_in(url, ADMIN["email"], ADMIN["password"])
    assert MODEL in model_ids(url, token)

    browser.choose_model(page, MODEL)
    browser.send_prompt(page, PROMPT)
    try:
        answer = browser.wait_for_answer(page)
    finally:  # the screen as it ended, answer or not, for whoever reads the failure
        shot = browser.screenshot(page, tmp_path / "open-webui-chat.png")
        print(f"screenshot: {shot}")
    if os.environ.get("SAVE_SCREENSHOTS") == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(shot, SCREENSHOT)

    assert answer.strip(), f"empty answer (screenshot: {shot})"
    assert browser.answering_model(page) == MODEL
    # What the chat stored: the prompt, then the model's own answer (not an error Open WebUI wrote itself).
    user, assistant = newest_chat_messages(url, token)[-2:]
    assert (user["role"], user["content"]) == ("user", PROMPT)
    assert assistant["role"] == "assistant" and assistant["model"] == MODEL and not assistant.get("error")
    assert assistant["content"].strip()
