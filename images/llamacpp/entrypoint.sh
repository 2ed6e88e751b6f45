#!/bin/sh
# The llama.cpp images' entrypoint: picks the CPU kernels that run on this CPU, then starts llama-server (or the
# llama.cpp tool named first: `docker run IMAGE llama-bench -m ...`) with every argument passed through.
#
# CPU kernels. The image carries one ggml CPU backend per x86 (or Arm) generation in $LLAMACPP_HOME/lib/ggml-cpu;
# ggml would load the one scoring highest for this CPU. On Xeons with AMX that one, sapphirerapids, aborts on
# DeepSeek-R1's architecture (deepseek2) unless weight repacking is off, and on some hosts dies with SIGILL on
# Q4_0/Q8_0/Q4_K weights, while it is the fastest for llama-architecture models where it runs (docs/PERFORMANCE.md).
# So before the server starts, the variants run a tiny Q4_0 model of the served model's architecture family
# (deepseek2, or llama for everything else) in a child process, best first, and the first that runs is loaded
# (GGML_BACKEND_PATH); the probe takes about 0.2 s. LLAMACPP_CPU_VARIANT=<name> skips the probe; a
# GGML_BACKEND_PATH set by the user wins, and LLAMA_ARG_REPACK (0 turns repacking off) applies to the probe too.
#
# The model. A split GGUF loads only given its first shard's real name (NAME-00001-of-0000N.gguf), which a compose
# file cannot know from the model's name alone. The stacks' model-init writes the path it downloaded to a pointer
# file; when LLAMA_ARG_MODEL is unset and LLAMA_MODEL_PATH_FILE names a readable file, its first line becomes
# LLAMA_ARG_MODEL. An explicit LLAMA_ARG_MODEL, or -m in the arguments, wins.
#
# An empty LLAMA_ARG_* counts as unset: compose passes every setting (`${LLAMACPP_TENSOR_SPLIT:-}`), and
# llama-server would otherwise parse "" as a value (and fail on -ts, -ncmoe, ...).
set -eu

home=${LLAMACPP_HOME:-/opt/llama.cpp}
variants=$home/lib/ggml-cpu

say() { echo "r1kit-entrypoint: $*" >&2; }

variant_name() {
    name=${1##*/libggml-cpu-}
    echo "${name%.so}"
}

# The GGUF's general.architecture: llama.cpp writes it as the first key, within the first 256 bytes.
model_arch() {
    head -c 256 "$1" 2>/dev/null | tr -cs 'a-z0-9_.' '\n' | sed -n '/^general\.architecture$/{n;p;q;}'
}

# The model llama-server will load: -m/--model in the arguments, else LLAMA_ARG_MODEL.
served_model() {
    model=${LLAMA_ARG_MODEL:-}
    while [ $# -gt 0 ]; do
        case $1 in
            -m|--model) model=${2:-}; shift ;;
            --model=*) model=${1#--model=} ;;
        esac
        shift
    done
    echo "$model"
}

# probe LIB REPACK: runs the probe model on one CPU variant; its exit status is the probe's (132: SIGILL,
# 134: an abort, 124: too slow).
probe() {
    log=$(mktemp 2>/dev/null) || log=/dev/null
    status=0
    GGML_BACKEND_PATH=$1 CUDA_VISIBLE_DEVICES="" timeout "${LLAMACPP_CPU_PROBE_TIMEOUT:-120}" \
        llama-bench -m "$probe_model" -p 32 -n 4 -r 1 -ngl 0 --repack "$2" -o csv >/dev/null 2>"$log" || status=$?
    if [ "$status" != 0 ]; then
        why=$(grep -m 1 'GGML_ASSERT' "$log" 2>/dev/null || grep -m 1 -E 'Illegal|error' "$log" 2>/dev/null || true)
        say "CPU variant $(variant_name "$1")$([ "$2" = 1 ] || echo ' without repacking') failed the probe (exit $status${why:+: $why})"
    fi
    [ "$log" = /dev/null ] || rm -f "$log"
    return "$status"
}

choose_cpu_variant() {
    if [ -n "${GGML_BACKEND_PATH:-}" ] || [ ! -d "$variants" ]; then
        return 0  # the user's own choice, or a build with a single CPU backend
    fi
    if [ -n "${LLAMACPP_CPU_VARIANT:-}" ] && [ "$LLAMACPP_CPU_VARIANT" != auto ]; then
        lib=$variants/libggml-cpu-$LLAMACPP_CPU_VARIANT.so
        if [ ! -f "$lib" ]; then
            say "LLAMACPP_CPU_VARIANT=$LLAMACPP_CPU_VARIANT is not in this image; choose auto or one of:" \
                "$(for l in "$variants"/libggml-cpu-*.so; do printf '%s ' "$(variant_name "$l")"; done)"
            exit 1
        fi
        export GGML_BACKEND_PATH="$lib"
        say "CPU variant $LLAMACPP_CPU_VARIANT (LLAMACPP_CPU_VARIANT)"
        return 0
    fi
    arch=deepseek2  # when the model is unknown: the architecture that reaches the most code paths
    model=$(served_model "$@")
    if [ -n "$model" ] && [ -r "$model" ]; then
        arch=$(model_arch "$model")
        [ "$arch" = deepseek2 ] || arch=llama
    fi
    probe_model=$home/share/r1kit/probe-$arch.gguf
    case ${LLAMA_ARG_REPACK:-1} in
        0|false|off|disabled) repack=0; LLAMA_ARG_REPACK=0 ;;  # normalised for llama-bench's flag below
        *) repack=1 ;;
    esac
    # Variants this CPU can run (score > 0), best first, as ggml ranks them.
    for lib in $(LD_LIBRARY_PATH="$home/bin" r1kit-cpu-variants "$variants"/libggml-cpu-*.so | sort -rn | sed -n 's/^[1-9][0-9]* //p'); do
        if probe "$lib" "$repack"; then
            export GGML_BACKEND_PATH="$lib"
            say "CPU variant $(variant_name "$lib") for a $arch model$([ "$repack" = 1 ] || echo ', repacking off')" \
                "(the best that ran the probe; LLAMACPP_CPU_VARIANT chooses another)"
            return 0
        fi
    done
    say "no CPU variant in $variants ran the probe model; set LLAMACPP_CPU_VARIANT (see docs/PERFORMANCE.md)"
    exit 1
}

for name in $(env | sed -n 's/^\(LLAMA_ARG_[A-Z0-9_]*\)=$/\1/p'); do
    unset "$name"
done

tool=llama-server
case ${1:-} in
    llama-server|llama-cli|llama-bench|llama-gguf-split|llama-quantize) tool=$1; shift ;;
esac

if [ "$tool" = llama-server ] && [ -z "${LLAMA_ARG_MODEL:-}" ] && [ -n "${LLAMA_MODEL_PATH_FILE:-}" ]; then
    if [ ! -r "$LLAMA_MODEL_PATH_FILE" ]; then
        say "LLAMA_MODEL_PATH_FILE=$LLAMA_MODEL_PATH_FILE is not a readable file"
        exit 1
    fi
    IFS= read -r LLAMA_ARG_MODEL < "$LLAMA_MODEL_PATH_FILE" || true  # a last line without a newline still reads
    if [ -z "$LLAMA_ARG_MODEL" ]; then
        say "$LLAMA_MODEL_PATH_FILE is empty"
        exit 1
    fi
    export LLAMA_ARG_MODEL
    say "model $LLAMA_ARG_MODEL (from $LLAMA_MODEL_PATH_FILE)"
fi

[ "$tool" = llama-gguf-split ] || choose_cpu_variant "$@"  # the only tool that computes nothing
# llama-bench reads no LLAMA_ARG_* variables: repacking off reaches it as its flag.
if [ "$tool" = llama-bench ] && [ "${LLAMA_ARG_REPACK:-}" = 0 ]; then
    case " $* " in *" --repack "*) ;; *) set -- "$@" --repack 0 ;; esac
fi
exec "$tool" "$@"
