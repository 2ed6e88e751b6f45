"""R1's thinking through llama-server, for the reasoning tests: the stack's own llama.cpp reasoning settings, a tiny
`deepseek2` model carrying R1's chat template, and readers for what the engine answered and received.

The settings are read from stacks/llamacpp-webui.yml as compose resolves it, so the tests run the engine as the stack
does (docs/reasoning.md says why each one is there).
"""

from __future__ import annotations

import json
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from support.compose import compose
from support.tiny_gguf import R1_CHAT_TEMPLATE, write_tiny_deepseek2

# The llama-server variables of the stack that decide where R1's thinking goes: --jinja and --reasoning-format.
REASONING_SETTINGS = ("LLAMA_ARG_JINJA", "LLAMA_ARG_THINK")


def stack_reasoning_env() -> dict[str, str]:
    """The stack's reasoning settings for llama-server, as `docker compose config` resolves them with no .env."""
    cfg = json.loads(compose(["llamacpp-webui.yml"], "config", "--format", "json").stdout)
    env = cfg["services"]["llamacpp"]["environment"]
    missing = [key for key in REASONING_SETTINGS if not env.get(key)]
    assert not missing, f"stacks/llamacpp-webui.yml sets no {', '.join(missing)} for llama-server"
    return {key: env[key] for key in REASONING_SETTINGS}


def write_r1_model(folder: Path) -> Path:
    """A tiny random-weights `deepseek2` GGUF with R1's chat template in its metadata, readable by the images'
    non-root user when `folder` is mounted."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)
    model = write_tiny_deepseek2(folder / "tiny-r1.gguf", chat_template=R1_CHAT_TEMPLATE)
    model.chmod(0o644)
    return model


@dataclass(frozen=True)
class Answer:
    reasoning: str
    content: str


def sse_events(text: str) -> Iterator[dict[str, Any]]:
    """The JSON events of a streamed answer (`data: {...}` lines; `data: [DONE]` ends it)."""
    for line in text.splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            yield json.loads(line[len("data: "):])


def streamed_answer(text: str) -> Answer:
    """What a streamed chat answer carried, its deltas joined: `reasoning_content` apart from `content`."""
    deltas = [choice.get("delta", {}) for event in sse_events(text) for choice in event.get("choices", [])]
    return Answer(reasoning="".join(d.get("reasoning_content") or "" for d in deltas),
                  content="".join(d.get("content") or "" for d in deltas))


def stream_chat(url: str, body: dict[str, Any], token: str, timeout: float = 120) -> Answer:
    """POST a chat completion with stream on and read the whole stream."""
    req = urllib.request.Request(f"{url}/v1/chat/completions", data=json.dumps({**body, "stream": True}).encode(),
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return streamed_answer(r.read().decode())


def recorded_exchanges(proxy_log: str) -> list[dict[str, Any]]:
    """The exchanges support/recording_proxy.py printed, in order."""
    return [json.loads(line) for line in proxy_log.splitlines() if line.startswith("{")]
