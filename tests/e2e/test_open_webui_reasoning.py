"""R1's thinking shown as reasoning in Open WebUI, in a real browser, from the llama.cpp CPU image run with the stack's
reasoning settings.

The model is a tiny random-weights `deepseek2` (DeepSeek-R1's architecture) carrying R1's own chat template, which
opens every answer in a thinking block: all it writes is thinking. A recording proxy stands between Open WebUI and
llama-server (as `llama`, the name Open WebUI is given), so the test reads what the engine answered and what it was
sent. Two turns: the first answer must show as Open WebUI's reasoning block, not as answer text; the second turn's
requests must carry none of the first turn's thinking (DeepSeek's guidance; open-webui#23339).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect
from python_on_whales import Container, DockerClient
from support import browser
from support.containers import wait_until_container_healthy
from support.open_webui import running_open_webui, sign_in, user_network
from support.prerequisites import REPO
from support.reasoning import (
    recorded_exchanges,
    stack_reasoning_env,
    streamed_answer,
    write_r1_model,
)
from support.tiny_gguf import vocabulary

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.browser]

API_KEY = "test-key-not-secret"
MODEL = "tiny-r1"
ADMIN = {"name": "Ada Admin", "email": "admin@example.com", "password": "correct-horse-battery"}
PROMPTS = ["Count from one to ten in French", "And now in German"]
SCREENSHOT = REPO / "docs" / "screenshots" / "open-webui-reasoning.png"
PROXY = Path(__file__).parents[1] / "support" / "recording_proxy.py"
WORD_BIAS = [arg for token_id, token in enumerate(vocabulary()[0]) if token.startswith("\u2581".encode())
             for arg in ("--logit-bias", f"{token_id}+4")]


@pytest.fixture(scope="module")
def network(docker: DockerClient):
    with user_network(docker, "r1kit-reasoning") as net:
        yield net


@pytest.fixture(scope="module")
def engine(docker: DockerClient, network, llamacpp_cpu_image: str, tmp_path_factory: pytest.TempPathFactory):
    model = write_r1_model(tmp_path_factory.mktemp("r1-model"))
    container = docker.run(
        llamacpp_cpu_image,
        # -n 48 and --ignore-eos: every answer is 48 tokens of thinking. Most of the random model's vocabulary is
        # single bytes; the biased word tokens make its thinking hold words the page must show (unbiased, a run
        # sometimes had fewer than three).
        ["-m", f"/models/{model.name}", "--alias", MODEL, "-c", "1024", "-n", "48", "--ignore-eos", *WORD_BIAS,
         "-np", "1", "--api-key", API_KEY],
        detach=True,
        envs=stack_reasoning_env(),
        name=f"{network.name}-engine",
        networks=[network],
        network_aliases=["engine"],
        volumes=[(str(model.parent), "/models", "ro")],
    )
    try:
        wait_until_container_healthy(container)
        yield container
    finally:
        container.remove(force=True)


@pytest.fixture(scope="module")
def proxy(docker: DockerClient, network, open_webui_image: str, engine: Container):
    """support/recording_proxy.py under the Open WebUI image's Python, answering as `llama` on the network."""
    container = docker.run(
        open_webui_image,
        ["python3", "/proxy/recording_proxy.py", "http://engine:8080", "8080"],
        detach=True,
        entrypoint="",
        name=f"{network.name}-llama",
        networks=[network],
        network_aliases=["llama"],
        # The file alone: its folder's http.py would shadow the standard library's.
        volumes=[(str(PROXY), "/proxy/recording_proxy.py", "ro")],
    )
    try:
        yield container
    finally:
        container.remove(force=True)


@pytest.fixture(scope="module")
def open_webui(docker: DockerClient, network, open_webui_image: str, proxy: Container):
    """Open WebUI configured as the llama.cpp stack configures it (stacks/shared/services.yml, llamacpp-webui.yml)."""
    with running_open_webui(docker, network, open_webui_image, API_KEY) as running:
        yield running


def chat_exchanges(docker: DockerClient, proxy: Container, streamed: int, timeout: float = 30) -> list[dict]:
    """The chat completions the engine received through the proxy, with its answers, once `streamed` of them were
    streamed ones (the proxy prints an exchange when its answer has ended, a moment after the page shows it)."""
    deadline = time.monotonic() + timeout
    while True:
        exchanges = [e for e in recorded_exchanges(docker.logs(proxy)) if e["path"].startswith("/v1/chat/completions")]
        if len([e for e in exchanges if json.loads(e["request"]).get("stream")]) >= streamed or time.monotonic() > deadline:
            return exchanges
        time.sleep(0.5)


def test_thinking_shows_as_reasoning_and_does_not_go_back(open_webui: tuple[Container, str], proxy: Container,
                                                          docker: DockerClient, browser_page: Page, tmp_path: Path):
    _, url = open_webui
    page = browser_page
    browser.sign_up_admin(page, url, ADMIN["name"], ADMIN["email"], ADMIN["password"])
    sign_in(url, ADMIN["email"], ADMIN["password"])
    browser.choose_model(page, MODEL)

    # Turn 1: the engine streams thinking only; Open WebUI shows it in its reasoning block, not as the answer.
    browser.send_prompt(page, PROMPTS[0])
    try:
        browser.wait_for_message_done(page)
        block = browser.reasoning_block(browser.last_answer(page))
        expect(block).to_be_visible()
        browser.open_reasoning(block)
    finally:
        shot = browser.screenshot(page, tmp_path / "open-webui-reasoning.png")
        print(f"screenshot: {shot}")
    if os.environ.get("SAVE_SCREENSHOTS") == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(shot, SCREENSHOT)

    first = chat_exchanges(docker, proxy, streamed=1)
    streamed = [e for e in first if json.loads(e["request"]).get("stream")]
    assert len(streamed) == 1, f"Open WebUI's chat did not stream: {[e['request'][:200] for e in first]}"
    answer = streamed_answer(streamed[0]["response"])
    assert len(answer.reasoning.strip()) >= 20 and answer.content == "", answer
    # The page renders the thinking as markdown (byte tokens and markup may change), so its words stand for it.
    words = re.findall(r"[A-Za-z0-9]{3,}", answer.reasoning)[:8]
    assert len(words) >= 3, answer
    shown_reasoning, shown_answer = block.inner_text(), browser.answer_text(browser.last_answer(page))
    assert all(w in shown_reasoning for w in words), f"the reasoning block does not show the thinking {words}: {shown_reasoning!r}"
    assert shown_answer.strip() == "", f"the answer shows text the engine did not send as answer: {shown_answer!r}"

    # Turn 2: nothing the engine receives from now on carries the first thinking.
    browser.send_prompt(page, PROMPTS[1])
    browser.wait_for_message_done(page)
    later = chat_exchanges(docker, proxy, streamed=2)[len(first):]
    turn2 = [e for e in later if json.loads(e["request"]).get("stream")]
    assert len(turn2) == 1, [e["request"][:200] for e in later]
    messages = json.loads(turn2[0]["request"])["messages"]
    # The history went back: the first question (its answer, empty but for the thinking, Open WebUI leaves out).
    assert [m["content"] for m in messages if m["role"] == "user"][-2:] == PROMPTS, messages
    thinking = normalized(answer.reasoning)[:40]
    for exchange in later:  # title, tags and follow-up requests included
        sent = json.loads(exchange["request"])
        assert not any(thinking in normalized(text) for text in strings(sent)), f"earlier thinking sent back: {exchange['request'][:2000]}"
        for message in sent.get("messages", []):
            assert not {"reasoning_content", "reasoning", "thinking"} & message.keys(), message


def normalized(text: str) -> str:
    return " ".join(text.split())


def strings(value: object) -> list[str]:
    """Every string in a decoded JSON value."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return []
