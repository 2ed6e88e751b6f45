#!/usr/bin/env bash
# `builder plan`'s proof on a GPU machine (no Docker there): an R1-shaped model that does not fit the GPU memory
# left to it, and four ways to run it side by side, each with llama-bench pp512/tg128:
#   recipe   -ngl N, the largest N that loads (the recipes' style)
#   cpu-moe  every layer on the GPU, every routed expert in RAM (-ot 'ffn_.*_exps=CPU')
#   fit      llama.cpp's own --fit (llama-bench -fitt 1024: fit with its default 1024 MiB margin)
#   plan     what `builder plan MODEL.gguf` says (its -ngl and --n-cpu-moe)
# then `builder bench` against llama-server started with the plan's flags.
#
# Two phases, because the CUDA build alone takes most of one device call:
#   bash tests/gpu/plan.sh build LLAMA_CPP_TARBALL OUT_DIR   compile (images/llamacpp/build.sh, sm_90) and write the model
#   bash tests/gpu/plan.sh bench LLAMA_CPP_TARBALL OUT_DIR   hold all but FREE_GIB of the GPU, run the four, bench the plan
# WORK_DIR (default /tmp/r1kit-plan) keeps the build and the model between the phases; WHEELS (default .cache/wheels)
# holds the builder package's dependencies as wheels (the machine has no network).
set -euo pipefail

phase=${1:?usage: plan.sh build|bench LLAMA_CPP_TARBALL OUT_DIR}
tarball=${2:?usage: plan.sh build|bench LLAMA_CPP_TARBALL OUT_DIR}
out=$(mkdir -p "${3:?usage: plan.sh build|bench LLAMA_CPP_TARBALL OUT_DIR}" && cd "$3" && pwd)
repo=$(cd "$(dirname "$0")/../.." && pwd)
work=${WORK_DIR:-/tmp/r1kit-plan}
free_gib=${FREE_GIB:-24}
moe_layers=${MOE_LAYERS:-5}
model=$work/r1-shaped-Q4_K.gguf
bin=$work/prefix/bin
py=$work/py
entrypoint=(env "LLAMACPP_HOME=$work/prefix" "PATH=$bin:$PATH" sh "$repo/images/llamacpp/entrypoint.sh")
builder=(env "PYTHONPATH=$repo:$py:$work/src/gguf-py" python3 -m builder.cli)
log() { echo "[$(date +%T)] $*" | tee -a "$out/steps.txt"; }

if [ "$phase" = build ]; then
  rm -rf "$work" && mkdir -p "$work/src" "$py"
  tar -xzf "$tarball" -C "$work/src" --strip-components=1
  nvidia-smi --query-gpu=name,memory.total,memory.free,driver_version,compute_cap --format=csv,noheader | tee "$out/gpu.txt"
  lscpu | grep -E "Model name|^CPU\(s\)|Thread|NUMA node\(s\)" | tee "$out/cpu.txt"
  python3 -m pip install -q --no-index --no-deps --target "$py" "${WHEELS:-$repo/.cache/wheels}"/*.whl > "$out/pip.txt" 2>&1 || { cat "$out/pip.txt"; exit 1; }
  log "build start"
  start=$(date +%s)
  ( ACCELERATOR=cuda CUDA_ARCHITECTURES=90 JOBS=$(nproc) bash "$repo/images/llamacpp/build.sh" "$work/src" "$work/prefix" > "$out/build.log" 2>&1
    # llama.cpp's own answer to "what fits", printed as flags (it runs from the build folder, beside its libraries).
    cmake --build "$work/src/build" -j "$(nproc)" --target llama-fit-params >> "$out/build.log" 2>&1 ) &
  builder_pid=$!
  PYTHONPATH="$work/src/gguf-py:$repo/images/llamacpp:$repo/tests/gpu" python3 "$repo/tests/gpu/r1_shaped.py" "$model" --moe-layers "$moe_layers" | tee -a "$out/steps.txt"
  wait "$builder_pid" || { tail -40 "$out/build.log"; exit 1; }
  log "build done in $(( $(date +%s) - start )) s"
  "${builder[@]}" plan "$model" --json > "$out/plan-unfilled.json" 2> "$out/plan-unfilled.err" || cat "$out/plan-unfilled.err"
  touch "$work/built"
  exit 0
fi

[ "$phase" = bench ] || { echo "plan.sh: phase must be build or bench" >&2; exit 2; }
[ -e "$work/built" ] || { echo "plan.sh: no build in $work: the machine went cold between the phases; run the build phase again" >&2; exit 3; }

# Hold all but FREE_GIB of each GPU's memory, as if the cards were smaller (the recipes' 24 GB RTX 4090s). A previous
# run's readiness file would let this one plan before the filler holds anything.
rm -f "$work/filler.ready"
python3 - "$free_gib" "$work/filler.ready" <<'PY' &
import sys, time, torch
keep = int(float(sys.argv[1]) * 2**30)
held, lines = [], []
for d in range(torch.cuda.device_count()):
    free, total = torch.cuda.mem_get_info(d)
    held.append(torch.empty(max(free - keep, 0), dtype=torch.uint8, device=f"cuda:{d}"))
    lines.append(f"GPU{d}: held {held[-1].numel() / 2**30:.1f} GiB of {total / 2**30:.1f}")
open(sys.argv[2], "w").write("\n".join(lines) + "\n")
time.sleep(3600)
PY
filler=$!
trap 'kill $filler 2>/dev/null || true' EXIT
for _ in $(seq 120); do [ -e "$work/filler.ready" ] && break; sleep 0.5; done
cat "$work/filler.ready" | tee -a "$out/steps.txt"
nvidia-smi --query-gpu=memory.total,memory.used,memory.free --format=csv,noheader | tee -a "$out/steps.txt"

log "plan"
"${builder[@]}" plan "$model" > "$out/plan.txt" 2>&1 || { cat "$out/plan.txt"; exit 1; }
"${builder[@]}" plan "$model" --json > "$out/plan.json"
cat "$out/plan.txt"
# llama-bench separates GPUs in a split with '/' (a ',' separates values to sweep).
read -r ngl ncmoe split < <(python3 -c "
import json; s = json.load(open('$out/plan.json'))['settings']
print(99 if s['LLAMACPP_N_GPU_LAYERS'] == 'all' else s['LLAMACPP_N_GPU_LAYERS'], s['LLAMACPP_N_CPU_MOE'] or 0,
      s['LLAMACPP_TENSOR_SPLIT'].replace(',', '/') or '-')")
gpus=$(nvidia-smi --query-gpu=name --format=csv,noheader | wc -l)
threads=$(nproc)

log "fit-params"
# Not an image tool, so not through the entrypoint: the CPU variant the entrypoint picks for deepseek2 is named here.
GGML_BACKEND_PATH=$work/prefix/lib/ggml-cpu/libggml-cpu-${FIT_CPU_VARIANT:-zen4}.so "$work/src/build/bin/llama-fit-params" \
  -m "$model" -c 8192 -fa on > "$out/fit-params.txt" 2> "$out/fit-params.log" || tail -5 "$out/fit-params.log"
cat "$out/fit-params.txt"

common=(-m "$model" -fa 1 -t "$threads" -p 512 -n 128 -r 2 -o json)
bench() {  # bench NAME ARGS...: one llama-bench row, or the reason it failed
  local name=$1; shift
  log "llama-bench $name: $*"
  if "${entrypoint[@]}" llama-bench "${common[@]}" "$@" > "$out/bench-$name.json" 2> "$out/bench-$name.log"; then
    return 0
  fi
  echo "$name failed: $(grep -iE "out of memory|failed|error" "$out/bench-$name.log" | head -2 | tr '\n' ' ')" | tee -a "$out/steps.txt"
  return 1
}

# The recipes' style: the largest -ngl that loads, found top down (each failed try is a quick out-of-memory).
layers=$(( 3 + moe_layers ))
for n in $(seq "$layers" -1 0); do
  if "${entrypoint[@]}" llama-bench -m "$model" -fa 1 -t "$threads" -ngl "$n" -p 0 -n 1 -r 1 > /dev/null 2>&1; then
    echo "recipe: -ngl $n is the largest that loads" | tee -a "$out/steps.txt"
    break
  fi
done
bench recipe -ngl "$n" || true
bench cpu-moe -ngl 99 -ot 'ffn_.*_exps=CPU' || true
bench fit -fitt 1024 || true
if [ "$gpus" -gt 1 ]; then
  # Several GPUs: the plan's split against an even one, and layer against row split (issue 10).
  even=$(python3 -c "print('/'.join(['1'] * $gpus))")
  bench even -ngl "$ngl" -ncmoe "$ncmoe" -sm layer -ts "$even" || true
  bench row -ngl "$ngl" -ncmoe "$ncmoe" -sm row -ts "$split" || true
  bench plan -ngl "$ngl" -ncmoe "$ncmoe" -sm layer -ts "$split" || true
else
  bench plan -ngl "$ngl" -ncmoe "$ncmoe" || true
fi

python3 - "$out" <<'PY' | tee "$out/table.md"
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
print("| way | settings | pp512 t/s | tg128 t/s |")
print("| --- | --- | ---: | ---: |")
for name in ("recipe", "cpu-moe", "fit", "even", "row", "plan"):
    f = out / f"bench-{name}.json"
    if not f.exists():
        continue
    try:
        rows = json.loads(f.read_text())
    except (OSError, ValueError):
        print(f"| {name} | | failed | failed |")
        continue
    pp = next((r for r in rows if r["n_prompt"]), None)
    tg = next((r for r in rows if r["n_gen"]), None)
    r = rows[0]
    desc = f"ngl {r['n_gpu_layers']}" + (f", sm {r['split_mode']}, ts {r['tensor_split']}" if r.get("tensor_split") not in (None, "", "0.00") else "") + (f", ncmoe {r.get('n_cpu_moe')}" if r.get("n_cpu_moe") else "") + (f", ot {r['tensor_buft_overrides']}" if r.get("tensor_buft_overrides") not in (None, "none", "") else "")
    fmt = lambda x: f"{x['avg_ts']:.1f} ± {x['stddev_ts']:.1f}" if x else "-"
    print(f"| {name} | {desc} | {fmt(pp)} | {fmt(tg)} |")
PY

# The stack's default (issue 28): llama-server with the llama.cpp stack's own default LLAMA_ARG_* values (read from
# stacks/llamacpp-webui.yml with no .env; the entrypoint drops the empty ones), on this model that the free memory
# cannot hold. Then the old default, -ngl all, for contrast.
serve_default() {  # serve_default NAME [VAR=VALUE ...]: start, wait for /health, one completion, stop
  local name=$1; shift
  local envs
  envs=$(PYTHONPATH=$py python3 - "$repo/stacks/llamacpp-webui.yml" <<'PY'
import re, shlex, sys, yaml
env = yaml.safe_load(open(sys.argv[1]))["services"]["llamacpp"]["environment"]
for key, value in env.items():
    default = re.fullmatch(r"\$\{[A-Z0-9_]+:-([^}]*)\}", str(value))
    if key.startswith("LLAMA_ARG_") and key not in ("LLAMA_ARG_API_KEY_FILE", "LLAMA_ARG_ALIAS") and default:
        print(f"{key}={shlex.quote(default.group(1))}")
PY
)
  log "stack $name: $(tr '\n' ' ' <<< "$envs")$*"
  eval "env $(tr '\n' ' ' <<< "$envs") $* LLAMA_ARG_MODEL=$model ${entrypoint[*]} --host 127.0.0.1 --port 8092 --api-key k" \
    > "$out/server-$name.log" 2>&1 &
  local pid=$! served=no
  for _ in $(seq 600); do
    if curl -sf http://127.0.0.1:8092/health > /dev/null; then served=yes; break; fi
    kill -0 "$pid" 2> /dev/null || break
    sleep 0.5
  done
  if [ "$served" = yes ] && curl -sf -H 'Authorization: Bearer k' -H 'Content-Type: application/json' \
       -d '{"messages":[{"role":"user","content":"Hi"}],"max_tokens":8}' http://127.0.0.1:8092/v1/chat/completions > "$out/chat-$name.json"; then
    echo "stack $name: served a chat completion ($(python3 -c "import json; print(json.load(open('$out/chat-$name.json'))['usage']['completion_tokens'])") tokens)" | tee -a "$out/steps.txt"
  else
    echo "stack $name: did not serve: $(grep -iE "out of memory|failed to fit|abort|error" "$out/server-$name.log" | head -3 | tr '\n' ' ')" | tee -a "$out/steps.txt"
  fi
  grep -E "offloaded|CUDA0 model buffer|CPU_Mapped model buffer|fitting params" "$out/server-$name.log" | head -6 | tee -a "$out/steps.txt" || true
  kill "$pid" 2> /dev/null || true
  wait "$pid" 2> /dev/null || true
}
serve_default default
serve_default old-default LLAMA_ARG_N_GPU_LAYERS=all

# builder bench against llama-server started as the stack starts it: the plan's settings as the stack's LLAMA_ARG_*
# variables (stacks/llamacpp-webui.yml), through the image's entrypoint.
eval "$(python3 -c "
import json, shlex
s = json.load(open('$out/plan.json'))['settings']
stack = {'LLAMACPP_N_GPU_LAYERS': 'LLAMA_ARG_N_GPU_LAYERS', 'LLAMACPP_N_CPU_MOE': 'LLAMA_ARG_N_CPU_MOE',
         'LLAMACPP_SPLIT_MODE': 'LLAMA_ARG_SPLIT_MODE', 'LLAMACPP_TENSOR_SPLIT': 'LLAMA_ARG_TENSOR_SPLIT',
         'LLAMACPP_CTX_SIZE': 'LLAMA_ARG_CTX_SIZE', 'LLAMACPP_THREADS': 'LLAMA_ARG_THREADS'}
print(' '.join(f'export {stack[k]}={shlex.quote(v)};' for k, v in s.items() if k in stack))")"
env | grep '^LLAMA_ARG_' | sort | tee "$out/server-env.txt"
log "llama-server with $(tr '\n' ' ' < "$out/server-env.txt")"
"${entrypoint[@]}" -m "$model" -fa on --host 127.0.0.1 --port 8091 --api-key plan-key > "$out/server.log" 2>&1 &
server=$!
trap 'kill $filler $server 2>/dev/null || true' EXIT
for _ in $(seq 240); do curl -sf http://127.0.0.1:8091/health > /dev/null && break; sleep 0.5; done
printf 'plan-key' > "$work/key"
"${builder[@]}" bench http://127.0.0.1:8091 --api-key-file "$work/key" --concurrency "${CONCURRENCY:-1,4,16}" \
  --requests "${REQUESTS:-16}" --prompt-tokens 512 --max-tokens 64 --json "$out/bench.json" --plot "$out/bench.png" \
  > "$out/bench.md" 2> "$out/bench.log" || tail -5 "$out/bench.log"
cat "$out/bench.md"
# Where the weights went, as llama-server says it: each device and its share.
grep -E "offload|CUDA[0-9].*buffer|CPU.*buffer|using device|graph splits" "$out/server.log" | head -30 | tee "$out/server-memory.txt" || true
log "done"
