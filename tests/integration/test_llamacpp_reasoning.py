"""R1's thinking from the llama.cpp CPU image run with the stack's reasoning settings: a tiny `deepseek2` model with R1's
own chat template, whose every answer opens in a thinking block, answers with its thinking in `reasoning_content`
and nothing of it in `content`, streamed and not; and earlier thinking never reaches the prompt."""

from __future__ import annotations

import pytest
from python_on_whales import Container, DockerClient
from support.http import LOOPBACK_ANY_PORT, post_json, published_url, wait_until_healthy
from support.reasoning import stack_reasoning_env, stream_chat, write_r1_model

pytestmark = [pytest.mark.docker, pytest.mark.slow]

API_KEY = "test-key-not-secret"
QUESTION = {"role": "user", "content": "Count from one to ten in French"}
# Enough tokens that the thinking is text, few enough that two cores answer at once.
CHAT = {"messages": [QUESTION], "max_tokens": 24, "temperature": 1.0}


@pytest.fixture(scope="module")
def server(docker: DockerClient, llamacpp_cpu_image: str, tmp_path_factory: pytest.TempPathFactory):
    model = write_r1_model(tmp_path_factory.mktemp("r1-model"))
    container = docker.run(
        llamacpp_cpu_image,
        # --ignore-eos: an early end-of-sentence from the random model would leave nothing to check.
        ["-m", f"/models/{model.name}", "-c", "1024", "--ignore-eos", "--api-key", API_KEY, "-np", "1"],
        detach=True,
        envs=stack_reasoning_env(),
        publish=[(LOOPBACK_ANY_PORT, 8080)],
        volumes=[(str(model.parent), "/models", "ro")],
    )
    try:
        url = published_url(container)
        wait_until_healthy(f"{url}/health")
        yield container, url
    finally:
        container.remove(force=True)


def test_a_plain_answer_carries_the_thinking_in_reasoning_content(server: tuple[Container, str]):
    _, url = server
    message = post_json(f"{url}/v1/chat/completions", CHAT, token=API_KEY)["choices"][0]["message"]
    reasoning, content = message.get("reasoning_content") or "", message.get("content") or ""
    assert reasoning.strip(), f"no reasoning_content: {message}"
    # The template opened the block and the model never closed it: all of it is thinking, none of it answer.
    assert content == "", f"thinking leaked into the answer: {message}"


def test_a_streamed_answer_carries_the_thinking_in_reasoning_content(server: tuple[Container, str]):
    _, url = server
    answer = stream_chat(url, CHAT, API_KEY)
    assert answer.reasoning.strip(), answer
    assert answer.content == "", answer


def test_without_the_setting_the_thinking_is_answer_text(server: tuple[Container, str]):
    """The check can fail: the same request with reasoning_format none (llama-server's per-request override of the
    stack's setting) puts the thinking into the answer text, where Open WebUI would show it as the answer."""
    _, url = server
    message = post_json(f"{url}/v1/chat/completions", {**CHAT, "reasoning_format": "none"}, token=API_KEY)["choices"][0]["message"]
    assert (message.get("content") or "").strip() and not message.get("reasoning_content"), message


def test_earlier_thinking_never_reaches_the_prompt(server: tuple[Container, str]):
    """R1's template keeps only what follows `</think>` of an earlier answer and ignores a `reasoning_content`
    field (which Open WebUI sends back only to a connection whose provider is set to llama.cpp): the prompt
    llama-server renders holds neither; the new answer opens in a thinking block again."""
    _, url = server
    earlier = [QUESTION,
               {"role": "assistant", "content": "first-thinking</think>\n\nun deux trois", "reasoning_content": "second-thinking"},
               {"role": "user", "content": "And in German?"}]
    prompt = post_json(f"{url}/apply-template", {"messages": earlier}, token=API_KEY)["prompt"]
    assert "un deux trois" in prompt and "first-thinking" not in prompt and "second-thinking" not in prompt, prompt
    assert prompt.endswith("<｜User｜>And in German?<｜Assistant｜><think>\n"), prompt
