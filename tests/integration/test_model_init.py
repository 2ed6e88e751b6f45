"""The model-init image in the real Docker engine: it fetches from the local Hub into a volume, merges shards, and
the llama.cpp image (uid 10001) reads and serves what it wrote."""

from __future__ import annotations

import time
import uuid
from typing import Iterator

import pytest
from python_on_whales import DockerClient
from python_on_whales.exceptions import DockerException

from support.hub import R1_IQ1_S
from support.http import LOOPBACK_ANY_PORT, post_json, published_url, wait_until_healthy
from support.local_hub import LocalHub

pytestmark = [pytest.mark.docker, pytest.mark.slow]

FIRST_SHARD = f"/models/{R1_IQ1_S}/{R1_IQ1_S}-00001-of-00003.gguf"


@pytest.fixture(scope="module")
def volume(docker: DockerClient) -> Iterator[str]:
    name = f"r1kit-test-models-{uuid.uuid4().hex[:8]}"
    docker.volume.create(name)
    try:
        yield name
    finally:
        docker.volume.remove(name)


def model_init(docker: DockerClient, image: str, hub: LocalHub, volume: str, *args: str) -> tuple[int, str, str]:
    """Run the image like a stack does (host network: it reaches the local Hub on 127.0.0.1); exit code, stdout, stderr."""
    container = docker.run(image, list(args), detach=True, networks=["host"], envs={"HF_ENDPOINT": hub.url}, volumes=[(volume, "/models")])
    try:
        code = docker.container.wait(container)
        out = "".join(part.decode() for source, part in docker.container.logs(container, stream=True) if source == "stdout")
        err = "".join(part.decode() for source, part in docker.container.logs(container, stream=True) if source == "stderr")
        return code, out, err
    finally:
        container.remove(force=True)


@pytest.fixture(scope="module")
def fetched(docker: DockerClient, model_init_image: str, local_hub: LocalHub, volume: str) -> tuple[str, str]:
    code, out, err = model_init(docker, model_init_image, local_hub, volume, "r1-671b-ud-iq1_s", "--merge", "/models/merged/r1.gguf",
                                "--modelfile", "/models/merged/Modelfile", "--path-file", "/models/model.path")
    assert code == 0, err
    return out, err


def test_it_prints_the_merged_path_and_logs_plain_progress(fetched: tuple[str, str]):
    out, err = fetched
    assert out == "/models/merged/r1.gguf\n"
    assert f"download: 1/3 {R1_IQ1_S}/" in err and "merging 3 shards" in err


def in_llamacpp(docker: DockerClient, image: str, volume: str, script: str) -> str:
    return str(docker.run(image, ["-c", script], entrypoint="/bin/sh", remove=True, volumes=[(volume, "/models", "ro")]))


def test_the_engine_user_reads_everything_it_wrote(docker: DockerClient, llamacpp_cpu_image: str, volume: str, fetched):
    out = in_llamacpp(docker, llamacpp_cpu_image, volume, "id -u; cat /models/model.path; find /models ! -readable; head -c 4 /models/merged/r1.gguf; echo; "
                      "grep '^FROM' /models/merged/Modelfile")
    assert out.splitlines() == ["10001", "/models/merged/r1.gguf", "GGUF", "FROM ./r1.gguf"]


def test_a_second_run_changes_nothing(docker: DockerClient, model_init_image: str, local_hub: LocalHub, volume: str, llamacpp_cpu_image: str, fetched):
    listing = "find /models -type f -printf '%p %s %T@\\n' | sort"
    before = in_llamacpp(docker, llamacpp_cpu_image, volume, listing)
    code, out, err = model_init(docker, model_init_image, local_hub, volume, "r1-671b-ud-iq1_s", "--merge", "/models/merged/r1.gguf")
    assert code == 0 and out == "/models/merged/r1.gguf\n" and "already downloaded" in err, err
    assert in_llamacpp(docker, llamacpp_cpu_image, volume, listing) == before


def test_an_error_is_one_line_and_exit_2(docker: DockerClient, model_init_image: str, local_hub: LocalHub, volume: str):
    code, out, err = model_init(docker, model_init_image, local_hub, volume, "r1-671b-ud-iq9")
    assert code == 2 and out == "" and err.startswith("error: unknown model 'r1-671b-ud-iq9'") and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("model", ["/models/merged/r1.gguf", FIRST_SHARD], ids=["merged", "first-shard"])
def test_llama_server_serves_what_model_init_wrote(docker: DockerClient, llamacpp_cpu_image: str, volume: str, fetched, model: str):
    container = docker.run(llamacpp_cpu_image, ["-m", model, "-c", "512", "-np", "1"], detach=True,
                           publish=[(LOOPBACK_ANY_PORT, 8080)], volumes=[(volume, "/models", "ro")])
    try:
        url = published_url(container)
        wait_until_healthy(f"{url}/health")
        answer = post_json(f"{url}/completion", {"prompt": "hello world", "n_predict": 8})
        assert answer["tokens_predicted"] > 0
    except (TimeoutError, DockerException):
        pytest.fail(docker.container.logs(container)[-3000:])
    finally:
        container.remove(force=True)


def test_docker_stop_ends_it_promptly_and_the_next_run_resumes(docker: DockerClient, model_init_image: str, local_hub: LocalHub):
    """builder is PID 1 in the container (no init): `docker stop` sends SIGTERM, which the kernel drops for a PID 1
    without a handler, and docker kills it after 10 s. It must end at once with 143, its partial file kept."""
    name = f"r1kit-test-models-i15-{uuid.uuid4().hex[:8]}"
    docker.volume.create(name)
    first = f"{R1_IQ1_S}/{R1_IQ1_S}-00001-of-00003.gguf"
    try:
        with local_hub.faulty(throttle=40_000):  # about 5 s for the first shard
            container = docker.run(model_init_image, ["r1-671b-ud-iq1_s"], detach=True, networks=["host"],
                                   envs={"HF_ENDPOINT": local_hub.url}, volumes=[(name, "/models")], name=f"r1kit-i15-stop-{uuid.uuid4().hex[:8]}")
            try:
                deadline = time.monotonic() + 60
                while not local_hub.requests_for(first):
                    assert time.monotonic() < deadline, docker.container.logs(container)
                    time.sleep(0.1)
                time.sleep(2)  # some 80 kB into the first shard
                started = time.monotonic()
                docker.container.stop(container, time=10)
                took = time.monotonic() - started
                state = docker.container.inspect(container).state
                logs = docker.container.logs(container)
            finally:
                container.remove(force=True)
        assert took < 3, f"docker stop took {took:.1f} s"
        assert state.exit_code == 143, logs
        assert "stopped by SIGTERM" in logs.strip().splitlines()[-1], logs
        code, out, err = model_init(docker, model_init_image, local_hub, name, "r1-671b-ud-iq1_s")
        assert code == 0 and out == f"/models/{first}\n", err
        ranges = [r.range for r in local_hub.requests_for(first) if r.range]
        assert ranges and int(ranges[-1].removeprefix("bytes=").split("-")[0]) > 0  # resumed, not restarted
    finally:
        docker.volume.remove(name)
