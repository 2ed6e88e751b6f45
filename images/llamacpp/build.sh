#!/usr/bin/env bash
# Configure, compile and install llama.cpp's serving tools into PREFIX/bin.
# The Dockerfile runs this script, and so does tests/gpu/*.sh on a bare GPU machine: one set of flags for both.
#
# A portable build (CPU_TARGET=portable) also installs, for the entrypoint's choice of CPU kernels:
#   PREFIX/lib/ggml-cpu/libggml-cpu-<variant>.so   one CPU backend per instruction-set generation, kept out of
#                                                  bin/ so that ggml loads only the one GGML_BACKEND_PATH names
#   PREFIX/bin/r1kit-cpu-variants                  prints ggml's score of each variant for this CPU
#   PREFIX/share/r1kit/probe-<arch>.gguf           tiny Q4_0 models to probe with: llama, and deepseek2 (R1's)
# The probe models are written by tiny_gguf.py (beside this script) with the source's own gguf-py (needs python3,
# numpy and PyYAML).
#
# Before configuring, the patches in patches/ (beside this script) are applied to the source; one that upstream has
# already applied is skipped, one that fits neither way stops the build. After compiling, amx_tile_check.py (needs
# objdump) refuses any x86_64 CPU backend whose AMX kernels would load an empty tile configuration.
#
# usage: build.sh SOURCE_DIR PREFIX          configure, compile, install, and write the probe models
#        build.sh probes SOURCE_DIR PREFIX   only write the probe models (the Dockerfile's step after the compile,
#                                            so that an edit to tiny_gguf.py keeps the compile's layer)
# environment:
#   ACCELERATOR         cpu | cuda                                (default cpu)
#   CUDA_ARCHITECTURES  e.g. "80;86;89;90;100;120"                 (cuda only)
#   BLAS                none | blis                               (default none)
#   BLIS_PREFIX         holds BLIS's lib/ and include/blis/        (default /opt/blis)
#   CPU_TARGET          portable: every CPU variant, picked at run time; native: -march=native (default portable)
#   BUILD_DIR           cmake's build folder                      (default SOURCE_DIR/build)
#   JOBS                parallel compile jobs                     (default: all cores)
#   PROBES              yes | no: write the probe models after compiling (default yes)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)

write_probes() {  # SOURCE_DIR PREFIX: the tiny Q4_0 models the entrypoint probes each CPU variant with
  [ "${CPU_TARGET:-portable}" = portable ] || return 0
  install -d "$2/share/r1kit"
  for arch in llama deepseek2; do
    PYTHONPATH="$1/gguf-py" python3 "$here/tiny_gguf.py" "$arch" --quant q4_0 "$2/share/r1kit/probe-$arch.gguf"
  done
}

if [ "${1:-}" = probes ]; then
  write_probes "${2:?usage: build.sh probes SOURCE_DIR PREFIX}" "${3:?usage: build.sh probes SOURCE_DIR PREFIX}"
  exit 0
fi
src=${1:?usage: build.sh SOURCE_DIR PREFIX}
prefix=${2:?usage: build.sh SOURCE_DIR PREFIX}
build=${BUILD_DIR:-$src/build}
tools=(llama-server llama-cli llama-bench llama-gguf-split llama-quantize)

args=(
  -DCMAKE_BUILD_TYPE=Release
  -DLLAMA_BUILD_TESTS=OFF
  -DLLAMA_BUILD_EXAMPLES=OFF
  # HTTPS model fetching goes through OpenSSL (the libcurl option is deprecated and ignored upstream).
  -DLLAMA_OPENSSL=ON
  # The server's own web UI is fetched from the Hub at configure time; the stacks use Open WebUI instead.
  -DLLAMA_BUILD_UI=OFF
  -DLLAMA_USE_PREBUILT_UI=OFF
  # Binaries and libraries share one folder and find each other through $ORIGIN, wherever it is copied.
  -DCMAKE_BUILD_RPATH_USE_ORIGIN=ON
)
if command -v ccache >/dev/null; then
  args+=(-DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache)
fi

case ${CPU_TARGET:-portable} in
  portable) args+=(-DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON) ;;
  native) args+=(-DGGML_NATIVE=ON) ;;
  *) echo "build.sh: CPU_TARGET must be portable or native, not '$CPU_TARGET'" >&2; exit 2 ;;
esac

case ${ACCELERATOR:-cpu} in
  cpu) ;;
  cuda)
    args+=(-DGGML_CUDA=ON "-DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCHITECTURES:?set CUDA_ARCHITECTURES, e.g. 90}"
      # libcuda.so comes with the host driver at run time; the build links against the toolkit's stub.
      -DCMAKE_EXE_LINKER_FLAGS=-Wl,--allow-shlib-undefined)
    ;;
  *) echo "build.sh: ACCELERATOR must be cpu or cuda, not '$ACCELERATOR'" >&2; exit 2 ;;
esac

case ${BLAS:-none} in
  none) ;;
  blis)
    blis=${BLIS_PREFIX:-/opt/blis}
    args+=(-DGGML_BLAS=ON -DGGML_BLAS_VENDOR=FLAME "-DCMAKE_PREFIX_PATH=$blis" "-DBLAS_INCLUDE_DIRS=$blis/include/blis")
    ;;
  *) echo "build.sh: BLAS must be none or blis, not '$BLAS'" >&2; exit 2 ;;
esac

for patch in "$here"/patches/*.patch; do
  [ -e "$patch" ] || continue
  if patch -d "$src" -p1 -N --dry-run -s < "$patch" >/dev/null; then
    patch -d "$src" -p1 -N -s < "$patch"
    echo "build.sh: applied patches/${patch##*/}"
  elif patch -d "$src" -p1 -R --dry-run -s < "$patch" >/dev/null; then
    echo "build.sh: patches/${patch##*/} is already in this source; skipped (drop it once the pinned release has it)"
  else
    echo "build.sh: patches/${patch##*/} does not apply to this source: upstream changed the file it patches; check" \
      "whether upstream fixed it (then delete the patch) or refresh it" >&2
    exit 1
  fi
done

cmake -S "$src" -B "$build" "${args[@]}"
cmake --build "$build" --config Release -j "${JOBS:-$(nproc)}" --target "${tools[@]}"

install -d "$prefix/bin"
find "$build/bin" -maxdepth 1 -name '*.so*' -exec cp -P -t "$prefix/bin/" {} +
for tool in "${tools[@]}"; do
  install -m 0755 "$build/bin/$tool" "$prefix/bin/"
done

if [ "$(uname -m)" = x86_64 ]; then
  # The AMX kernels' tile configuration, read from the machine code: a miscompile there shows only on AMX hosts.
  mapfile -t cpu_backends < <(find "$prefix/bin" -name 'libggml-cpu*.so')
  [ ${#cpu_backends[@]} -gt 0 ] || cpu_backends=("$prefix/bin/llama-server")  # a static build
  python3 "$here/amx_tile_check.py" "${cpu_backends[@]}"
fi

if [ "${CPU_TARGET:-portable}" = portable ]; then
  install -d "$prefix/lib/ggml-cpu"
  mv "$prefix"/bin/libggml-cpu-*.so "$prefix/lib/ggml-cpu/"
  "${CC:-cc}" -O2 -o "$prefix/bin/r1kit-cpu-variants" "$here/cpu-variants.c" -ldl
fi
[ "${PROBES:-yes}" = no ] || write_probes "$src" "$prefix"
