"""kt-kernel's routed-expert kernels on DeepSeek-R1's expert shapes, run inside the ktransformers image (no torch):
one MoE layer's routed experts read from a GGUF (the weights llama.cpp runs too: LLAMAFILE reads GGUF experts as
they are), 8 experts per token, a batch of 1 and of 32 tokens, on each CPU variant asked for.

usage (inside the image): python kt_experts.py GGUF --variant avx512_bf16 --variant avx2 [--threads N] [--reps 20]
Prints one JSON object per (variant, batch): median ms per forward of the layer's routed experts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, "/opt/ktransformers/share/r1kit")
import cpu_probe  # noqa: E402  (the image's probe: how to load one variant's extension)


def measure(path: str, variant: str, threads: int, batches: list[int], reps: int) -> list[dict]:
    from gguf import GGUFReader

    ext = cpu_probe.load(variant)
    reader = GGUFReader(path)
    t = {x.name: x for x in reader.tensors}
    gate, up, down = (t[f"blk.0.ffn_{n}_exps.weight"] for n in ("gate", "up", "down"))
    hidden, inter, experts = (int(d) for d in gate.shape)
    top_k = int(reader.fields["deepseek2.expert_used_count"].parts[-1][0])
    weights = [np.ascontiguousarray(x.data) for x in (gate, up, down)]
    types = [getattr(ext.kvcache.ggml_type, x.tensor_type.name) for x in (gate, up, down)]

    pool = ext.WorkerPoolConfig()
    pool.subpool_count, pool.subpool_numa_map, pool.subpool_thread_count = 1, [0], [threads]
    cpu = ext.CPUInfer(pool)
    mask = np.zeros(experts, dtype=np.bool_)
    cfg = ext.moe.MOEConfig(experts, top_k, hidden, inter, mask.ctypes.data)
    cfg.layer_idx, cfg.pool, cfg.m_block, cfg.group_min_len = 0, cpu.backend_, 32, 10
    cfg.max_len = cfg.group_max_len = max(max(batches), 32)
    cfg.gate_proj, cfg.up_proj, cfg.down_proj = (w.ctypes.data for w in weights)
    cfg.gate_type, cfg.up_type, cfg.down_type = types
    cfg.hidden_type = ext.kvcache.ggml_type.BF16
    moe = ext.moe.MOE(cfg)
    mapping = np.arange(experts, dtype=np.int32)
    cpu.submit(moe.load_weights_task(mapping.ctypes.data))
    cpu.sync()

    rng = np.random.default_rng(0)
    rows = []
    for qlen in batches:
        x, _ = cpu_probe.bf16(rng.standard_normal((qlen, hidden), dtype=np.float32))
        out = np.zeros((qlen, hidden), dtype=np.uint16)
        bsz = np.array([qlen], dtype=np.int32)
        times = []
        for rep in range(reps + 3):
            ids = np.stack([rng.choice(experts, top_k, replace=False) for _ in range(qlen)]).astype(np.int64)
            w = rng.random((qlen, top_k), dtype=np.float32)
            start = time.perf_counter()
            cpu.submit(moe.forward_task(bsz.ctypes.data, top_k, ids.ctypes.data, w.ctypes.data, x.ctypes.data, out.ctypes.data, False))
            cpu.sync()
            if rep >= 3:  # three warm-up runs
                times.append((time.perf_counter() - start) * 1000)
        rows.append(dict(engine="kt-kernel", variant=variant, type=gate.tensor_type.name, batch=qlen, experts=experts, top_k=top_k,
                         hidden=hidden, inter=inter, threads=threads, ms=statistics.median(times)))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("gguf")
    parser.add_argument("--variant", action="append", required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, action="append", default=None)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a child measuring one variant
    args = parser.parse_args()
    batches = args.batch or [1, 32]
    if args.one:
        for row in measure(args.gguf, args.variant[0], args.threads, batches, args.reps):
            print(json.dumps(row), flush=True)
        return 0
    # One process per variant: an extension, once loaded, stays for the life of the process.
    for variant in args.variant:
        cmd = [sys.executable, __file__, args.gguf, "--variant", variant, "--threads", str(args.threads), "--reps", str(args.reps), "--one"]
        for b in batches:
            cmd += ["--batch", str(b)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        rows = [line for line in out.stdout.splitlines() if line.startswith("{")]
        print("\n".join(rows) if rows else json.dumps({"engine": "kt-kernel", "variant": variant, "error": (out.stderr or out.stdout)[-300:]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
