"""DeepSeek-R1's routed-expert layer on this CPU: kt-kernel's kernels (ktransformers image) against llama.cpp's CPU
kernels (llama.cpp CPU image), side by side in one run, on the same GGUF weights. For docs/PERFORMANCE.md, never a
test gate.

The layer: hidden 7168, expert FFN 2048, 8 experts per token (R1's shapes) out of 32 (R1 has 256; 32 keep the files
small here, and a token reads the same 8 experts either way), at Q4_K and Q8_0 (`llama-quantize --pure`, every
matrix of one type). kt-kernel runs the routed experts alone (tests/bench/kt_experts.py, its LLAMAFILE kernels as
the server uses them with --kt-method LLAMAFILE); llama.cpp runs a one-layer `deepseek2` model of those shapes with
llama-bench (tg: a batch of 1, pp32: a batch of 32), which also computes the shared expert (one more expert's
work), a small MLA attention and the output head, so its numbers are an upper bound of its expert time.

usage (repo root, Docker running, both images built): python tests/bench/ktransformers_experts.py \
    --kt-image IMAGE --llamacpp-image IMAGE [--threads N] [--variant avx512_bf16 --variant avx2]
Prints a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

from support.tiny_gguf import write_tiny_deepseek2  # noqa: E402

SHAPE = dict(n_embd=7168, n_layer=1, n_dense_lead=0, n_ff_exp=2048, n_expert=32, n_expert_used=8, n_expert_shared=1,
             n_head=4, q_lora_rank=256, kv_lora_rank=256, qk_rope_dim=64, qk_nope_dim=64, v_head_dim=64)


def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], check=True, capture_output=True, text=True).stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kt-image", required=True)
    parser.add_argument("--llamacpp-image", required=True)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--variant", action="append", help="kt-kernel CPU variants (default: avx512_bf16, avx2; amx where the CPU has it)")
    parser.add_argument("--llamacpp-variant", action="append", help="llama.cpp CPU variants (default: the entrypoint's choice, and haswell)")
    args = parser.parse_args()
    variants = args.variant or ["avx512_bf16", "avx2"]
    ll_variants = args.llamacpp_variant or ["auto", "haswell"]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="kt-bench-") as tmp:
        folder = Path(tmp)
        folder.chmod(0o777)
        print("writing the F16 layer ...", file=sys.stderr, flush=True)
        write_tiny_deepseek2(folder / "layer-F16.gguf", quant="f16", **SHAPE)
        (folder / "layer-F16.gguf").chmod(0o644)
        mount = ["-v", f"{folder}:/bench"]
        for qtype in ("Q4_K", "Q8_0"):
            print(f"quantizing to {qtype} ...", file=sys.stderr, flush=True)
            docker("run", "--rm", *mount, args.llamacpp_image, "llama-quantize", "--pure", "/bench/layer-F16.gguf", f"/bench/layer-{qtype}.gguf", qtype)
        (folder / "layer-F16.gguf").unlink()
        for qtype in ("Q4_K", "Q8_0"):
            for variant in ll_variants:
                print(f"llama.cpp {variant} {qtype} ...", file=sys.stderr, flush=True)
                out = docker("run", "--rm", *mount, "-e", f"LLAMACPP_CPU_VARIANT={variant}", args.llamacpp_image, "llama-bench",
                             "-m", f"/bench/layer-{qtype}.gguf", "-p", "32", "-n", "16", "-r", "5", "-t", str(args.threads), "-ngl", "0", "-o", "json")
                for r in json.loads(out):
                    batch = 32 if r["n_prompt"] else 1
                    rows.append(dict(engine="llama.cpp", variant=variant, type=qtype, batch=batch, threads=args.threads,
                                     ms=batch * 1000 / r["avg_ts"]))
            print(f"kt-kernel {qtype} ...", file=sys.stderr, flush=True)
            script = REPO / "tests/bench/kt_experts.py"
            cmd = ["run", "--rm", *mount, "-v", f"{script}:/kt_experts.py:ro", "--entrypoint", "python", args.kt_image, "/kt_experts.py",
                   f"/bench/layer-{qtype}.gguf", "--threads", str(args.threads)]
            for v in variants:
                cmd += ["--variant", v]
            for line in docker(*cmd).splitlines():
                if line.startswith("{"):
                    rows.append(json.loads(line))
    print("| engine | CPU variant | weights | batch | ms per layer (routed experts) | tokens/s per layer |\n| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        if "error" in r:
            print(f"| {r['engine']} | {r['variant']} | | | failed: {r['error'].splitlines()[-1] if r['error'] else ''} | |")
            continue
        print(f"| {r['engine']} | {r['variant']} | {r['type']} | {r['batch']} | {r['ms']:.2f} | {r['batch'] * 1000 / r['ms']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
