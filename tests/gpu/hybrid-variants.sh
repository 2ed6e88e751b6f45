#!/usr/bin/env bash
# R1's hybrid recipe on the GPU machine: attention and shared parts on the GPU, routed experts on the CPU
# (-ngl 99 --n-cpu-moe 99), per CPU variant of the CUDA build: does the AMX variant run deepseek2 there, and how
# fast against the others? Decides what the entrypoint's probe should run in the CUDA image.
#
# usage, from the repository root: bash tests/gpu/hybrid-variants.sh LLAMA_CPP_TARBALL OUT_DIR
# (builds with tests/gpu/llamacpp.sh into WORK_DIR, default /tmp/r1kit-gpu, and its models with cpu-variants.sh)
set -uo pipefail
tarball=${1:?usage: hybrid-variants.sh LLAMA_CPP_TARBALL OUT_DIR}
out=$(mkdir -p "${2:?usage}" && cd "$2" && pwd)
repo=$(cd "$(dirname "$0")/../.." && pwd)
export WORK_DIR=${WORK_DIR:-/tmp/r1kit-gpu}
bash "$repo/tests/gpu/llamacpp.sh" "$tarball" "$out/gpu" > "$out/gpu-run.txt" 2>&1 || { tail -20 "$out/gpu-run.txt"; exit 1; }
MATRIX_VARIANTS=none BENCH=skip bash "$repo/tests/gpu/cpu-variants.sh" "$tarball" "$out/cpu" > /dev/null 2>&1
home=$WORK_DIR/prefix models=$WORK_DIR/models
echo "variant repack model pp512 tg128 (t/s, or the exit status)" | tee "$out/hybrid.txt"
for v in sapphirerapids zen4 icelake; do
  for repack in 1 0; do
    [ "$v" != sapphirerapids ] && [ "$repack" = 0 ] && continue
    for m in ds2-Q4_0 ds2-Q4_K_M ds2-f16; do
      json=$(GGML_BACKEND_PATH=$home/lib/ggml-cpu/libggml-cpu-$v.so timeout 120 "$home/bin/llama-bench" -m "$models/$m.gguf" \
        -ngl 99 --n-cpu-moe 99 -fa 1 -p 512 -n 128 -r 2 --repack "$repack" -o json 2> "$WORK_DIR/hybrid.err")
      rc=$?
      if [ "$rc" = 0 ]; then
        echo "$v $repack $m $(python3 -c 'import json, sys; print(" ".join("%.0f" % r["avg_ts"] for r in json.loads(sys.argv[1])))' "$json")"
      else
        echo "$v $repack $m exit $rc: $(grep -m1 GGML_ASSERT "$WORK_DIR/hybrid.err")"
      fi
    done
  done
done | tee -a "$out/hybrid.txt"
