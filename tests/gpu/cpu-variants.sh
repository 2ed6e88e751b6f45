#!/usr/bin/env bash
# The llama.cpp images' CPU kernels on the GPU machine's Xeon (it has AMX): which variants run which quant types,
# what each costs, and which one the images' entrypoint picks. No Docker there: the same build.sh and
# entrypoint.sh the images use, run directly.
#
# usage, from the repository root: bash tests/gpu/cpu-variants.sh LLAMA_CPP_TARBALL OUT_DIR
# (WORK_DIR, default /tmp/r1kit-cpu, holds the build; a rerun with the same tarball skips the compile, and a CUDA
# build of tests/gpu/llamacpp.sh in the same WORK_DIR serves as well. MATRIX_VARIANTS and BENCH narrow the runs;
# BENCH=skip leaves the speed runs out.)
set -uo pipefail
export CUDA_VISIBLE_DEVICES=""  # the CPU kernels alone, also with a CUDA build

tarball=${1:?usage: cpu-variants.sh LLAMA_CPP_TARBALL OUT_DIR}
out=$(mkdir -p "${2:?usage: cpu-variants.sh LLAMA_CPP_TARBALL OUT_DIR}" && cd "$2" && pwd)
repo=$(cd "$(dirname "$0")/../.." && pwd)
work=${WORK_DIR:-/tmp/r1kit-cpu}
threads=${THREADS:-$(nproc)}
stamp=$(sha256sum "$tarball" | cut -d' ' -f1)
if [ "$(cat "$work/built-from" 2>/dev/null)" != "$stamp" ]; then
  rm -rf "$work" && mkdir -p "$work/src"
  tar -xzf "$tarball" -C "$work/src" --strip-components=1
fi

{ lscpu | grep -E 'Model name|^CPU\(s\)|Thread|Socket|NUMA node\(s\)'; grep -o 'amx[a-z0-9_]*\|avx512[a-z0-9_]*\|avx_vnni' /proc/cpuinfo | sort -u | tr '\n' ' '; echo; uname -r; } | tee "$out/cpu.txt"

if [ ! -e "$work/built-from" ]; then
  start=$(date +%s)
  ACCELERATOR=cpu JOBS=$(nproc) bash "$repo/images/llamacpp/build.sh" "$work/src" "$work/prefix" > "$work/build.log" 2>&1 \
    || { tail -40 "$work/build.log"; exit 1; }
  echo "build (cpu, every CPU variant): $(( $(date +%s) - start )) s" | tee "$work/build-time.txt"
  echo "$stamp" > "$work/built-from"
fi
cat "$work/build-time.txt" | tee -a "$out/cpu.txt"
home=$work/prefix
bin=$home/bin
export PATH="$bin:$PATH"
LD_LIBRARY_PATH=$bin r1kit-cpu-variants "$home"/lib/ggml-cpu/*.so | sort -rn > "$work/scores.txt"
{ echo "ggml's scores of the CPU variants here:"; cat "$work/scores.txt"; } | tee -a "$out/cpu.txt"

# Models: llama of 246M parameters (the CPU benchmark's shape) and an R1-shaped deepseek2, each F16 and quantized
# with the build's own llama-quantize into the types the AMX path takes.
models=$work/models
mkdir -p "$models"
if [ ! -e "$models/done" ]; then
  PYTHONPATH="$work/src/gguf-py:$repo/images/llamacpp" python3 - "$models" <<'PY'
import sys
from pathlib import Path
from tiny_gguf import Deepseek2, write_tiny_deepseek2, write_tiny_model
m = Path(sys.argv[1])
write_tiny_model(m / "llama-f16.gguf", n_embd=1024, n_layer=16, n_head=16, n_head_kv=4, n_ff=2816, n_vocab=32000, f16=True)
write_tiny_deepseek2(m / "ds2-f16.gguf", Deepseek2(n_embd=1024, n_layer=4, n_head=8, q_lora_rank=256, kv_lora_rank=256,
                     qk_rope_dim=32, qk_nope_dim=64, v_head_dim=64, n_ff=2816, n_ff_exp=512, n_expert=32,
                     n_expert_used=4), n_vocab=32000, quant="f16")
PY
  for arch in llama ds2; do
    for q in Q4_0 Q8_0 Q4_K_M; do
      GGML_BACKEND_PATH=$home/lib/ggml-cpu/libggml-cpu-haswell.so llama-quantize "$models/$arch-f16.gguf" "$models/$arch-$q.gguf" "$q" > /dev/null 2>&1 \
        || echo "quantize $arch $q failed"
    done
  done
  touch "$models/done"
fi
ls -la "$models" >> "$out/cpu.txt"

# 1. Does it run? The variants a user's Xeon may load, every model (exit 132 is SIGILL, 134 an abort), and the
#    AMX variant with repacking off.
matrix_variants=${MATRIX_VARIANTS:-sapphirerapids zen4 cooperlake icelake alderlake skylakex haswell}
echo "variant model repack exit" > "$out/matrix.txt"
: > "$out/failures.txt"
run_one() {  # run_one VARIANT MODEL REPACK
  lib=$home/lib/ggml-cpu/libggml-cpu-$1.so
  GGML_BACKEND_PATH=$lib timeout 60 llama-bench -m "$2" -p 32 -n 4 -r 1 -t "$threads" --repack "$3" -o csv > /dev/null 2> "$work/last.err"
  rc=$?
  echo "$1 $(basename "$2" .gguf) $3 $rc" >> "$out/matrix.txt"
  [ "$rc" = 0 ] || { echo "--- $1 $(basename "$2") repack=$3 exit $rc"; grep -v '^\s*$' "$work/last.err" | tail -2; } >> "$out/failures.txt"
}
for v in $matrix_variants; do
  grep -q "libggml-cpu-$v.so" "$work/scores.txt" && grep -q "^[1-9][0-9]* .*libggml-cpu-$v.so" "$work/scores.txt" || { echo "$v: not runnable here" >> "$out/matrix.txt"; continue; }
  for model in "$models"/*.gguf; do run_one "$v" "$model" 1; done
done
for model in "$models"/*.gguf; do run_one sapphirerapids "$model" 0; done
column -t "$out/matrix.txt" || cat "$out/matrix.txt"
cat "$out/failures.txt"

# 2. What the entrypoint picks for each model, in its own words, and what the probe costs at start.
: > "$out/entrypoint.txt"
for m in llama-Q4_0 llama-Q4_K_M ds2-Q4_0 ds2-Q4_K_M ds2-f16; do
  start=$(date +%s.%N)
  LLAMACPP_HOME=$home sh "$repo/images/llamacpp/entrypoint.sh" llama-bench -m "$models/$m.gguf" -p 32 -n 4 -r 1 -o csv \
    > /dev/null 2> "$work/entrypoint.err"
  rc=$?
  { echo "== $m: exit $rc, $(awk "BEGIN { printf \"%.1f\", $(date +%s.%N) - $start }") s with the bench"; grep -E "r1kit|loaded CPU" "$work/entrypoint.err"; } >> "$out/entrypoint.txt"
done
start=$(date +%s.%N)
LLAMACPP_HOME=$home sh "$repo/images/llamacpp/entrypoint.sh" llama-quantize --help > /dev/null 2>&1
echo "== the probe alone (no model named: deepseek2), then llama-quantize --help: $(awk "BEGIN { printf \"%.1f\", $(date +%s.%N) - $start }") s" >> "$out/entrypoint.txt"
cat "$out/entrypoint.txt"

# 3. Speed, side by side, one model at a time (a crash loses only its own row).
rm -f "$out/bench.jsonl"
bench() {  # bench LABEL VARIANT REPACK
  for m in llama-Q4_0 llama-Q8_0 llama-Q4_K_M ds2-Q4_0 ds2-Q8_0 ds2-Q4_K_M; do
    GGML_BACKEND_PATH=$home/lib/ggml-cpu/libggml-cpu-$2.so timeout 120 llama-bench -m "$models/$m.gguf" \
      -p 512 -n 128 -r 2 -t "$threads" --repack "$3" -o jsonl 2>/dev/null | sed "s/^{/{\"label\": \"$1\", /" >> "$out/bench.jsonl"
  done
}
[ "${BENCH:-}" = skip ] && exit 0
for label in ${BENCH:-sapphirerapids:sapphirerapids:1 sapphirerapids-repack0:sapphirerapids:0 zen4:zen4:1 icelake:icelake:1 haswell:haswell:1}; do
  IFS=: read -r l v r <<< "$label"
  grep -q "^[1-9][0-9]* .*libggml-cpu-$v.so" "$work/scores.txt" && bench "$l" "$v" "$r"
done
python3 - "$out/bench.jsonl" <<'PY' | tee "$out/bench.md"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
print("| variant | model | pp512 t/s | tg128 t/s |")
print("| --- | --- | --- | --- |")
seen = {}
for r in rows:
    key = (r["label"], r["model_filename"].rsplit("/", 1)[-1])
    seen.setdefault(key, {})["pp" if r["n_prompt"] else "tg"] = f'{r["avg_ts"]:.1f} ± {r["stddev_ts"]:.1f}'
for (label, model), v in seen.items():
    print(f"| {label} | {model} | {v.get('pp', '-')} | {v.get('tg', '-')} |")
PY
