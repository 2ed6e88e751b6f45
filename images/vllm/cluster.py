#!/usr/bin/env python3
"""One node of a multi-node vLLM cluster: checked, joined, and on the head `vllm serve` once every node is there.

    r1kit-cluster head   [options] -- MODEL [vllm serve options...]
    r1kit-cluster worker [options] [-- MODEL [vllm serve options...]]
    r1kit-cluster preflight [options] [-- MODEL ...]     # the node checks alone
    r1kit-cluster status                                   # the Ray cluster's nodes, as JSON

The stacks (stacks/cluster-head.yml and cluster-worker.yml) and the scripts `builder slurm` writes run it on every node. Two launchers:
- ray (the default): the head runs `ray start --head`, waits until --nodes nodes with --gpus-per-node GPUs each
  have joined (naming the missing ones when the wait times out), runs a task on every node to compare their
  software, then `vllm serve ... --distributed-executor-backend ray`. Workers run `ray start --address HEAD --block`.
- native: vLLM's own multi-node launch without Ray (`--nnodes --node-rank --master-addr --master-port`, the others
  `--headless`); every node runs `vllm serve` with the same arguments.

Before anything starts, every node checks itself (the mistakes that cost days on a cluster): its GPUs (NVML; where
none are visible, R1KIT_GPU_COUNT and R1KIT_GPU_MEMORY_GB declare them, as for the image's preflight), the node IP
and the interface NCCL and Gloo will use, /dev/shm's size, the InfiniBand devices when NCCL_IB_HCA names some, and
the model folder. The node IP is VLLM_HOST_IP, else the IPv4 address of NCCL_SOCKET_IFNAME's interface, else the
address that routes toward the head; it is exported as VLLM_HOST_IP and given to Ray as the node IP, so vLLM and
Ray agree (their disagreement is the "No available node types can fulfill resource request" of the recipes).

Every option can come from the environment (the name in brackets in --help), which is how the stacks set them.
Exit status 2 with one `error: ...` line on stderr: a check failed or the cluster did not form.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import importlib.metadata
import json
import os
import platform
import resource
import signal
import socket
import struct
import subprocess
import sys
import sysconfig
import time
from dataclasses import asdict, dataclass
from pathlib import Path

HOME = Path(os.environ.get("R1KIT_HOME") or Path(__file__).resolve().parent)
sys.path.insert(0, str(HOME))
from preflight import GB, Refused, visible_gpus  # noqa: E402  (the image's preflight: one way to find the GPUs)

# The ways Ray's CLI says a node was refused, turned into one line each (its own output is a page of traceback).
RAY_REFUSALS = {
    "InvalidAuthToken": "the head refused this node's Ray auth token: give every node the head's token (RAY_AUTH_TOKEN, R1KIT_RAY_TOKEN_FILE)",
    "Version mismatch": "Ray or Python differs between this node and the head: run the same image on every node",
}
POLL_SECONDS = 2.0
PROGRESS_SECONDS = 30.0


@dataclass(frozen=True)
class Settings:
    role: str
    launcher: str
    nodes: int
    gpus_per_node: int
    head: str | None
    port: int
    node_rank: int | None
    wait_timeout: float
    expect: tuple[str, ...]
    shm_min: int
    token_file: str | None
    no_auth: bool
    vllm_args: tuple[str, ...]


@dataclass(frozen=True)
class NodeReport:
    """What a node is, in the terms two nodes must agree on; `fingerprint` covers every installed distribution
    and the launcher's own scripts, so two nodes with the same image (or the same bare-metal install) agree."""

    host: str
    ip: str
    gpus: int
    python: str
    ray: str | None
    vllm: str | None
    fingerprint: str


def say(message: str) -> None:
    print(f"r1kit-cluster: {message}", file=sys.stderr, flush=True)


def _size(text: str) -> int:
    units = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
    number, unit = text.strip().lower().rstrip("ib"), ""
    if number and number[-1] in units:
        number, unit = number[:-1], number[-1]
    try:
        return int(float(number) * units[unit])
    except ValueError:
        raise Refused(f"size {text!r} is not one: write e.g. 1g or 512m") from None


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would print its usage and exit; one line instead
        raise Refused(f"{message} (r1kit-cluster --help)")


def parser() -> argparse.ArgumentParser:
    env = os.environ.get
    p = _Parser(prog="r1kit-cluster", description=__doc__.split("\n\n")[0], usage="%(prog)s ROLE [options] [-- MODEL [vllm serve options...]]")
    p.add_argument("role", choices=["head", "worker", "preflight", "status"])
    p.add_argument("--launcher", choices=["ray", "native"], default=env("R1KIT_LAUNCHER", "ray"), help="[R1KIT_LAUNCHER] ray (default) or native")
    p.add_argument("--nodes", default=env("R1KIT_NODES", "1"), help="[R1KIT_NODES] nodes in the cluster, the head included")
    p.add_argument("--gpus-per-node", default=env("R1KIT_GPUS_PER_NODE", "1"), help="[R1KIT_GPUS_PER_NODE] GPUs each node brings")
    p.add_argument("--head", default=env("R1KIT_HEAD_ADDRESS"), help="[R1KIT_HEAD_ADDRESS] HOST or HOST:PORT of the head (workers)")
    p.add_argument("--port", default=env("R1KIT_PORT", "6379"), help="[R1KIT_PORT] Ray's GCS port, or the native launcher's master port")
    p.add_argument("--node-rank", default=env("R1KIT_NODE_RANK") or env("SLURM_NODEID"), help="[R1KIT_NODE_RANK, SLURM_NODEID] this worker's rank (native)")
    p.add_argument("--wait-timeout", default=env("R1KIT_WAIT_TIMEOUT", "900"), help="[R1KIT_WAIT_TIMEOUT] seconds to wait for the head or the other nodes")
    p.add_argument("--expect", default=env("R1KIT_EXPECT_NODES", ""), help="[R1KIT_EXPECT_NODES] comma-separated hosts that should join (names the missing ones)")
    p.add_argument("--shm-min", default=env("R1KIT_SHM_MIN", "1g"), help="[R1KIT_SHM_MIN] the least /dev/shm this node may have")
    p.add_argument("--auth-token-file", default=env("R1KIT_RAY_TOKEN_FILE"), help="[R1KIT_RAY_TOKEN_FILE] the Ray auth token, shared by every node")
    p.add_argument("--no-auth", action="store_true", default=env("R1KIT_RAY_NO_AUTH") == "1",
                   help="[R1KIT_RAY_NO_AUTH=1] run Ray without its token: anyone who reaches the head's port runs code on every node")
    return p


def _whole(name: str, text: str, least: int) -> int:
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise Refused(f"{name} must be a whole number, not {text!r}") from None
    if value < least:
        raise Refused(f"{name} must be at least {least}, not {value}")
    return value


def settings(argv: list[str]) -> Settings:
    # After `--`: vLLM's arguments, untouched (argparse would match its own positionals against them).
    own, vllm_args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    ns = parser().parse_args(own)
    head, port = ns.head, _whole("--port", ns.port, 1)
    if head and ":" in head:
        head, _, head_port = head.rpartition(":")
        port = _whole("the port of --head", head_port, 1)
    if ns.role == "worker" and not head:
        raise Refused("a worker needs the head's address: --head HOST[:PORT] or R1KIT_HEAD_ADDRESS")
    rank = None if ns.node_rank in (None, "") else _whole("--node-rank", ns.node_rank, 0)
    if ns.role == "worker" and ns.launcher == "native" and not rank:
        raise Refused("a native worker needs its rank, 1 or more: --node-rank, R1KIT_NODE_RANK or SLURM_NODEID")
    if ns.role == "head" and not vllm_args:
        raise Refused("the head needs the `vllm serve` arguments after --, the model first")
    token = ns.auth_token_file or None
    if ns.launcher == "ray" and ns.role in ("head", "worker") and not token and not os.environ.get("RAY_AUTH_TOKEN") and not ns.no_auth:
        raise Refused("no Ray auth token: set R1KIT_RAY_TOKEN_FILE (or RAY_AUTH_TOKEN) to the same secret on every node "
                      "(the stacks and `builder slurm` make one), or --no-auth on a network only the cluster reaches")
    return Settings(
        role=ns.role, launcher=ns.launcher, nodes=_whole("--nodes", ns.nodes, 1),
        gpus_per_node=_whole("--gpus-per-node", ns.gpus_per_node, 1), head=head, port=port, node_rank=rank,
        wait_timeout=float(_whole("--wait-timeout", ns.wait_timeout, 1)),
        expect=tuple(h.strip() for h in ns.expect.replace(" ", ",").split(",") if h.strip()),
        shm_min=_size(ns.shm_min), token_file=token, no_auth=ns.no_auth, vllm_args=tuple(vllm_args))


# --- the node IP and its interface ----------------------------------------------------------------------------------

def interface_ipv4(name: str) -> str | None:
    """The IPv4 address of a network interface (SIOCGIFADDR), None where it has none or does not exist."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            packed = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name[:15].encode()))
        except OSError:
            return None
    return socket.inet_ntoa(packed[20:24])


def interfaces_named(spec: str) -> list[str]:
    """The interfaces NCCL_SOCKET_IFNAME selects: a comma-separated list of prefixes (`=` first: exact names);
    `^` (an exclusion list) selects nothing to check here."""
    if not spec or spec.startswith("^"):
        return []
    exact = spec.startswith("=")
    wanted = [w for w in spec.lstrip("=").split(",") if w]
    present = [name for _, name in socket.if_nameindex()]
    return [name for name in present if any(name == w if exact else name.startswith(w) for w in wanted)]


def route_ipv4(host: str, port: int) -> str:
    """The local address that routes toward host (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((socket.gethostbyname(host), port))
        return s.getsockname()[0]


def node_ip(cfg: Settings, env: dict[str, str]) -> str:
    """This node's IP (see the module's doc), checked against NCCL_SOCKET_IFNAME where that names interfaces."""
    spec = env.get("NCCL_SOCKET_IFNAME", "")
    named = interfaces_named(spec)
    if spec and not spec.startswith("^") and not named:
        present = ", ".join(name for _, name in socket.if_nameindex())
        raise Refused(f"NCCL_SOCKET_IFNAME={spec} names no interface of this node (it has {present}): set it to the cluster network's")
    addresses = {name: interface_ipv4(name) for name in named}
    if env.get("VLLM_HOST_IP"):
        ip = env["VLLM_HOST_IP"]
        if named and ip not in addresses.values():
            found = ", ".join(f"{n}: {a or 'none'}" for n, a in addresses.items())
            raise Refused(f"VLLM_HOST_IP={ip} is not an address of NCCL_SOCKET_IFNAME={spec} ({found}): set one of them to match the other")
    elif any(addresses.values()):
        ip = next(a for a in addresses.values() if a)
    elif named:
        raise Refused(f"NCCL_SOCKET_IFNAME={spec} has no IPv4 address on this node: name the interface of the cluster network")
    elif cfg.head:
        try:
            ip = route_ipv4(cfg.head, cfg.port)
        except OSError as e:
            raise Refused(f"the head {cfg.head} does not resolve or route from this node ({e.strerror or e}): check --head") from None
    else:
        ip = route_ipv4("192.0.2.1", 9)  # TEST-NET: only the routing table is read
    if cfg.nodes > 1 and ip.startswith("127."):
        raise Refused(f"the node IP {ip} is a loopback address, which the other nodes cannot reach: set VLLM_HOST_IP or NCCL_SOCKET_IFNAME")
    return ip


# --- the node checks ------------------------------------------------------------------------------------------------

def shm_bytes(path: str = "/dev/shm") -> int:
    st = os.statvfs(path)
    return st.f_blocks * st.f_frsize


def check_infiniband(env: dict[str, str], sysfs: Path = Path("/sys/class/infiniband"), dev: Path = Path("/dev/infiniband")) -> str | None:
    """Where NCCL_IB_HCA names adapters (and IB is not disabled): they exist, their devices are in the container,
    and locked memory is unlimited (RDMA registers GPU buffers). A note, or None where IB was not asked for."""
    spec = env.get("NCCL_IB_HCA", "")
    if not spec or env.get("NCCL_IB_DISABLE") == "1":
        return None
    present = sorted(p.name for p in sysfs.iterdir()) if sysfs.is_dir() else []
    if not spec.startswith("^"):
        exact = spec.startswith("=")
        wanted = [w.split(":")[0] for w in spec.lstrip("=").split(",") if w]
        missing = [w for w in wanted if not any(p == w if exact else p.startswith(w) for p in present)]
        if missing:
            raise Refused(f"NCCL_IB_HCA={spec}: no adapter {', '.join(missing)} on this node (it has {', '.join(present) or 'none'}): "
                          "name this node's adapters (ibv_devices), or unset NCCL_IB_HCA to use sockets")
    if not any(dev.glob("uverbs*")):
        raise Refused(f"NCCL_IB_HCA is set but {dev}/uverbs* is missing in this container: add stacks/cluster-ib.yml (the devices and IPC_LOCK)")
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if soft != resource.RLIM_INFINITY:
        raise Refused(f"locked memory is limited to {soft // 1024} KiB, too little for InfiniBand: set ulimits memlock -1 (stacks/cluster-ib.yml) "
                      "or `ulimit -l unlimited` on the node")
    return f"InfiniBand: {', '.join(present)}"


def check_model(args: tuple[str, ...]) -> str | None:
    """The model folder, where the first vllm argument is a path: every node loads its part of it from there."""
    if not args or not args[0].startswith("/"):
        return None
    folder = Path(args[0])
    if not (folder / "config.json").is_file():
        raise Refused(f"the model folder {folder} has no config.json on this node: mount the shared models folder on every node, "
                      "or download the model on each (builder download MODEL --dest DIR)")
    return f"model {folder}"


def _fingerprint() -> str:
    """sha256 of every distribution in this Python's site-packages (name and version) and the launcher's scripts.
    Read from the folders, not sys.path, which a Ray task's worker process extends."""
    h = hashlib.sha256()
    site = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    dists = sorted({f"{d.metadata['Name']}=={d.version}".lower() for d in importlib.metadata.distributions(path=site) if d.metadata["Name"]})
    h.update("\n".join(dists).encode())
    for name in ("cluster.py", "preflight.py", "entrypoint.sh", "python/r1kit_keyguard.py"):
        script = HOME / name
        if script.is_file():
            h.update(script.read_bytes())
    return h.hexdigest()[:16]


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def node_report(ip: str, gpus: int) -> NodeReport:
    return NodeReport(socket.gethostname(), ip, gpus, platform.python_version(), _version("ray"), _version("vllm"), _fingerprint())


def preflight(cfg: Settings, env: dict[str, str]) -> NodeReport:
    """The node checks; raises Refused naming what is wrong on this node."""
    gpus = visible_gpus(env)
    if gpus is None:
        raise Refused("no NVIDIA GPU visible (NVML found none): start the node with its GPUs (the stacks reserve them; "
                      "docker run --gpus all); R1KIT_GPU_COUNT and R1KIT_GPU_MEMORY_GB declare them where NVML cannot see them")
    if gpus.count < cfg.gpus_per_node:
        raise Refused(f"this node has {gpus.count} GPU(s) ({gpus.source}), not the {cfg.gpus_per_node} --gpus-per-node asks for")
    ip = node_ip(cfg, env)
    shm = shm_bytes()
    if shm < cfg.shm_min:
        raise Refused(f"/dev/shm is {shm / 1024**2:.0f} MiB, below {cfg.shm_min / 1024**2:.0f} MiB: NCCL and Ray keep buffers there; "
                      "give the container shm_size (VLLM_SHM_SIZE) or ipc: host")
    notes = [f"{gpus.count} GPU(s) of {gpus.memory / GB:.0f} GB ({gpus.source})", f"IP {ip}", f"/dev/shm {shm / 1024**3:.1f} GiB"]
    notes += [n for n in (check_infiniband(env), check_model(cfg.vllm_args)) if n]
    say(f"{socket.gethostname()}: " + ", ".join(notes))
    return node_report(ip, cfg.gpus_per_node)


def node_environment(ip: str) -> None:
    """What vLLM, NCCL, Gloo and Ray read on this node. vLLM's Ray executor copies the head's NCCL_* settings to
    every worker, so the interface must be named the same on every node; Gloo's it does not copy."""
    for name in [n for n, v in os.environ.items() if n.startswith(("NCCL_", "GLOO_", "VLLM_HOST_IP")) and not v]:
        del os.environ[name]  # the stacks pass unset settings as empty: to NCCL an empty name is not "unset"
    os.environ["VLLM_HOST_IP"] = ip
    if os.environ.get("NCCL_SOCKET_IFNAME") and not os.environ.get("GLOO_SOCKET_IFNAME"):
        names = interfaces_named(os.environ["NCCL_SOCKET_IFNAME"])
        if names:
            os.environ["GLOO_SOCKET_IFNAME"] = names[0]


def ray_environment(cfg: Settings) -> None:
    if cfg.no_auth:
        return
    os.environ["RAY_AUTH_MODE"] = "token"
    if cfg.token_file:
        if not os.path.isfile(cfg.token_file) or not Path(cfg.token_file).read_text().strip():
            raise Refused(f"the Ray auth token file {cfg.token_file} is missing or empty: every node needs the head's token there")
        os.environ["RAY_AUTH_TOKEN_PATH"] = cfg.token_file


# --- Ray ------------------------------------------------------------------------------------------------------------

def object_store_bytes() -> int:
    """Ray's object store: its default (30% of memory), but within 40% of /dev/shm, where it must live to be fast
    (Ray moves it to /tmp otherwise); the rest of /dev/shm stays for NCCL."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return max(int(min(0.3 * memory, 0.4 * shm_bytes())), 100 * 1024**2)


def ray_start(cfg: Settings, ip: str, *extra: str) -> list[str]:
    return ["ray", "start", f"--node-ip-address={ip}", f"--num-gpus={cfg.gpus_per_node}", f"--object-store-memory={object_store_bytes()}",
            "--disable-usage-stats", *extra]


def run_ray_cli(cmd: list[str]) -> int:
    """Run `ray start`, its output passed through, SIGTERM passed on; a refusal Ray prints as a traceback ends as
    one line."""
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda s, _f: child.send_signal(s))
    refusal = None
    assert child.stdout is not None
    for line in child.stdout:
        sys.stderr.write(line)
        refusal = refusal or next((why for key, why in RAY_REFUSALS.items() if key in line), None)
    code = child.wait()
    if refusal:
        raise Refused(refusal)
    return code


def joined(nodes: list[dict]) -> list[dict]:
    return [n for n in nodes if n.get("Alive")]


def missing_hosts(expect: tuple[str, ...], nodes: list[dict]) -> list[str]:
    """The expected hosts no live node answers to (by hostname, short or full, or by IP)."""
    seen: set[str] = set()
    for n in nodes:
        host = n.get("NodeManagerHostname", "")
        seen.update({host, host.split(".")[0], n.get("NodeManagerAddress", "")})
    return [h for h in expect if h not in seen and h.split(".")[0] not in seen]


def describe(n: dict) -> str:
    return f"{n.get('NodeManagerHostname')} ({n.get('NodeManagerAddress')}, {int(n.get('Resources', {}).get('GPU', 0))} GPUs)"


def wait_for_nodes(cfg: Settings, head_ip: str) -> list[dict]:
    import ray

    deadline, last, last_said = time.monotonic() + cfg.wait_timeout, -1, 0.0
    while True:
        nodes = joined(ray.nodes())
        now = time.monotonic()
        if len(nodes) >= cfg.nodes:
            return nodes
        if len(nodes) != last or now - last_said >= PROGRESS_SECONDS:
            waiting = missing_hosts(cfg.expect, nodes)
            say(f"{len(nodes)}/{cfg.nodes} nodes joined" + (f" (waiting for: {', '.join(waiting)})" if waiting else ""))
            last, last_said = len(nodes), now
        if now >= deadline:
            names = missing_hosts(cfg.expect, nodes)
            what = f"missing: {', '.join(names)}" if names else f"{cfg.nodes - len(nodes)} missing"
            raise Refused(f"{len(nodes)} of {cfg.nodes} nodes joined in {cfg.wait_timeout:.0f} s ({what}): start their workers "
                          f"with --head {head_ip}:{cfg.port} and check that they reach this node on the cluster network")
        time.sleep(POLL_SECONDS)


def check_nodes(cfg: Settings, nodes: list[dict], mine: NodeReport) -> list[NodeReport]:
    """Each node's GPUs as Ray counts them, then a task on every node that reports its software, compared to the head's."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    short = [describe(n) for n in nodes if n.get("Resources", {}).get("GPU", 0) < cfg.gpus_per_node]
    if short:
        raise Refused(f"fewer than {cfg.gpus_per_node} GPUs on {', '.join(short)}: start every node with --gpus-per-node {cfg.gpus_per_node}")
    report = ray.remote(num_cpus=0)(lambda ip, gpus: asdict(node_report(ip, gpus)))
    tasks = [report.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
             .remote(n["NodeManagerAddress"], int(n["Resources"].get("GPU", 0))) for n in nodes]
    reports = [NodeReport(**r) for r in ray.get(tasks, timeout=300)]
    for r in reports:
        for field in ("python", "ray", "vllm", "fingerprint"):
            if getattr(r, field) != getattr(mine, field):
                raise Refused(f"{r.host} ({r.ip}) differs from the head: {field} {getattr(r, field)} there, {getattr(mine, field)} here: "
                              "run the same image (or install) on every node")
    return reports


def serve_args(cfg: Settings, ip: str) -> list[str]:
    """The `vllm serve` arguments for this node: the user's, plus what the launcher decides."""
    args = list(cfg.vllm_args)
    given = {a.split("=")[0] for a in args if a.startswith("--")}
    if cfg.launcher == "ray":
        return args if "--distributed-executor-backend" in given else [*args, "--distributed-executor-backend", "ray"]
    rank = 0 if cfg.role == "head" else cfg.node_rank
    master = ip if cfg.role == "head" else cfg.head
    extra = ["--nnodes", str(cfg.nodes), "--node-rank", str(rank), "--master-addr", str(master), "--master-port", str(cfg.port)]
    return [*args, *extra, *(["--headless"] if cfg.role == "worker" else [])]


def serve(args: list[str]) -> None:
    """The image's entrypoint: its preflight, the API key from its file, then `vllm serve`."""
    entrypoint = str(HOME / "entrypoint.sh")
    os.execvp("sh", ["sh", entrypoint, *args])


def head(cfg: Settings) -> int:
    mine = preflight(cfg, dict(os.environ))
    node_environment(mine.ip)
    if cfg.launcher == "native":
        serve(serve_args(cfg, mine.ip))
    ray_environment(cfg)
    code = run_ray_cli(ray_start(cfg, mine.ip, "--head", f"--port={cfg.port}", "--include-dashboard=false"))
    if code != 0:
        raise Refused(f"`ray start --head` failed (exit {code}, its output above): is port {cfg.port} free on this node?")
    import ray

    ray.init(address=f"{mine.ip}:{cfg.port}", logging_level="ERROR", log_to_driver=False)
    try:
        nodes = wait_for_nodes(cfg, mine.ip)
        say(f"all {len(nodes)} nodes joined: {', '.join(describe(n) for n in nodes)}")
        reports = check_nodes(cfg, nodes, mine)
        say(f"a task ran on every node, the same software on each ({mine.fingerprint}): {', '.join(f'{r.host} ({r.ip})' for r in reports)}")
    finally:
        ray.shutdown()
    serve(serve_args(cfg, mine.ip))
    return 0  # not reached: serve() replaces this process


def wait_for_port(host: str, port: int, timeout: float) -> None:
    deadline, said = time.monotonic() + timeout, 0.0
    while True:
        try:
            with socket.create_connection((host, port), timeout=5):
                return
        except OSError:
            now = time.monotonic()
            if now >= deadline:
                raise Refused(f"the head {host}:{port} did not answer in {timeout:.0f} s: start the head first, and check --head and the network") from None
            if now - said >= PROGRESS_SECONDS:
                say(f"waiting for the head at {host}:{port}")
                said = now
            time.sleep(POLL_SECONDS)


def worker(cfg: Settings) -> int:
    mine = preflight(cfg, dict(os.environ))
    node_environment(mine.ip)
    assert cfg.head is not None
    if cfg.launcher == "native":
        serve(serve_args(cfg, mine.ip))
    ray_environment(cfg)
    wait_for_port(cfg.head, cfg.port, cfg.wait_timeout)
    say(f"joining the head at {cfg.head}:{cfg.port}")
    return run_ray_cli(ray_start(cfg, mine.ip, f"--address={cfg.head}:{cfg.port}", "--block"))


def status(cfg: Settings) -> int:
    ray_environment(cfg)  # before the import: Ray reads its auth settings when imported
    import ray

    ray.init(address="auto", logging_level="ERROR", log_to_driver=False)
    try:
        nodes = [{"host": n["NodeManagerHostname"], "ip": n["NodeManagerAddress"], "gpus": n["Resources"].get("GPU", 0),
                  "cpus": n["Resources"].get("CPU", 0)} for n in joined(ray.nodes())]
    finally:
        ray.shutdown()
    print(json.dumps(nodes))
    return 0


def main(argv: list[str]) -> int:
    try:
        cfg = settings(argv)
        if cfg.role == "status":
            return status(cfg)
        if cfg.role == "preflight":
            print(json.dumps(asdict(preflight(cfg, dict(os.environ)))))
            return 0
        return head(cfg) if cfg.role == "head" else worker(cfg)
    except Refused as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
