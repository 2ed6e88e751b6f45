"""Benchmark for docs/PERFORMANCE.md (issue 14), side by side in one run on this machine (never a test gate):
today's `builder download` (a git ref, one file at a time over one stream), this checkout's at several --connections,
and huggingface_hub's `hf download`, all against the local Hub stand-in with a per-connection and a total cap, and
answering as huggingface.co does (a redirect to another host with a signed link).

usage (repo root, .venv active): python tests/bench/download.py [--shards 4] [--shard-mib 512] [--total-mbs 300]
    [--per-connection-mbs 30] [--connections 1,4,8,16] [--baseline-ref main]
Prints a Markdown table on stdout. Each download lands in a temporary folder, deleted after its run.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support.local_hub import LocalHub, Served  # noqa: E402
from support.prerequisites import REPO  # noqa: E402

BENCH_REPO = "r1kit-bench/DeepSeek-R1-bench-GGUF"
MB = 10**6


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def cpu_seconds_of_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(command: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """Wall seconds and the client's CPU seconds (user + system) of one download."""
    cpu, start = cpu_seconds_of_children(), time.monotonic()
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.monotonic() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    return wall, cpu_seconds_of_children() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--shard-mib", type=int, default=512)
    parser.add_argument("--total-mbs", type=float, default=300, help="the link: MB/s across all connections")
    parser.add_argument("--per-connection-mbs", type=float, default=30, help="the CDN's cap on each connection, MB/s")
    parser.add_argument("--connections", default="1,4,8,16")
    parser.add_argument("--baseline-ref", default="main", help="the git ref whose builder is 'today's'")
    args = parser.parse_args()

    names = [f"DeepSeek-R1-bench/DeepSeek-R1-bench-{i:05d}-of-{args.shards:05d}.gguf" for i in range(1, args.shards + 1)]
    size = args.shard_mib * 2**20
    total = size * args.shards
    python = sys.executable
    hf = str(Path(python).parent / "hf")
    with tempfile.TemporaryDirectory(prefix="r1kit-bench-") as tmp, LocalHub() as hub:
        work = Path(tmp)
        hub.add_repo(BENCH_REPO, {name: os.urandom(size) for name in names})
        env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
        env.update(HF_ENDPOINT=hub.url, HF_HOME=str(work / "hf-home"), HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
        # Today's builder: its package from the git ref, run from a folder that puts it first on sys.path.
        old = work / "baseline"
        old.mkdir()
        archive = subprocess.run(["git", "archive", args.baseline_ref, "builder"], cwd=REPO, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
        commit = subprocess.run(["git", "rev-parse", "--short", args.baseline_ref], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()

        def dest() -> Path:
            folder = work / "dest"
            shutil.rmtree(folder, ignore_errors=True)
            return folder

        download = ["download", BENCH_REPO, "--include", "*.gguf", "--min-free", "0"]
        runs: list[tuple[str, list[str], Path]] = [(f"builder download, {args.baseline_ref} ({commit}): one file at a time, one stream", [python, "-m", "builder.cli", *download], old)]
        for n in (int(c) for c in args.connections.split(",")):
            runs.append((f"builder download --connections {n} ({head})", [python, "-m", "builder.cli", *download, "--connections", str(n)], REPO))
        runs.append(("hf download (huggingface_hub CLI, 8 workers)", [hf, "download", BENCH_REPO, "--include", "*.gguf"], REPO))

        rows = []
        with hub.redirecting(ttl=3600), hub.faulty(throttle=args.per_connection_mbs * MB, total=args.total_mbs * MB):
            for label, command, cwd in runs:
                folder = dest()
                extra = ["--local-dir", str(folder)] if command[0] == hf else ["--dest", str(folder)]
                hub.served = Served()
                server_cpu = time.process_time()
                wall, client_cpu = timed(command + extra, env, cwd)
                server_cpu = time.process_time() - server_cpu
                for name in names:
                    assert (folder / name).stat().st_size == size, (label, name)
                assert hub.served.bytes >= total, (label, hub.served.bytes)
                rate, transfer = total / wall / MB, hub.served.bytes / hub.served.seconds / MB
                rows.append((label, wall, rate, hub.served.seconds, transfer, transfer / args.total_mbs, client_cpu / wall, server_cpu / wall))
                print(f"{label}: {wall:.1f} s, {rate:.0f} MB/s; transfer {hub.served.seconds:.1f} s, {transfer:.0f} MB/s", file=sys.stderr, flush=True)
                shutil.rmtree(folder)

    print(f"Machine: {cpu_name()}, {os.cpu_count()} cores. Model: {args.shards} shards of {args.shard_mib} MiB "
          f"({total / 2**30:.1f} GiB, random bytes) on the local Hub, which redirects each file to another host with a signed "
          f"link, as huggingface.co does. Caps: {args.per_connection_mbs:g} MB/s per connection, {args.total_mbs:g} MB/s in all "
          f"(1 MB = 10^6 bytes). Wall: from start to exit, with the process start, the listing and the sha256 of the last "
          f"file (builder verifies every file; hf download verifies none). Transfer: the server's first body byte to its "
          f"last, all bytes it sent (the network path). CPU: seconds of CPU per second of wall time.\n")
    print("| client | wall s | wall MB/s | transfer s | transfer MB/s | of the total cap | client CPU | server CPU |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for label, wall, rate, seconds, transfer, fraction, client, server in rows:
        print(f"| {label} | {wall:.1f} | {rate:.0f} | {seconds:.1f} | {transfer:.0f} | {fraction:.0%} | {client:.2f} | {server:.2f} |")
    load = os.getloadavg()
    print(f"\nLoad average at the end (1, 5, 15 min): {load[0]:.1f}, {load[1]:.1f}, {load[2]:.1f} on {os.cpu_count()} cores.")


if __name__ == "__main__":
    main()
