#!/usr/bin/env bash
# The AMX tile-configuration miscompile on the GPU machine's compiler (GCC 13, the CUDA image's major version; no
# Docker there): llama.cpp's sapphirerapids CPU backend built from the unpatched source, then judged by
# images/llamacpp/amx_tile_check.py and run on this AMX Xeon; then tests/gpu/cpu-variants.sh (build.sh applies
# images/llamacpp/patches/ and runs the same check) for the variants' matrix and speed.
#
# usage, from the repository root on the GPU machine: bash tests/gpu/amx.sh LLAMA_CPP_TARBALL OUT_DIR
set -uo pipefail

tarball=${1:?usage: amx.sh LLAMA_CPP_TARBALL OUT_DIR}
out=$(mkdir -p "${2:?usage: amx.sh LLAMA_CPP_TARBALL OUT_DIR}" && cd "$2" && pwd)
repo=$(cd "$(dirname "$0")/../.." && pwd)
work=${AMX_WORK_DIR:-/tmp/r1kit-amx-unpatched}

{
  echo "compiler: $(gcc --version | head -1)"
  rm -rf "$work" && mkdir -p "$work/src"
  tar -xzf "$tarball" -C "$work/src" --strip-components=1
  start=$(date +%s)
  cmake -S "$work/src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON \
    -DGGML_CPU_ALL_VARIANTS=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF > "$work/cmake.log" 2>&1 || tail -20 "$work/cmake.log"
  cmake --build "$work/build" -j "$(nproc)" --target ggml-cpu-sapphirerapids > "$work/build.log" 2>&1 || tail -20 "$work/build.log"
  echo "unpatched sapphirerapids backend built in $(( $(date +%s) - start )) s"
  lib=$(find "$work/build" -name 'libggml-cpu-sapphirerapids.so' | head -1)
  echo "amx_tile_check on the unpatched build (exit status, then its words):"
  python3 "$repo/images/llamacpp/amx_tile_check.py" "$lib" 2>&1
  echo "exit $?"
  objdump -d --no-show-raw-insn "$lib" | grep -B8 -m2 ldtilecfg
} > "$out/unpatched-gcc13.txt" 2>&1
cat "$out/unpatched-gcc13.txt"

# The patched build, the check inside build.sh, every variant against every model, the entrypoint's choice, speed.
BENCH=${BENCH:-sapphirerapids:sapphirerapids:1 sapphirerapids-repack0:sapphirerapids:0 zen4:zen4:1 icelake:icelake:1} \
  bash "$repo/tests/gpu/cpu-variants.sh" "$tarball" "$out"
grep -h "amx_tile_check\|applied patches" /tmp/r1kit-cpu/build.log > "$out/patched-check.txt" 2>/dev/null
cat "$out/patched-check.txt"

# The unpatched backend on this CPU, with the patched build's llama-bench (the same ggml ABI).
lib=$(find "$work/build" -name 'libggml-cpu-sapphirerapids.so' | head -1)
for m in llama-Q4_0 llama-Q4_K_M; do
  GGML_BACKEND_PATH=$lib timeout 60 /tmp/r1kit-cpu/prefix/bin/llama-bench -m "/tmp/r1kit-cpu/models/$m.gguf" -p 32 -n 4 -r 1 \
    -o csv > /dev/null 2>&1
  echo "unpatched sapphirerapids, $m: exit $?"
done | tee -a "$out/unpatched-gcc13.txt"
