#!/usr/bin/env bash
# `builder bench` against llama-server on the GPU machine: serves MODEL with the flags given, runs the bench at
# concurrency 1, 4 and 16, and keeps llama-server's own /metrics before and after beside the bench's results, so
# that docs/PERFORMANCE.md can quote both.
#
# usage, from the repository root on the GPU machine, after tests/gpu/llamacpp.sh has built llama.cpp:
#   bash tests/gpu/bench.sh OUT_DIR MODEL.gguf [LLAMA_SERVER_FLAGS...]
# e.g. bash tests/gpu/bench.sh $OUT/bench /tmp/r1kit-gpu/model-q4_0.gguf -ngl 99 --flash-attn on
# (WORK_DIR, default /tmp/r1kit-gpu, holds llamacpp.sh's build; CONCURRENCY, PROMPT_TOKENS, MAX_TOKENS, REQUESTS
# override the bench's settings; the builder package's dependencies must be importable by python3.)
set -euo pipefail

out=$(mkdir -p "${1:?usage: bench.sh OUT_DIR MODEL.gguf [LLAMA_SERVER_FLAGS...]}" && cd "$1" && pwd)
model=${2:?usage: bench.sh OUT_DIR MODEL.gguf [LLAMA_SERVER_FLAGS...]}
shift 2
repo=$(cd "$(dirname "$0")/../.." && pwd)
work=${WORK_DIR:-/tmp/r1kit-gpu}
concurrency=${CONCURRENCY:-1,4,16}
prompt=${PROMPT_TOKENS:-512}
max=${MAX_TOKENS:-128}
slots=${concurrency##*,}  # as many server slots as the highest level's requests in flight, so none waits for a slot
port=8091

printf 'bench-key-not-secret\n' > "$out/api-key"
# Every slot holds its own prompt and output: the context is their sum, with room for the chat template.
server=(llama-server -m "$model" -np "$slots" -c $(( slots * (prompt + max + 64) )) --metrics
  --api-key-file "$out/api-key" --host 127.0.0.1 --port "$port" "$@")
echo "${server[*]}" | tee "$out/server-command.txt"
env "LLAMACPP_HOME=$work/prefix" "PATH=$work/prefix/bin:$PATH" sh "$repo/images/llamacpp/entrypoint.sh" "${server[@]}" > "$out/server.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
PYTHONPATH="$repo/tests" python3 -c "from support.http import wait_until_healthy; wait_until_healthy('http://127.0.0.1:$port/health', timeout=600)"

metrics() { curl -sf -H "Authorization: Bearer bench-key-not-secret" "http://127.0.0.1:$port/metrics"; }
metrics > "$out/metrics-before.txt"
bench=(python3 -m builder.cli bench "http://127.0.0.1:$port" --api-key-file "$out/api-key" --concurrency "$concurrency"
  --prompt-tokens "$prompt" --max-tokens "$max" ${REQUESTS:+--requests "$REQUESTS"} --json "$out/bench.json")
# The plot needs matplotlib (the package's bench extra); without it the JSON holds everything to plot later.
python3 -c "import matplotlib" 2>/dev/null && bench+=(--plot "$out/bench.png")
echo "${bench[*]}" | tee "$out/bench-command.txt"
(cd "$repo" && "${bench[@]}") > "$out/bench.md" 2> "$out/bench.log"
metrics > "$out/metrics-after.txt"
cat "$out/bench.md"
# The engine's totals over the run (the bench's own setup requests included: see calibration.output_tokens).
for name in tokens_predicted_total tokens_predicted_seconds_total prompt_tokens_total prompt_seconds_total; do
  a=$(awk -v n="llamacpp:$name" '$1 == n {print $2}' "$out/metrics-before.txt")
  b=$(awk -v n="llamacpp:$name" '$1 == n {print $2}' "$out/metrics-after.txt")
  echo "engine $name: $(python3 -c "print($b - $a)")"
done | tee "$out/engine-totals.txt"
