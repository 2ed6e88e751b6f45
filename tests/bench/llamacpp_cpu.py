"""Benchmarks for docs/PERFORMANCE.md, measured side by side in one run on this machine (never a test gate).

(a) the portable CPU image (every CPU variant, picked at run time) against a -march=native build of the same
    source, llama-bench pp and tg on the same model, runs interleaved so drift hits both alike;
(b) the time of a rebuild after changing one runtime-stage line, and whether anything was recompiled.

usage (repo root, Docker running): python tests/bench/llamacpp_cpu.py LLAMA_CPP_SOURCE [--reps 3]
Prints a Markdown report on stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from builder.images import build, catalog  # noqa: E402
from builder.images.docker import find_backend  # noqa: E402
from support.prerequisites import ensure_base_image  # noqa: E402
from support.tiny_gguf import write_tiny_model  # noqa: E402

PORTABLE = "r1kit-bench/llamacpp-cpu:portable"
NATIVE = "r1kit-bench/llamacpp-cpu:native"


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def timed_build(plan: build.BuildPlan, backend) -> tuple[float, list[str]]:
    start = time.monotonic()
    log = build.run(plan, backend)
    return time.monotonic() - start, log


def bench(docker, image: str, models: Path, name: str, threads: int) -> list[dict]:
    out = docker.run(image, ["llama-bench", "-m", f"/models/{name}", "-p", "512", "-n", "128", "-r", "1", "-t", str(threads), "-o", "json"],
                     remove=True, volumes=[(str(models), "/models", "ro")])
    return json.loads(out[out.index("["):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    backend = find_backend()
    docker = backend.whales()
    target = catalog.load().get("llamacpp-cpu")
    base = ensure_base_image(docker)
    bases = (f"BUILD_IMAGE={base}", f"RUNTIME_IMAGE={base}")

    portable = build.plan(target, {}, tags=(PORTABLE,), source=args.source, build_args=bases)
    native = build.plan(target, {}, tags=(NATIVE,), source=args.source, build_args=(*bases, "CPU_TARGET=native"))
    t_portable, _ = timed_build(portable, backend)
    t_native, _ = timed_build(native, backend)

    # (b) one runtime-stage line changed: the compile step must come from the layer cache.
    line = "apt-get install -y --no-install-recommends ca-certificates curl libgomp1"
    edited = dataclasses.replace(portable, tags=("r1kit-bench/llamacpp-cpu:runtime-edit",),
                                 dockerfile=portable.dockerfile.replace(line, line + " less"))
    t_edit, edit_log = timed_build(edited, backend)
    compiled = sum("Building C" in entry for entry in edit_log)

    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp)
        models.chmod(0o755)
        # A 0.3B llama-shaped model with random weights, quantized to Q4_0 by the image's own llama-quantize.
        f16 = write_tiny_model(models / "bench-f16.gguf", n_embd=1024, n_layer=16, n_head=16, n_head_kv=4, n_ff=2816, n_vocab=32000, f16=True)
        docker.run(PORTABLE, ["llama-quantize", "/models/bench-f16.gguf", "/models/bench-q4_0.gguf", "Q4_0"], remove=True,
                   volumes=[(str(models), "/models", "rw")], user=f"{os.getuid()}:{os.getgid()}")
        threads = os.cpu_count() or 1
        results: dict[tuple[str, str], list[float]] = {}
        meta: dict[str, dict] = {}
        for _ in range(args.reps):
            for label, image in (("portable", PORTABLE), ("native", NATIVE)):
                for row in bench(docker, image, models, "bench-q4_0.gguf", threads):
                    test = f"pp{row['n_prompt']}" if row["n_prompt"] else f"tg{row['n_gen']}"
                    results.setdefault((label, test), []).append(row["avg_ts"])
                    meta[label] = row
        size_mib = f16.stat().st_size / 2**20

    # Medians, with the range: a run disturbed by other work on the machine moves a mean, not a median.
    def cell(label: str, test: str) -> str:
        xs = results[(label, test)]
        return f"{statistics.median(xs):.1f} ({min(xs):.1f} to {max(xs):.1f})"

    print(f"Machine: {cpu_name()}, {threads} cores; {args.reps} interleaved runs of `llama-bench -p 512 -n 128 -r 1 -t {threads}`")
    print(f"Model: llama-shaped, {meta['portable']['model_n_params'] / 1e6:.0f}M parameters, Q4_0 "
          f"({meta['portable']['model_size'] / 2**20:.0f} MiB; F16 source {size_mib:.0f} MiB), random weights\n")
    print("| build | pp512 t/s, median (range) | tg128 t/s, median (range) | CPU |")
    print("| --- | --- | --- | --- |")
    for label in ("portable", "native"):
        print(f"| {label} | {cell(label, 'pp512')} | {cell(label, 'tg128')} | {meta[label].get('cpu_info', '')} |")
    for test in ("pp512", "tg128"):
        p, n = statistics.median(results[("portable", test)]), statistics.median(results[("native", test)])
        print(f"\n{test}: portable / native = {p / n:.3f} ({(p - n) / n * 100:+.1f}%)", end="")
    print("\n")
    print(f"Build times: portable image {t_portable:.0f} s, native image {t_native:.0f} s (each with the layer and ccache caches as earlier builds left them).")
    print(f"Rebuild after changing one runtime-stage line: {t_edit:.1f} s, {compiled} compiler lines in the log "
          f"(the compile step {'was CACHED' if compiled == 0 else 'RAN'}).")


if __name__ == "__main__":
    main()
