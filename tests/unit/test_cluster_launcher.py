"""The per-node cluster launcher (images/vllm/cluster.py, r1kit-cluster in the vLLM image) without Ray, vLLM or a
GPU: its pure parts on concrete inputs. Its settings from argv and the environment, sizes and whole numbers, the
node IP it picks (interfaces stubbed: this machine's are not the cluster's), the InfiniBand and model-folder checks
on made-up sysfs trees, which expected hosts are missing from Ray's node list, and the `vllm serve` arguments each
launcher adds. Each refusal is a Refused whose message names what is wrong. Real Ray clusters of the image:
tests/e2e/test_cluster_stack.py and tests/e2e/test_slurm.py."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import resource
import socket
import sys

import pytest

from support.prerequisites import REPO

CLUSTER = REPO / "images" / "vllm" / "cluster.py"
# Environment variables the launcher reads; each test starts without them (a developer's shell may set some).
READ = ("R1KIT_LAUNCHER", "R1KIT_NODES", "R1KIT_GPUS_PER_NODE", "R1KIT_HEAD_ADDRESS", "R1KIT_PORT", "R1KIT_NODE_RANK", "SLURM_NODEID",
        "R1KIT_WAIT_TIMEOUT", "R1KIT_EXPECT_NODES", "R1KIT_SHM_MIN", "R1KIT_RAY_TOKEN_FILE", "R1KIT_RAY_NO_AUTH", "RAY_AUTH_TOKEN",
        "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "VLLM_HOST_IP", "NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME", "NCCL_IB_HCA")
# The interfaces of a made-up node: two Ethernet ports (one without an address) and an IPoIB one.
INTERFACES = [(1, "lo"), (2, "eth0"), (3, "eth1"), (4, "ib0")]
ADDRESSES = {"lo": "127.0.0.1", "eth0": "10.1.0.5", "eth1": None, "ib0": "192.168.100.5"}


def _load():
    """cluster.py as the image runs it: it puts its own folder first on sys.path to import the image's preflight.
    Loaded under a name of its own (in sys.modules, which its dataclasses need), and sys.path put back after."""
    saved = list(sys.path)
    try:
        spec = importlib.util.spec_from_file_location("r1kit_cluster_under_test", CLUSTER)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = saved
    return module


cluster = _load()
Refused = cluster.Refused


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in READ:
        monkeypatch.delenv(name, raising=False)  # and monkeypatch puts back whatever a test (or the launcher) sets


@pytest.fixture()
def node(monkeypatch: pytest.MonkeyPatch) -> None:
    """The made-up node's interfaces instead of this machine's."""
    monkeypatch.setattr(cluster.socket, "if_nameindex", lambda: INTERFACES)
    monkeypatch.setattr(cluster, "interface_ipv4", lambda name: ADDRESSES.get(name))


def cfg(**changes) -> object:
    """Settings as `r1kit-cluster head --no-auth -- /models/m` gives them, with `changes`."""
    base = cluster.Settings(role="head", launcher="ray", nodes=2, gpus_per_node=4, head=None, port=6379, node_rank=None,
                            wait_timeout=900.0, expect=(), shm_min=1024**3, token_file=None, no_auth=True, vllm_args=("/models/m",))
    return dataclasses.replace(base, **changes)


# --- sizes and whole numbers ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "size"), [
    ("1g", 1024**3), ("512m", 512 * 1024**2), ("64k", 64 * 1024), ("100", 100), ("1GiB", 1024**3), ("2Gi", 2 * 1024**3),
    ("16MB", 16 * 1024**2), (" 1.5g ", 3 * 1024**3 // 2), ("0", 0),
])
def test_sizes(text: str, size: int):
    assert cluster._size(text) == size


@pytest.mark.parametrize("text", ["lots", "", "g", "1t", "1.2.3m", "-"])
def test_a_size_that_is_not_one_is_refused(text: str):
    with pytest.raises(Refused, match=rf"^size {text!r} is not one: write e\.g\. 1g or 512m$"):
        cluster._size(text)


def test_whole_numbers():
    assert cluster._whole("--nodes", "3", 1) == 3
    assert cluster._whole("--node-rank", "0", 0) == 0
    with pytest.raises(Refused, match=r"^--nodes must be at least 1, not 0$"):
        cluster._whole("--nodes", "0", 1)
    with pytest.raises(Refused, match=r"^--nodes must be a whole number, not '2\.5'$"):
        cluster._whole("--nodes", "2.5", 1)
    with pytest.raises(Refused, match=r"^--port must be a whole number, not None$"):
        cluster._whole("--port", None, 1)


# --- settings: argv and the environment -------------------------------------------------------------------------------

def test_a_heads_defaults_and_vllms_arguments_untouched():
    s = cluster.settings(["head", "--no-auth", "--", "/models/m", "--nodes", "9", "--max-model-len", "4096"])
    assert s == cluster.Settings(role="head", launcher="ray", nodes=1, gpus_per_node=1, head=None, port=6379, node_rank=None,
                                 wait_timeout=900.0, expect=(), shm_min=1024**3, token_file=None, no_auth=True,
                                 vllm_args=("/models/m", "--nodes", "9", "--max-model-len", "4096"))


def test_every_option_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path):
    token = tmp_path / "token"
    for name, value in {"R1KIT_LAUNCHER": "native", "R1KIT_NODES": "4", "R1KIT_GPUS_PER_NODE": "8", "R1KIT_HEAD_ADDRESS": "head.lan:7000",
                        "R1KIT_NODE_RANK": "3", "R1KIT_WAIT_TIMEOUT": "60", "R1KIT_EXPECT_NODES": "n1, n2,,n3 ",
                        "R1KIT_SHM_MIN": "512m", "R1KIT_RAY_TOKEN_FILE": str(token)}.items():
        monkeypatch.setenv(name, value)
    s = cluster.settings(["worker"])
    assert (s.launcher, s.nodes, s.gpus_per_node, s.head, s.port, s.node_rank) == ("native", 4, 8, "head.lan", 7000, 3)
    assert (s.wait_timeout, s.expect, s.shm_min, s.token_file, s.no_auth, s.vllm_args) == (60.0, ("n1", "n2", "n3"), 512 * 1024**2, str(token), False, ())
    # An option given beats its variable.
    assert cluster.settings(["worker", "--nodes", "2", "--head", "other"]).nodes == 2
    assert cluster.settings(["worker", "--head", "other"]).port == 6379  # --port's default: no port in --head


def test_slurms_node_id_is_the_rank_and_the_no_auth_variable_counts(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SLURM_NODEID", "2")
    monkeypatch.setenv("R1KIT_RAY_NO_AUTH", "1")
    s = cluster.settings(["worker", "--launcher", "native", "--head", "h"])
    assert (s.node_rank, s.no_auth) == (2, True)


def test_the_token_may_come_from_ray_auth_token(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN", "secret")
    s = cluster.settings(["head", "--", "/models/m"])
    assert (s.token_file, s.no_auth) == (None, False)


@pytest.mark.parametrize(("argv", "says"), [
    (["leader"], r"argument role: invalid choice: 'leader' .*\(r1kit-cluster --help\)$"),
    (["head", "--no-auth", "--bogus", "--", "/m"], r"unrecognized arguments: --bogus \(r1kit-cluster --help\)$"),
    (["head", "--no-auth"], r"^the head needs the `vllm serve` arguments after --, the model first$"),
    (["worker", "--no-auth"], r"^a worker needs the head's address: --head HOST\[:PORT\] or R1KIT_HEAD_ADDRESS$"),
    (["worker", "--no-auth", "--head", "h:port"], r"^the port of --head must be a whole number, not 'port'$"),
    (["worker", "--no-auth", "--head", "h:0"], r"^the port of --head must be at least 1, not 0$"),
    (["worker", "--launcher", "native", "--head", "h"], r"^a native worker needs its rank, 1 or more"),
    (["worker", "--launcher", "native", "--head", "h", "--node-rank", "0"], r"^a native worker needs its rank, 1 or more"),
    (["worker", "--no-auth", "--head", "h", "--node-rank", "-1"], r"^--node-rank must be at least 0, not -1$"),
    (["head", "--", "/m"], r"^no Ray auth token: set R1KIT_RAY_TOKEN_FILE \(or RAY_AUTH_TOKEN\)"),
    (["worker", "--head", "h"], r"^no Ray auth token"),
    (["head", "--no-auth", "--nodes", "0", "--", "/m"], r"^--nodes must be at least 1, not 0$"),
    (["head", "--no-auth", "--gpus-per-node", "all", "--", "/m"], r"^--gpus-per-node must be a whole number, not 'all'$"),
    (["head", "--no-auth", "--wait-timeout", "0", "--", "/m"], r"^--wait-timeout must be at least 1, not 0$"),
    (["head", "--no-auth", "--shm-min", "big", "--", "/m"], r"^size 'big' is not one"),
    (["head", "--no-auth", "--port", "0", "--", "/m"], r"^--port must be at least 1, not 0$"),
])
def test_bad_settings_are_refused_by_name(argv: list[str], says: str):
    with pytest.raises(Refused, match=says):
        cluster.settings(argv)


def test_roles_that_start_nothing_need_no_token():
    assert cluster.settings(["status"]).role == "status"
    assert cluster.settings(["preflight", "--", "/models/m"]).vllm_args == ("/models/m",)
    assert cluster.settings(["head", "--launcher", "native", "--", "/m"]).token_file is None  # no Ray, no token


# --- the node IP ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("spec", "names"), [
    ("", []), ("^docker,lo", []), ("eth", ["eth0", "eth1"]), ("eth1,ib", ["eth1", "ib0"]), ("=eth", []), ("=eth0,ib0", ["eth0", "ib0"]),
    ("wlan", []), ("e", ["eth0", "eth1"]),
])
def test_nccl_socket_ifname_as_nccl_reads_it(node, spec: str, names: list[str]):
    assert cluster.interfaces_named(spec) == names


def test_this_machines_loopback_has_its_address():
    assert cluster.interface_ipv4("lo") == "127.0.0.1"
    assert cluster.interface_ipv4("no-such-if0") is None


def test_the_address_of_the_named_interface_that_has_one(node):
    assert cluster.node_ip(cfg(), {"NCCL_SOCKET_IFNAME": "eth"}) == "10.1.0.5"  # eth1 has none; eth0 is first with one
    assert cluster.node_ip(cfg(), {"NCCL_SOCKET_IFNAME": "eth1,ib"}) == "192.168.100.5"


def test_vllm_host_ip_wins_where_it_agrees(node):
    assert cluster.node_ip(cfg(), {"VLLM_HOST_IP": "10.9.9.9"}) == "10.9.9.9"
    assert cluster.node_ip(cfg(), {"VLLM_HOST_IP": "192.168.100.5", "NCCL_SOCKET_IFNAME": "ib"}) == "192.168.100.5"


def test_without_either_the_route_toward_the_head(node, monkeypatch: pytest.MonkeyPatch):
    asked = []
    monkeypatch.setattr(cluster, "route_ipv4", lambda host, port: asked.append((host, port)) or "10.2.0.7")
    assert cluster.node_ip(cfg(role="worker", head="head.lan", port=7000), {}) == "10.2.0.7"
    assert cluster.node_ip(cfg(), {"NCCL_SOCKET_IFNAME": "^eth"}) == "10.2.0.7"  # an exclusion list names nothing to check
    assert asked == [("head.lan", 7000), ("192.0.2.1", 9)]  # the head's, else any route (TEST-NET: nothing is sent)


@pytest.mark.parametrize(("env", "changes", "says"), [
    ({"NCCL_SOCKET_IFNAME": "wlan"}, {}, r"^NCCL_SOCKET_IFNAME=wlan names no interface of this node \(it has lo, eth0, eth1, ib0\)"),
    ({"NCCL_SOCKET_IFNAME": "eth1"}, {}, r"^NCCL_SOCKET_IFNAME=eth1 has no IPv4 address on this node"),
    ({"NCCL_SOCKET_IFNAME": "eth", "VLLM_HOST_IP": "10.1.0.6"}, {},
     r"^VLLM_HOST_IP=10\.1\.0\.6 is not an address of NCCL_SOCKET_IFNAME=eth \(eth0: 10\.1\.0\.5, eth1: none\)"),
    ({"VLLM_HOST_IP": "127.0.1.1"}, {}, r"^the node IP 127\.0\.1\.1 is a loopback address, which the other nodes cannot reach"),
    ({"NCCL_SOCKET_IFNAME": "lo"}, {}, r"^the node IP 127\.0\.0\.1 is a loopback address"),
])
def test_a_node_ip_that_cannot_work_is_refused(node, env: dict, changes: dict, says: str):
    with pytest.raises(Refused, match=says):
        cluster.node_ip(cfg(**changes), env)


def test_loopback_is_fine_for_one_node(node):
    assert cluster.node_ip(cfg(nodes=1), {"NCCL_SOCKET_IFNAME": "lo"}) == "127.0.0.1"


def test_a_head_that_does_not_resolve_is_named(node, monkeypatch: pytest.MonkeyPatch):
    def unresolvable(host: str, port: int) -> str:
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(cluster, "route_ipv4", unresolvable)
    with pytest.raises(Refused, match=r"^the head nohead\.invalid does not resolve or route from this node \(Name or service not known\): check --head$"):
        cluster.node_ip(cfg(role="worker", head="nohead.invalid"), {})


def test_the_node_environment_vllm_nccl_and_gloo_read(node, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("NCCL_SOCKET_IFNAME", "eth")
    monkeypatch.setenv("NCCL_IB_HCA", "")  # the stacks pass an unset setting as empty
    monkeypatch.setenv("VLLM_HOST_IP", "")
    cluster.node_environment("10.1.0.5")
    assert os.environ["VLLM_HOST_IP"] == "10.1.0.5" and os.environ["GLOO_SOCKET_IFNAME"] == "eth0"
    assert "NCCL_IB_HCA" not in os.environ
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "ib0")  # one the user set is kept
    cluster.node_environment("10.1.0.5")
    assert os.environ["GLOO_SOCKET_IFNAME"] == "ib0"


# --- InfiniBand, the model folder, the Ray token --------------------------------------------------------------------

@pytest.fixture()
def ib(tmp_path, monkeypatch: pytest.MonkeyPatch):
    """A node with adapters mlx5_0 and mlx5_1, their devices in /dev/infiniband, and unlimited locked memory."""
    sysfs, dev = tmp_path / "sys", tmp_path / "dev"
    for name in ("mlx5_0", "mlx5_1"):
        (sysfs / name).mkdir(parents=True)
    dev.mkdir()
    (dev / "uverbs0").touch()
    monkeypatch.setattr(cluster.resource, "getrlimit", lambda which: (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    return sysfs, dev


@pytest.mark.parametrize("spec", ["mlx5", "mlx5_0,mlx5_1", "=mlx5_0", "mlx5_1:1", "^mlx5_0"])
def test_infiniband_adapters_that_are_there(ib, spec: str):
    assert cluster.check_infiniband({"NCCL_IB_HCA": spec}, *ib) == "InfiniBand: mlx5_0, mlx5_1"


def test_infiniband_not_asked_for_is_not_checked(tmp_path):
    nothing = (tmp_path / "no-sys", tmp_path / "no-dev")
    assert cluster.check_infiniband({}, *nothing) is None
    assert cluster.check_infiniband({"NCCL_IB_HCA": "mlx5", "NCCL_IB_DISABLE": "1"}, *nothing) is None


@pytest.mark.parametrize(("spec", "says"), [
    ("mlx4", r"^NCCL_IB_HCA=mlx4: no adapter mlx4 on this node \(it has mlx5_0, mlx5_1\)"),
    ("=mlx5", r"^NCCL_IB_HCA==mlx5: no adapter mlx5 on this node"),
    ("mlx5_0,mlx5_2:1", r"^NCCL_IB_HCA=mlx5_0,mlx5_2:1: no adapter mlx5_2 on this node"),
])
def test_infiniband_adapters_that_are_not_there(ib, spec: str, says: str):
    with pytest.raises(Refused, match=says):
        cluster.check_infiniband({"NCCL_IB_HCA": spec}, *ib)


def test_infiniband_without_adapters_devices_or_locked_memory(ib, tmp_path, monkeypatch: pytest.MonkeyPatch):
    sysfs, dev = ib
    with pytest.raises(Refused, match=r"\(it has none\)"):
        cluster.check_infiniband({"NCCL_IB_HCA": "mlx5"}, tmp_path / "no-sys", dev)
    with pytest.raises(Refused, match=r"uverbs\* is missing in this container: add stacks/cluster-ib\.yml"):
        cluster.check_infiniband({"NCCL_IB_HCA": "mlx5"}, sysfs, tmp_path / "no-dev")
    monkeypatch.setattr(cluster.resource, "getrlimit", lambda which: (8 * 1024**2, resource.RLIM_INFINITY))
    with pytest.raises(Refused, match=r"^locked memory is limited to 8192 KiB, too little for InfiniBand"):
        cluster.check_infiniband({"NCCL_IB_HCA": "mlx5"}, sysfs, dev)


def test_the_model_folder(tmp_path):
    assert cluster.check_model(()) is None
    assert cluster.check_model(("deepseek-ai/DeepSeek-R1", "--max-model-len", "8192")) is None  # a Hub name: no folder to check
    with pytest.raises(Refused, match=rf"^the model folder {tmp_path} has no config\.json on this node: mount the shared models"):
        cluster.check_model((str(tmp_path),))
    (tmp_path / "config.json").write_text("{}")
    assert cluster.check_model((str(tmp_path), "--trust-remote-code")) == f"model {tmp_path}"


def test_the_ray_token_from_its_file(tmp_path):
    token = tmp_path / "token"
    with pytest.raises(Refused, match=rf"^the Ray auth token file {token} is missing or empty"):
        cluster.ray_environment(cfg(no_auth=False, token_file=str(token)))
    token.write_text(" \n")
    with pytest.raises(Refused, match="is missing or empty"):
        cluster.ray_environment(cfg(no_auth=False, token_file=str(token)))
    token.write_text("0123abcd\n")
    cluster.ray_environment(cfg(no_auth=False, token_file=str(token)))
    assert (os.environ["RAY_AUTH_MODE"], os.environ["RAY_AUTH_TOKEN_PATH"]) == ("token", str(token))


def test_no_auth_sets_nothing():
    cluster.ray_environment(cfg(no_auth=True, token_file=None))
    assert "RAY_AUTH_MODE" not in os.environ and "RAY_AUTH_TOKEN_PATH" not in os.environ


# --- Ray's node list and `ray start` -------------------------------------------------------------------------------

NODES = [
    {"NodeID": "a", "Alive": True, "NodeManagerHostname": "gpu01.cluster.local", "NodeManagerAddress": "10.1.0.1", "Resources": {"GPU": 4.0, "CPU": 64.0}},
    {"NodeID": "b", "Alive": False, "NodeManagerHostname": "gpu02.cluster.local", "NodeManagerAddress": "10.1.0.2", "Resources": {"GPU": 4.0}},
    {"NodeID": "c", "Alive": True, "NodeManagerHostname": "gpu03", "NodeManagerAddress": "10.1.0.3", "Resources": {"CPU": 8.0}},
]


def test_only_live_nodes_have_joined():
    assert [n["NodeID"] for n in cluster.joined(NODES)] == ["a", "c"]
    assert cluster.joined([]) == []


def test_missing_hosts_by_short_or_full_name_or_ip():
    live = cluster.joined(NODES)
    expect = ("gpu01", "gpu01.cluster.local", "gpu01.other.domain", "10.1.0.3", "gpu03.cluster.local", "gpu02", "10.1.0.2", "gpu04.cluster.local")
    assert cluster.missing_hosts(expect, live) == ["gpu02", "10.1.0.2", "gpu04.cluster.local"]
    assert cluster.missing_hosts((), live) == []
    assert cluster.missing_hosts(("gpu01",), []) == ["gpu01"]


def test_describe_a_node():
    assert cluster.describe(NODES[0]) == "gpu01.cluster.local (10.1.0.1, 4 GPUs)"
    assert cluster.describe(NODES[2]) == "gpu03 (10.1.0.3, 0 GPUs)"


def test_the_object_store_fits_in_dev_shm(monkeypatch: pytest.MonkeyPatch):
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    monkeypatch.setattr(cluster, "shm_bytes", lambda: 1024**3)
    assert cluster.object_store_bytes() == int(min(0.3 * memory, 0.4 * 1024**3))
    monkeypatch.setattr(cluster, "shm_bytes", lambda: 64 * 1024**2)
    assert cluster.object_store_bytes() == 100 * 1024**2  # never below 100 MiB


def test_ray_start_names_the_node_ip_and_its_gpus(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(cluster, "object_store_bytes", lambda: 123456789)
    assert cluster.ray_start(cfg(gpus_per_node=8), "10.1.0.5", "--head", "--port=6379") == [
        "ray", "start", "--node-ip-address=10.1.0.5", "--num-gpus=8", "--object-store-memory=123456789", "--disable-usage-stats",
        "--head", "--port=6379"]


# --- the `vllm serve` arguments -----------------------------------------------------------------------------------

def test_ray_adds_its_executor_unless_the_user_chose_one():
    args = ("/models/m", "--tensor-parallel-size", "4")
    assert cluster.serve_args(cfg(vllm_args=args), "10.1.0.5") == [*args, "--distributed-executor-backend", "ray"]
    chosen = ("/models/m", "--distributed-executor-backend=mp")
    assert cluster.serve_args(cfg(vllm_args=chosen), "10.1.0.5") == list(chosen)
    chosen = ("/models/m", "--distributed-executor-backend", "ray")
    assert cluster.serve_args(cfg(vllm_args=chosen), "10.1.0.5") == list(chosen)


def test_native_head_and_worker():
    head = cfg(launcher="native", nodes=3, port=29500, vllm_args=("/models/m", "-tp", "8"))
    assert cluster.serve_args(head, "10.1.0.5") == ["/models/m", "-tp", "8", "--nnodes", "3", "--node-rank", "0",
                                                    "--master-addr", "10.1.0.5", "--master-port", "29500"]
    worker = dataclasses.replace(head, role="worker", head="head.lan", node_rank=2)
    assert cluster.serve_args(worker, "10.1.0.7") == ["/models/m", "-tp", "8", "--nnodes", "3", "--node-rank", "2",
                                                      "--master-addr", "head.lan", "--master-port", "29500", "--headless"]


def test_main_turns_a_refusal_into_one_line_and_status_2(capsys: pytest.CaptureFixture):
    assert cluster.main(["worker", "--no-auth"]) == 2
    err = capsys.readouterr().err
    assert err == "error: a worker needs the head's address: --head HOST[:PORT] or R1KIT_HEAD_ADDRESS\n"
