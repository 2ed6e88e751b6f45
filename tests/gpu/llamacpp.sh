#!/usr/bin/env bash
# The CUDA llama.cpp image's compile flags, proven on a GPU machine that has no Docker.
#
# Runs images/llamacpp/build.sh unchanged with ACCELERATOR=cuda (the script the image's build stage runs),
# starts llama-server with the flags the stacks use, gets one chat completion from the GPU and records
# llama-bench pp512/tg128. Everything it learns lands in OUT_DIR; docs/PERFORMANCE.md quotes it.
#
# usage, from the repository root on the GPU machine: bash tests/gpu/llamacpp.sh LLAMA_CPP_TARBALL OUT_DIR
# (WORK_DIR, default /tmp/r1kit-gpu, holds the build; a rerun with the same tarball skips the compile.)
# (CUDA_ARCHITECTURES defaults to this GPU's, to keep the build short; the image builds 80;86;89;90;100;120.)
set -euo pipefail

tarball=${1:?usage: llamacpp.sh LLAMA_CPP_TARBALL OUT_DIR}
out=$(mkdir -p "${2:?usage: llamacpp.sh LLAMA_CPP_TARBALL OUT_DIR}" && cd "$2" && pwd)
repo=$(cd "$(dirname "$0")/../.." && pwd)
work=${WORK_DIR:-/tmp/r1kit-gpu}
# A finished build of the same tarball is reused, so that a second call on a warm machine skips the compile.
stamp=$(sha256sum "$tarball" | cut -d' ' -f1)
if [ "$(cat "$work/built-from" 2>/dev/null)" != "$stamp" ]; then
  rm -rf "$work" && mkdir -p "$work/src"
  tar -xzf "$tarball" -C "$work/src" --strip-components=1
fi

nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader | tee "$out/gpu.txt"
arch=${CUDA_ARCHITECTURES:-$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d .)}
echo "nvcc: $(nvcc --version | tail -1); cmake: $(cmake --version | head -1); cores: $(nproc)" | tee "$out/toolchain.txt"

if [ ! -e "$work/built-from" ]; then
  start=$(date +%s)
  ACCELERATOR=cuda CUDA_ARCHITECTURES=$arch JOBS=$(nproc) bash "$repo/images/llamacpp/build.sh" "$work/src" "$work/prefix" > "$out/build.log" 2>&1 \
    || { tail -40 "$out/build.log"; exit 1; }
  echo "build (CUDA_ARCHITECTURES=$arch, every CPU variant): $(( $(date +%s) - start )) s" | tee "$work/build-time.txt"
  echo "$stamp" > "$work/built-from"
fi
cat "$work/build-time.txt" >> "$out/toolchain.txt"
bin=$work/prefix/bin
# The tools run through the images' entrypoint, which picks the CPU kernels (the variants live outside bin/).
entrypoint=(env "LLAMACPP_HOME=$work/prefix" "PATH=$bin:$PATH" sh "$repo/images/llamacpp/entrypoint.sh")

# A 1.1B llama-architecture model with random weights (TinyLlama's shape), then Q4_0 with the image's quantizer.
PYTHONPATH="$work/src/gguf-py:$repo/tests" python3 -c "
from pathlib import Path
from support.tiny_gguf import write_tiny_model
write_tiny_model(Path('$work/model-f16.gguf'), n_embd=2048, n_layer=22, n_head=32, n_head_kv=4, n_ff=5632, n_vocab=32000, f16=True)"
"${entrypoint[@]}" llama-quantize "$work/model-f16.gguf" "$work/model-q4_0.gguf" Q4_0 > "$out/quantize.log" 2>&1

# Serve with the stacks' flags: every layer on the GPU, layer split over one GPU, flash attention, an API key.
server_flags=(-m "$work/model-q4_0.gguf" -ngl 99 --split-mode layer --tensor-split 1 --flash-attn on -c 4096
  --api-key gpu-test-key --host 127.0.0.1 --port 8090)
echo "llama-server ${server_flags[*]}" | tee "$out/server-flags.txt"
"${entrypoint[@]}" llama-server "${server_flags[@]}" > "$out/server.log" 2>&1 &
server=$!
PYTHONPATH="$repo/tests" python3 - "$out" <<'PY'
import json, sys
from support.http import post_json, wait_until_healthy
wait_until_healthy("http://127.0.0.1:8090/health", timeout=180)
answer = post_json("http://127.0.0.1:8090/v1/chat/completions",
                   {"messages": [{"role": "user", "content": "Count from one to ten in French"}], "max_tokens": 32},
                   token="gpu-test-key")
open(f"{sys.argv[1]}/chat.json", "w").write(json.dumps(answer, indent=2))
print("chat completion:", answer["usage"], answer.get("timings", {}).get("predicted_per_second"), "t/s")
PY
kill "$server"; wait "$server" || true
grep -E "offloaded|CUDA0|flash_attn|using device" "$out/server.log" | head -10 || true

bench_flags=(-ngl 99 -fa 1 -p 512 -n 128 -r 3)
echo "llama-bench ${bench_flags[*]}" > "$out/bench-flags.txt"
"${entrypoint[@]}" llama-bench -m "$work/model-q4_0.gguf" -m "$work/model-f16.gguf" "${bench_flags[@]}" -o json > "$out/bench.json" 2> "$out/bench.log"
python3 -c "
import json
for r in json.load(open('$out/bench.json')):
    print(r['model_type'], r['model_size'] // 2**20, 'MiB', 'pp' if r['n_prompt'] else 'tg', r['n_prompt'] or r['n_gen'], round(r['avg_ts'], 1), 't/s', r['gpu_info'])"
