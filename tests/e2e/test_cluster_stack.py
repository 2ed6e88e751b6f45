"""A real two-node Ray cluster from the stack files: stacks/cluster-head.yml and stacks/cluster-worker.yml (with
cluster-shared-models.yml), as two compose projects, each node a container of the vLLM image's `ray` stage (its Ray
layer and the launcher, without vLLM's 9 GB). The nodes share a bridge network with a fixed IP each
(tests/e2e/cluster-on-bridge.yml), standing in for separate machines' host networks.

What runs for real: secrets-init making the Ray token, the launcher's node checks, `ray start --head` and
`ray start --address` with token auth, the head's wait for both nodes, a Ray task on every node (the worker's
included), and the `vllm serve` arguments the head would exec, read back and parsed by vLLM's own parser. Stand-ins:
R1KIT_GPU_COUNT declares one GPU per node (Ray counts it as a resource; no GPU is used), and a `vllm` on PATH records
its arguments instead of loading a model."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import time
from pathlib import Path

import pytest
from support.builder import RUN
from support.prerequisites import REPO
from support.stack import Stack

pytestmark = [pytest.mark.docker, pytest.mark.slow]

STACKS = REPO / "stacks"
HEAD_FILES = [STACKS / "cluster-head.yml", STACKS / "cluster-shared-models.yml", REPO / "tests/e2e/cluster-on-bridge.yml"]
WORKER_FILES = [STACKS / "cluster-worker.yml", STACKS / "cluster-shared-models.yml", REPO / "tests/e2e/cluster-on-bridge.yml"]
MODEL = "r1-0528-fp8"  # the cluster stacks' default VLLM_MODEL (R1-0528)
# R1's attention shape (MLA) and layer count, from its config.json; no weights.
R1_CONFIG = {"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "num_hidden_layers": 61,
             "hidden_size": 7168, "num_attention_heads": 128, "kv_lora_rank": 512, "qk_rope_head_dim": 64,
             "n_routed_experts": 256, "n_shared_experts": 1, "torch_dtype": "bfloat16"}
STUB = """#!/bin/sh
# Stand-in for vLLM: the arguments, one per line, then stay up like a server (the cluster stays joined).
printf '%s\\n' "$@" > /r1kit-test/record/.args.tmp
mv /r1kit-test/record/.args.tmp /r1kit-test/record/args
exec sleep infinity
"""


@pytest.fixture(scope="module")
def network() -> tuple[str, str]:
    """A bridge network of its own (a random /24 of 10.x, retried where one is taken) and its prefix."""
    from conftest import RUN

    name = f"r1kit-test-{RUN}-cluster"
    for _ in range(20):
        prefix = f"10.{secrets.randbelow(200) + 20}.{secrets.randbelow(250)}"
        made = subprocess.run(["docker", "network", "create", "--subnet", f"{prefix}.0/24", name], capture_output=True, text=True)
        if made.returncode == 0:
            break
    else:
        pytest.fail(f"no free subnet for the cluster network: {made.stderr}")
    yield name, prefix
    subprocess.run(["docker", "network", "rm", name], capture_output=True)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    top = tmp_path_factory.mktemp("cluster")
    (top / "stub").mkdir()
    (top / "stub" / "vllm").write_text(STUB)
    (top / "stub" / "vllm").chmod(0o755)
    (top / "record").mkdir()
    (top / "record").chmod(0o777)  # the nodes run as uid 10001
    model = top / "models" / MODEL
    model.mkdir(parents=True)
    (model / "config.json").write_text(json.dumps(R1_CONFIG))
    for p in (top, top / "models", model, model / "config.json"):
        p.chmod(p.stat().st_mode | 0o055)
    return top


# Every listening TCP socket in a node's container, with the program that holds it: /proc/net/tcp{,6} joined to the
# socket inodes of each process's open files (the launcher runs as one uid, so every Ray process is readable).
LISTENERS = r"""
import json, os, socket, struct
owners = {}
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        name = os.path.basename(open(f"/proc/{pid}/cmdline").read().split("\0")[0])
        title = open(f"/proc/{pid}/comm").read().strip()
        for fd in os.listdir(f"/proc/{pid}/fd"):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:["):
                owners[link[8:-1]] = name if not title.startswith("ray::") else title
    except OSError:
        pass
out = []
for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
    for line in open(table).read().splitlines()[1:]:
        f = line.split()
        if f[3] != "0A":  # LISTEN
            continue
        addr, port = f[1].split(":")
        raw = bytes.fromhex(addr)
        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
        out.append([socket.inet_ntop(family, raw), int(port, 16), owners.get(f[9], "?")])
print(json.dumps(out))
"""
# Ray 2.60's gRPC servers that listen on every interface whatever --node-ip-address says (no option binds them:
# see docs/stacks.md, "Routes open without the key"): the GCS, the raylet (node manager and object manager) and the workers'.
WILDCARD_OK = ("gcs_server", "raylet", "ray::")


def listeners(stack: Stack) -> list[tuple[str, int, str]]:
    out = stack("exec", "-T", "vllm", "python3", "-c", LISTENERS).stdout.strip().splitlines()[-1]
    return [tuple(x) for x in json.loads(out)]


def node(role: str, files: list[Path], ip: str, base: dict[str, str], **env: str) -> Stack:
    return Stack(f"r1kit-test-{RUN}-{role}", files, {**base, "R1KIT_TEST_NODE_IP": ip, "R1KIT_TEST_HOSTNAME": f"node-{role}", **env})


@pytest.fixture(scope="module")
def cluster(vllm_ray_image: str, model_init_image: str, network: tuple[str, str], folder: Path):
    name, prefix = network
    base = {
        "PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"),
        "VLLM_IMAGE": vllm_ray_image, "MODEL_INIT_IMAGE": model_init_image, "OPEN_WEBUI_IMAGE": "r1kit-test/open-webui:never-started",
        "R1KIT_TEST_NETWORK": name, "R1KIT_TEST_DIR": str(folder), "VLLM_MODELS_DIR": str(folder / "models"),
        "R1KIT_NODES": "2", "R1KIT_GPUS_PER_NODE": "1", "VLLM_TENSOR_PARALLEL_SIZE": "1", "VLLM_PIPELINE_PARALLEL_SIZE": "2",
        "VLLM_SHM_SIZE": "2g", "R1KIT_WAIT_TIMEOUT": "240",
    }
    # Every node made here is taken down (and checked to leave nothing) when the module ends, the workers first.
    with contextlib.ExitStack() as nodes:
        head = nodes.enter_context(node("head", HEAD_FILES, f"{prefix}.10", base, R1KIT_EXPECT_NODES="node-head,node-worker"))

        def worker(token: str | None, role: str = "worker") -> Stack:
            extra = {"R1KIT_HEAD_ADDRESS": f"{prefix}.10", **({"RAY_AUTH_TOKEN": token} if token is not None else {})}
            return nodes.enter_context(node(role, WORKER_FILES, f"{prefix}.11", base, **extra))

        yield head, worker, folder


def exit_status(stack: Stack, service: str, timeout: float = 300) -> int:
    container = stack("ps", "-a", "-q", service).stdout.split()[0]
    return int(subprocess.run(["docker", "wait", container], capture_output=True, text=True, check=True, timeout=timeout).stdout)


def last_error(log: str) -> str:
    lines = [line.split("|", 1)[-1].strip() for line in log.splitlines()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, log[-3000:]
    return errors[0]


def test_two_nodes_join_and_the_head_serves_with_ray(cluster, vllm_parse, network):
    head, worker, folder = cluster
    _, prefix = network
    head("up", "-d", "--no-build", "--pull", "never", "vllm")
    # The documented way to read the head's generated token, for the workers.
    token = head("exec", "-T", "vllm", "cat", "/run/r1kit/keys/ray_auth_token").stdout.strip()
    assert len(token) == 64

    # A worker without the token stops in secrets-init with one line; one with a wrong token is refused by the head.
    unset = worker(None, "worker-unset")
    assert unset("up", "-d", "--no-build", "--pull", "never", "vllm", check=False).returncode != 0
    assert "error: ray_auth_token is not set" in last_error(unset.logs("secrets-init"))
    wrong = worker("0" * 64, "worker-wrong")
    wrong("up", "-d", "--no-build", "--pull", "never", "vllm")
    assert exit_status(wrong, "vllm") == 2
    assert "refused this node's Ray auth token" in last_error(wrong.logs("vllm"))
    wrong("down", "-v")

    good = worker(token)
    good("up", "-d", "--no-build", "--pull", "never", "vllm")
    record = folder / "record" / "args"
    deadline = time.monotonic() + 240
    while not record.exists() and time.monotonic() < deadline:
        assert head("ps", "-q", "--status", "running", "vllm").stdout.strip(), head.logs("vllm")
        time.sleep(2)
    log = head.logs("vllm")
    assert record.exists(), log

    assert "all 2 nodes joined: " in log and "node-head (" in log and "node-worker (" in log, log
    ran = next(line for line in log.splitlines() if "a task ran on every node" in line)
    assert "node-worker" in ran and "node-head" in ran, ran
    nodes = json.loads(head("exec", "-T", "vllm", "r1kit-cluster", "status").stdout.strip().splitlines()[-1])
    assert sorted((n["host"], n["gpus"]) for n in nodes) == [("node-head", 1.0), ("node-worker", 1.0)]

    # Which interface each port listens on, on both nodes: the node IP (or loopback), except the documented
    # wildcard listeners of Ray's own servers; GCS on 6379 among them on the head.
    for stack, ip in ((head, f"{prefix}.10"), (good, f"{prefix}.11")):
        socks = listeners(stack)
        print(f"listening on {ip}:", socks)
        assert socks, "no listening socket found"
        for addr, port, owner in socks:
            if addr in (ip, "::1", f"::ffff:{ip}") or addr.startswith("127."):  # 127.0.0.11: Docker's DNS
                continue
            assert addr in ("0.0.0.0", "::") and owner.startswith(WILDCARD_OK), f"{owner} listens on {addr}:{port} (node {ip})"
        assert any(port == 6379 and owner == "gcs_server" for _, port, owner in socks) == (stack is head), socks

    args = record.read_text().splitlines()
    assert args[:2] == ["serve", f"/models/{MODEL}"], args
    parsed = vllm_parse([args[1:]])[0]
    assert "ok" in parsed, parsed
    got = parsed["ok"]
    assert (got["tensor_parallel_size"], got["pipeline_parallel_size"], got["distributed_executor_backend"]) == (1, 2, "ray")
    assert got["host"] == "127.0.0.1" and got["reasoning_parser"] == "deepseek_r1" and got["api_key"] is None
    good("down", "-v")


def test_a_missing_worker_is_named_when_the_wait_times_out(cluster):
    head, _, _ = cluster
    head("down", "-v")
    head("up", "-d", "--no-build", "--pull", "never", "vllm", extra={"R1KIT_WAIT_TIMEOUT": "8"})
    assert exit_status(head, "vllm") == 2
    line = last_error(head.logs("vllm"))
    assert "1 of 2 nodes joined in 8 s (missing: node-worker)" in line, line
