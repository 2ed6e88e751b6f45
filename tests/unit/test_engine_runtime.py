"""Each engine's runtime facts (images/<engine>/runtime.yaml) against the stack that runs it: the port Open WebUI
and the port override use, the health path the healthcheck probes, the key file the engine and Open WebUI share,
and every setting reaching the engine as its flag. A new engine folder with a runtime.yaml and a stack is checked
here without a test edit. The flags themselves are checked against the engines: llama-server's --help in
tests/integration/test_llamacpp_image.py, vLLM's parser in tests/integration/test_slurm_vllm_args.py."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import urlparse

import httpx2
import pytest
from support.compose import STACKS, compose

from builder.bench.measure import engine_tokens
from builder.images import runtime

RUNTIMES = runtime.load_all()
OPEN_WEBUI_URL = ("OPENAI_API_BASE_URL", "OLLAMA_BASE_URL")


def sentinel(key: str) -> str:
    return f"r1kit-sentinel-{key.lower()}"


def stack_files(engine: str) -> list[str]:
    files = [f"{engine}-webui.yml"]
    assert (STACKS / files[0]).is_file(), f"images/{engine}/runtime.yaml has no stack: write stacks/{files[0]}"
    return files + [f for f in (f"{engine}-port.yml",) if (STACKS / f).is_file()]


@pytest.fixture(scope="module", params=sorted(RUNTIMES))
def resolved(request) -> tuple[runtime.Runtime, dict]:
    """The engine's runtime facts and its stack as compose resolves it, each setting set to a value of its own."""
    facts = RUNTIMES[request.param]
    env = {key: sentinel(key) for key in facts.settings}
    return facts, json.loads(compose(stack_files(facts.engine), "config", "--format", "json", env=env).stdout)["services"]


def words(service: dict) -> list[str]:
    """What a service hands its process: its environment's values and its command."""
    command = service.get("command") or []
    return [str(v) for v in (service.get("environment") or {}).values() if v is not None] + (
        command.split() if isinstance(command, str) else [str(c) for c in command])


def test_the_engine_listens_where_open_webui_and_the_port_override_look(resolved):
    facts, services = resolved
    engine = services[facts.engine]
    assert str(facts.port) in [str(p) for p in engine.get("expose", [])], engine.get("expose")
    if engine.get("ports"):
        assert [p["target"] for p in engine["ports"]] == [facts.port]
    (url,) = [v for k, v in services["open-webui"]["environment"].items() if k in OPEN_WEBUI_URL]
    assert (urlparse(url).hostname, urlparse(url).port) == (facts.engine, facts.port), url


def test_an_http_healthcheck_probes_the_engines_health_path(resolved):
    facts, services = resolved
    probe = " ".join(services[facts.engine]["healthcheck"]["test"])
    if "http" in probe:
        assert f"http://127.0.0.1:{facts.port}{facts.health} " in probe + " ", probe
    else:  # Ollama's image has no curl: its CLI asks the server; runtime.yaml's health path is for outside clients
        assert facts.api_key_file is None and facts.engine == "ollama", probe


def test_the_engine_and_open_webui_read_the_same_key_file(resolved):
    facts, services = resolved
    engine_env = services[facts.engine].get("environment") or {}
    key_vars = sorted(k for k in engine_env if k.endswith("API_KEY_FILE"))
    webui_key = services["open-webui"]["environment"].get("R1KIT_OPENAI_API_KEY_FILE")
    if facts.api_key_file is None:
        assert key_vars == [] and webui_key is None
        return
    assert key_vars == [facts.api_key_file]
    assert engine_env[facts.api_key_file].startswith("/run/r1kit/keys/") and webui_key == engine_env[facts.api_key_file]


def test_every_setting_reaches_the_stack_as_its_flag(resolved):
    """A setting plan --write puts in stacks/.env must change what the engine (or model-init, for the model) gets;
    one given on the command line must sit beside its flag."""
    facts, services = resolved
    engine = services[facts.engine]
    command = [str(c) for c in engine.get("command") or []]
    for key, flag in facts.settings.items():
        value = sentinel(key)
        everywhere = [w for s in services.values() for w in words(s)]
        assert any(value in w for w in everywhere), f"{key} reaches no service of {facts.engine}'s stack"
        if flag and flag.startswith("-") and value in " ".join(command):
            at = next(i for i, c in enumerate(command) if value in c)
            assert command[at] == f"{flag}={value}" or (at and command[at - 1] == flag), (key, command[at - 1:at + 1])
        elif flag == "":
            assert value in command, f"{key} is a whole flag of {facts.engine}'s command: {command}"
        elif flag and flag.startswith("-"):
            assert value in words(engine), f"{key} does not reach the {facts.engine} service"


def test_bench_reads_every_engines_output_token_counter():
    """Each engine's counter, as its /metrics writes it (with labels, several series), is what bench counts."""
    counters = runtime.output_token_counters()
    assert set(counters) == {r.metrics["output_tokens"] for r in RUNTIMES.values() if "output_tokens" in r.metrics}
    for name in counters:
        text = f'# TYPE {name} counter\n{name}{{model_name="a"}} 40\n{name}{{model_name="b"}} 2.0\nother_total 7\n'
        transport = httpx2.MockTransport(lambda request, text=text: httpx2.Response(200, text=text))

        async def read() -> float | None:
            async with httpx2.AsyncClient(transport=transport, base_url="http://engine") as client:
                return (await engine_tokens(client, counters)).tokens

        assert asyncio.run(read()) == 42, name


def test_a_broken_runtime_file_is_one_line_naming_it(tmp_path):
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / runtime.FILE).write_text("port: 0\nhealth: health\napi_key_file: null\nmetrics: {}\nsettings: {}\n")
    with pytest.raises(runtime.UserError, match=r"toy/runtime.yaml: port must be a port number"):
        runtime.load("toy", tmp_path)
    with pytest.raises(runtime.UserError, match=r"no runtime facts for engine 'nosuch'"):
        runtime.load("nosuch", tmp_path)
