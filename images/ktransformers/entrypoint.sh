#!/bin/sh
# The ktransformers image's entrypoint: picks the CPU kernel variant that runs on this CPU, then starts the server
# with every argument passed through (or the command named first: `docker run IMAGE python -c ...`).
#
# CPU kernels. kt-kernel carries one extension per x86 generation (amx, avx512_bf16, avx512_vbmi, avx512_vnni,
# avx512_base, avx2) and would load the best one the flags in /proc/cpuinfo name. Those flags can promise more than
# runs: AMX listed yet failing at the first tile instruction (docs/PERFORMANCE.md), a VM or emulator whose CPU is
# not the host's. So before the server starts, each variant runs a small expert computation in a child process, best
# first (cpu_probe.py), and the first that runs is the one loaded (KT_KERNEL_CPU_VARIANT). KT_CPU_VARIANT=<name>
# skips the probe.
#
# The server. Current route: `python -m sglang.launch_server` with --host and --port (KT_PORT) added, and:
# - --model: the first line of KT_MODEL_PATH_FILE (the model's folder, as model-init wrote it);
# - --kt-weight-path: the folder of the file named in KT_WEIGHT_PATH_FILE (model-init names a GGUF's first shard,
#   kt-kernel reads every shard of that folder);
# - --api-key: read from KT_API_KEY_FILE where it is non-empty (sglang takes the key only as an argument; read here,
#   it never appears in the container's configuration).
# Given in the arguments, each of them wins. Legacy route: ktransformers' own server (its flags use underscores).
# `--check-args ARGS...` parses the final argument list with the server's own parser and prints it (key hidden),
# starting nothing: the tests check every flag the stack passes this way.
set -eu

home=/opt/ktransformers
probe=$home/share/r1kit/cpu_probe.py
say() { echo "r1kit-entrypoint: $*" >&2; }

choose_cpu_variant() {
    want=${KT_CPU_VARIANT:-auto}
    if [ "$want" != auto ]; then
        # The probe checks the name and says which variants exist.
        python "$probe" --list "$want" >/dev/null || exit 1
        export KT_KERNEL_CPU_VARIANT="$want"
        say "CPU variant $want (KT_CPU_VARIANT)"
        return 0
    fi
    for variant in $(python "$probe" --list); do
        status=0
        KT_KERNEL_CPU_VARIANT=$variant timeout "${KT_CPU_PROBE_TIMEOUT:-120}" python "$probe" --variant "$variant" >/dev/null 2>&1 || status=$?
        if [ "$status" = 0 ]; then
            export KT_KERNEL_CPU_VARIANT="$variant"
            say "CPU variant $variant (the best that runs here)"
            return 0
        fi
        # 132: SIGILL (128 + 4), 134: an abort, 124: too slow
        say "CPU variant $variant failed the probe (exit $status)"
    done
    say "no CPU kernel variant of kt-kernel runs on this CPU (it needs at least AVX2)"
    exit 1
}

if [ "${1:-}" = --version ]; then
    python - <<'EOF'
from importlib.metadata import version
for name in ("ktransformers", "kt-kernel", "sglang-kt", "torch"):
    try:
        print(name, version(name))
    except Exception:
        pass
EOF
    echo "flash-attn $(cat "$home/share/r1kit/flash-attn")"
    exit 0
fi

# given FLAG ARGS...: whether FLAG (or FLAG=...) is among ARGS.
given() {
    flag=$1
    shift
    for arg in "$@"; do
        case $arg in "$flag"|"$flag"=*) return 0 ;; esac
    done
    return 1
}

# check_pointer VARIABLE FILE: FILE (model-init's pointer file) is readable and not empty, else a one-line error and
# exit (checked here, not inside the command substitution that reads it, whose exit would not stop the script).
check_pointer() {
    if [ ! -r "$2" ] || [ ! -s "$2" ]; then
        say "error: $1=$2 is not a readable, non-empty file (the path model-init writes); check the stack's model settings"
        exit 1
    fi
}

check=no
if [ "${1:-}" = --check-args ]; then
    check=yes
    shift
else
    choose_cpu_variant
fi

case ${1:-} in
    ''|-*) ;;
    *) exec "$@" ;;
esac

legacy=no
[ "${KT_ROUTE:-current}" = legacy ] && legacy=yes
if [ $legacy = yes ]; then
    model_flag=--model_path weights_flag=--gguf_path key_flag=--api_key
else
    model_flag=--model weights_flag=--kt-weight-path key_flag=--api-key
fi
given --host "$@" || set -- "$@" --host "${KT_HOST:-0.0.0.0}"
given --port "$@" || set -- "$@" --port "${KT_PORT:-30000}"
if [ -n "${KT_MODEL_PATH_FILE:-}" ] && ! given "$model_flag" "$@"; then
    check_pointer KT_MODEL_PATH_FILE "$KT_MODEL_PATH_FILE"
    set -- "$@" "$model_flag" "$(head -n 1 "$KT_MODEL_PATH_FILE")"
fi
if [ -n "${KT_WEIGHT_PATH_FILE:-}" ] && ! given "$weights_flag" "$@"; then
    check_pointer KT_WEIGHT_PATH_FILE "$KT_WEIGHT_PATH_FILE"
    set -- "$@" "$weights_flag" "$(dirname "$(head -n 1 "$KT_WEIGHT_PATH_FILE")")"
fi
if [ -n "${KT_API_KEY_FILE:-}" ] && [ -s "$KT_API_KEY_FILE" ] && ! given "$key_flag" "$@"; then
    key=$(cat "$KT_API_KEY_FILE")
    set -- "$@" "$key_flag" "$key"
fi

if [ $check = yes ]; then
    exec python "$home/share/r1kit/check_args.py" "$@"
fi
if [ $legacy = yes ]; then
    exec python -m ktransformers.server.main "$@"
fi
exec python -m sglang.launch_server "$@"
