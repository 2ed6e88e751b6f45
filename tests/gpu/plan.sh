#!/usr/bin/env bash
# `builder plan`'s proof on one GPU (issue 28): a sweep of free-memory budgets, from "only the non-expert weights
# fit" to "everything fits", on an R1-shaped model (tests/gpu/r1_shaped.py: R1's widths, 3 dense + 5 MoE layers) at
# two quant mixes: q4_k (every matrix Q4_K, 34.5 GB) and q2_k (routed experts Q2_K, the rest Q4_K, 21.3 GB: the
# shape of unsloth's dynamic low-bit quants). At each budget, llama-bench pp512 and tg128 (-r 2) for:
#   recipe    -ngl N, whole layers with their experts, the largest N that loads (the recipes' style)
#   cpu-moe   every layer on the GPU, every routed expert in RAM (-ot 'ffn_.*_exps=CPU'); its placement does not
#             depend on the budget, so it runs once per model, at the smallest budget where it loads
#   fit       llama.cpp's own fit (llama-bench -fitt 1024), measured by `builder plan --measure`
#   plan      `builder plan`'s settings (expert tensors filling the GPU, -ot), measured by `builder plan --measure`
#   measure   `builder plan --measure`'s choice among its candidates (the plan, the plan at -ub 2048, the fit)
# and, once, the stack's default: llama-server with stacks/llamacpp-webui.yml's own LLAMA_ARG_* defaults (no -ngl)
# on a model larger than the free memory, through the image's entrypoint: it must serve a chat completion.
# Output under OUT_DIR: sweep.csv and sweep.md (the table), measure-*.json (the plan, its why lines, each candidate
# measured), fit-params-*.txt (what --fit chose, as flags), bench-*.json
# and their logs, steps.txt (timed). The plot is made from sweep.csv on a machine with matplotlib:
#   python3 tests/gpu/plan_plot.py OUT_DIR/sweep.csv docs/measurements/DATE-plan-sweep-h100/sweep.png
#
# Two phases, one device call each (each must end within 560 s; the bench phase stops starting new steps after
# BENCH_SECONDS, default 490, and marks the rest "skipped: time"; a budget started by then takes about 50 s,
# at most 150 s for --measure):
#   bash tests/gpu/plan.sh build LLAMA_CPP_TARBALL OUT_DIR   compile (images/llamacpp/build.sh, sm_90), write both models
#   bash tests/gpu/plan.sh bench LLAMA_CPP_TARBALL OUT_DIR   the sweep; QUANTS (default "q4_k q2_k") and BUDGETS_<quant>
#                                                            (GiB, space-separated) narrow it for a further call
# WORK_DIR (default /tmp/r1kit-plan) keeps the build and the models between the phases.
# Knobs for a short call: CPU_TARGET=native (build.sh: one CPU backend, no variants) and BUILD_SECONDS (default
# 500) for the build phase; DEADLINE (epoch seconds: no new step after it, in place of BENCH_SECONDS),
# SERVE_DEFAULT_AT (the budget in GiB for the stack-default check; default the third) and CPU_MOE=no (skip the
# every-expert-in-RAM way) for the bench phase. On 2026-12-06's 16-core H100 machines the portable build (every CPU
# variant) did not finish in 500 s; CPU_TARGET=native took 393 s. The device tool brings back only a few files from
# $OUT: give the script another OUT_DIR and put one archive of it there (tar -czf $OUT/r.tgz -C OUT_DIR .).
# The q2_k sweep (docs/PERFORMANCE.md, runs 4-8) ran as a build call and then bench calls back to back on the warm
# machine (it goes cold after 30 s idle), three budgets or so each, each into a folder of its own:
#   CPU_TARGET=native QUANTS=q2_k WHEELS=.cache/plan-wheels bash tests/gpu/plan.sh build .cache/llama.cpp-0c1e57098.tar.gz /tmp/o
#   QUANTS=q2_k BUDGETS_q2_k="7 10 14" SERVE_DEFAULT_AT=14 bash tests/gpu/plan.sh bench x /tmp/o2; tar -czf $OUT/r.tgz -C /tmp/o2 .
# A budget named twice in one bench call is answered the second time from --measure's cache: repeat it in a new call.
#
# Inputs, prepared on a machine with network, from the repository root (the GPU machine has none):
#   the source tarball (.cache/llama.cpp-0c1e57098.tar.gz, llama.cpp's pinned tree, checked against its sha256):
#     python3 -c 'import sys; sys.path.insert(0, "tests"); from support.prerequisites import llamacpp_source; print(llamacpp_source())'
#   the builder package's dependencies as cp312 wheels (.cache/wheels, or WHEELS=DIR; the build phase installs only
#   what pyproject.toml asks for from it). A device call carries at most 64 MiB: where .cache/wheels also holds
#   other wheels (vLLM's, 336 MB), download into a folder of its own (28 MB) and set WHEELS to it:
#     python3 -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print("\n".join(p["dependencies"] + p["optional-dependencies"]["plan"]))' > /tmp/r1kit-req.txt
#     python3 -m pip download -q --dest .cache/plan-wheels --only-binary :all: --implementation cp --abi cp312 --python-version 312 --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --ignore-requires-python -r /tmp/r1kit-req.txt
# The GPU machine needs python3 with torch (the filler that holds GPU memory), nvidia-smi, cmake and the CUDA toolkit.
set -euo pipefail

phase=${1:?usage: plan.sh build|bench LLAMA_CPP_TARBALL OUT_DIR}
tarball=${2:?usage: plan.sh build|bench LLAMA_CPP_TARBALL OUT_DIR}
out=$(mkdir -p "${3:?usage: plan.sh build|bench LLAMA_CPP_TARBALL OUT_DIR}" && cd "$3" && pwd)
repo=$(cd "$(dirname "$0")/../.." && pwd)
work=${WORK_DIR:-/tmp/r1kit-plan}
moe_layers=${MOE_LAYERS:-5}
quants=${QUANTS:-q4_k q2_k}
bin=$work/prefix/bin
py=$work/py
builder=(env "PYTHONPATH=$repo:$py:$work/src/gguf-py" python3 -m builder.cli)
start=$(date +%s)
log() { echo "[$(date +%T) +$(( $(date +%s) - start ))s] $*" | tee -a "$out/steps.txt"; }
model() { echo "$(cat "$work/models.dir")/r1-shaped-$1.gguf"; }

if [ "$phase" = build ]; then
  rm -rf "$work" /dev/shm/r1kit-plan-models && mkdir -p "$work/src" "$py"
  tar -xzf "$tarball" -C "$work/src" --strip-components=1
  nvidia-smi --query-gpu=name,memory.total,memory.free,driver_version,compute_cap --format=csv,noheader | tee "$out/gpu.txt"
  lscpu | grep -E "Model name|^CPU\(s\)|Thread|Core\(s\)|NUMA node\(s\)" | tee "$out/cpu.txt"
  df -h "$work" /dev/shm | tee "$out/disk.txt"
  # Both models together are 52 GiB, the build about 3. Where the disk is short, the models go to /dev/shm: the
  # RAM they take there is the page cache they would take anyway (llama.cpp maps them), and no disk reads.
  free_gib() { df --output=avail -B1G "$1" 2> /dev/null | tail -1 | tr -d ' '; }
  if [ "$(free_gib "$work")" -ge 56 ]; then
    echo "$work" > "$work/models.dir"
  elif [ "$(free_gib /dev/shm)" -ge 54 ]; then
    mkdir -p /dev/shm/r1kit-plan-models && echo /dev/shm/r1kit-plan-models > "$work/models.dir"
  else
    echo "plan.sh: $work has $(free_gib "$work") GiB free and /dev/shm $(free_gib /dev/shm); the models need 52: set WORK_DIR" >&2
    exit 1
  fi
  log "models in $(cat "$work/models.dir")"
  python3 -c 'import sys, tomllib; p = tomllib.load(open(sys.argv[1], "rb"))["project"]; print("\n".join(p["dependencies"] + p["optional-dependencies"]["plan"]))' \
    "$repo/pyproject.toml" > "$work/requirements.txt"
  timeout 120 python3 -m pip install -q --no-index --find-links "${WHEELS:-$repo/.cache/wheels}" --target "$py" -r "$work/requirements.txt" \
    > "$out/pip.txt" 2>&1 || { cat "$out/pip.txt"; exit 1; }
  log "build start"
  ( ACCELERATOR=cuda CUDA_ARCHITECTURES=90 JOBS=$(nproc) timeout "${BUILD_SECONDS:-500}" bash "$repo/images/llamacpp/build.sh" "$work/src" "$work/prefix" > "$out/build.log" 2>&1
    # llama.cpp's own answer to "what fits", printed as flags (it runs from the build folder, beside its libraries).
    timeout 30 cmake --build "$work/src/build" -j "$(nproc)" --target llama-fit-params >> "$out/build.log" 2>&1 ) &
  compile=$!
  for q in $quants; do
    PYTHONPATH="$work/src/gguf-py:$repo/images/llamacpp:$repo/tests/gpu" timeout 300 python3 "$repo/tests/gpu/r1_shaped.py" \
      "$(model "$q")" --moe-layers "$moe_layers" --mix "$q" | tee -a "$out/steps.txt"
  done
  wait "$compile" || { tail -40 "$out/build.log"; exit 1; }
  log "build done"
  for q in $quants; do
    timeout 60 "${builder[@]}" plan "$(model "$q")" > "$out/plan-unfilled-$q.txt" 2>&1 || cat "$out/plan-unfilled-$q.txt"
  done
  touch "$work/built"
  exit 0
fi

[ "$phase" = bench ] || { echo "plan.sh: phase must be build or bench" >&2; exit 2; }
[ -e "$work/built" ] || { echo "plan.sh: no build in $work: the machine went cold between the phases; run the build phase again" >&2; exit 3; }
deadline=${DEADLINE:-$(( start + ${BENCH_SECONDS:-490} ))}
time_left() { [ "$(date +%s)" -lt "$deadline" ]; }

# One filler process holds all but the wanted free memory of the GPU, and is told each budget through $want. It
# answers in $ready with the budget it holds for, so a reply left by an earlier budget or an earlier run (this
# script's old bug) never passes for this one.
want=$work/filler.want ready=$work/filler.ready
rm -f "$want" "$ready"
python3 - "$want" "$ready" > "$out/filler.log" 2>&1 <<'PY' &
import os, sys, time, torch
want, ready = sys.argv[1:]
held, current = None, None
while True:
    try:
        target = open(want).read().strip()
    except OSError:
        target = None
    if target and target != current:
        held = None
        torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info(0)
        held = torch.empty(max(free - int(float(target) * 2**30), 0), dtype=torch.uint8, device="cuda:0")
        free_after = torch.cuda.mem_get_info(0)[0]
        current = target
        with open(ready + ".tmp", "w") as f:
            f.write(f"{target} held {held.numel() / 2**30:.1f} GiB of {total / 2**30:.1f}, {free_after / 2**20:.0f} MiB free\n")
        os.replace(ready + ".tmp", ready)
    time.sleep(0.2)
PY
filler=$!
trap 'kill $filler 2>/dev/null || true' EXIT
hold() {  # hold GIB: leave GIB free on the GPU
  echo "$1" > "$want"
  for _ in $(seq 300); do
    if [ -e "$ready" ] && [ "$(cut -d' ' -f1 "$ready")" = "$1" ]; then
      log "filler: $(cat "$ready")"
      return 0
    fi
    kill -0 "$filler" 2> /dev/null || { echo "plan.sh: the filler died: $(tail -3 "$out/filler.log")" >&2; exit 1; }
    sleep 0.2
  done
  echo "plan.sh: the filler did not hold $1 GiB free within 60 s" >&2; exit 1
}

# The entrypoint probes the CPU variants at each start; probe once, then name the winner (its own knob).
entry=(env "LLAMACPP_HOME=$work/prefix" "PATH=$bin:$PATH")
variant=$("${entry[@]}" sh "$repo/images/llamacpp/entrypoint.sh" llama-bench --list-devices 2>&1 | sed -n 's/.*CPU variant \([a-z0-9_]*\) for a .*/\1/p' | head -1)
log "CPU variant: ${variant:-none (a single CPU backend)}"
entry+=("LLAMACPP_CPU_VARIANT=${variant:-auto}")
entrypoint=("${entry[@]}" sh "$repo/images/llamacpp/entrypoint.sh")
threads=$(lscpu -p=CORE | grep -v '^#' | sort -u | wc -l)

row() {  # row QUANT GIB WAY SETTINGS BENCH_JSON|"" STATUS: one line of sweep.csv
  python3 - "$@" >> "$out/sweep.csv" <<'PY'
import csv, json, sys
quant, gib, way, settings, bench, status = sys.argv[1:]
pp = tg = {}
if bench:
    try:
        rows = json.load(open(bench))
        pp = next(r for r in rows if r["n_prompt"] and not r["n_gen"])
        tg = next(r for r in rows if r["n_gen"] and not r["n_prompt"])
    except (OSError, ValueError, StopIteration, KeyError):
        status = status or "no result"
f = lambda r, k: f"{r[k]:.2f}" if r else ""
csv.writer(sys.stdout).writerow([quant, gib, way, settings, f(pp, "avg_ts"), f(pp, "stddev_ts"), f(tg, "avg_ts"), f(tg, "stddev_ts"), status])
PY
}
echo "quant,free_gib,way,settings,pp512,pp512_sd,tg128,tg128_sd,status" > "$out/sweep.csv"

bench() {  # bench NAME ARGS...: one llama-bench run through the entrypoint into bench-NAME.json; its status on failure
  local name=$1; shift
  log "llama-bench $name: $*"
  timeout 120 "${entrypoint[@]}" llama-bench -m "$m" -fa 1 -t "$threads" -p 512 -n 128 -r 2 -o json "$@" \
    > "$out/bench-$name.json" 2> "$out/bench-$name.log" && return 0
  local status=$? why
  why=$(grep -iE "out of memory|failed|error" "$out/bench-$name.log" | head -1 | tr -d ',' | cut -c1-120 || true)
  echo "${why:-exit status $status}" > "$out/bench-$name.why"
  log "$name failed: $(cat "$out/bench-$name.why")"
  return 1
}

# The sweep per model: each budget in GiB, from "the non-expert weights, the compute buffer and the margin fit" to
# "everything fits" in six steps (from the GGUF's own tensor table; or BUDGETS_<quant>), and the recipe's starting
# -ngl at each: the planner's whole-layer placement (Ollama's, no experts apart) for a GPU of that size.
sweep_points() {  # sweep_points MODEL [GIB ...]: lines "GIB NGL"
  PYTHONPATH="$repo:$py:$work/src/gguf-py" python3 - "$@" <<'PY'
import math, sys
from pathlib import Path
from builder.models.shapes import from_gguf
from builder.plan import hardware, planner
s = from_gguf(Path(sys.argv[1]))
lo = math.ceil((s.total - s.experts) / 2**30 + 3.7)  # + compute buffer with an expert tensor, margin
hi = math.ceil(s.total / 2**30 + 4)                  # + compute buffer, margin, KV, slack
for gib in sys.argv[2:] or [round(lo + (hi - lo) * i / 5) for i in range(6)]:
    box = hardware.describe(gpus=f"1x{gib}", ram_gib=1024)  # what fits the GPU, whatever the RAM
    whole = planner.place(s, box, planner.DEFAULT_CONTEXT, experts_apart=False)
    print(gib, whole.ngl if whole else 0)
PY
}

# The stack's default, once, on the first model at its third budget (the model does not fit; the issue's 20 GiB).
serve_default() {
  local m=$1 envs pid served=no
  envs=$(PYTHONPATH=$py python3 - "$repo/stacks/llamacpp-webui.yml" <<'PY'
import re, sys, yaml
env = yaml.safe_load(open(sys.argv[1]))["services"]["llamacpp"]["environment"]
for key, value in env.items():
    default = re.fullmatch(r"\$\{[A-Z0-9_]+:-([^}]*)\}", str(value))
    if key.startswith("LLAMA_ARG_") and key not in ("LLAMA_ARG_API_KEY_FILE", "LLAMA_ARG_ALIAS") and default:
        print(f"{key}={default.group(1)}")
PY
)
  log "stack default: $(tr '\n' ' ' <<< "$envs")"
  mapfile -t envs <<< "$envs"
  # No eval and no subshell: $! is env, which execs the entrypoint, which execs llama-server, so the kill below
  # reaches the server. (An eval in the background left the server running and holding GPU memory: the first
  # sweep's next budget measured with that much less free.)
  env "${envs[@]}" "LLAMA_ARG_MODEL=$m" "${entrypoint[@]}" --host 127.0.0.1 --port 8092 --api-key k \
    > "$out/server-default.log" 2>&1 &
  pid=$!
  for _ in $(seq 300); do
    if curl -sf http://127.0.0.1:8092/health > /dev/null; then served=yes; break; fi
    kill -0 "$pid" 2> /dev/null || break
    sleep 0.5
  done
  if [ "$served" = yes ] && curl -sf -m 60 -H 'Authorization: Bearer k' -H 'Content-Type: application/json' \
       -d '{"messages":[{"role":"user","content":"Hi"}],"max_tokens":8}' http://127.0.0.1:8092/v1/chat/completions > "$out/chat-default.json"; then
    log "stack default: served a chat completion ($(python3 -c "import json; print(json.load(open('$out/chat-default.json'))['usage']['completion_tokens'])") tokens)"
  else
    log "stack default: did not serve: $(grep -iE "out of memory|failed to fit|abort|error" "$out/server-default.log" | head -3 | tr '\n' ' ')"
  fi
  grep -E "offloaded|CUDA0 model buffer|CPU_Mapped model buffer|fitting params|fit" "$out/server-default.log" | head -8 | tee -a "$out/steps.txt" || true
  kill "$pid" 2> /dev/null || true
  wait "$pid" 2> /dev/null || true
}

# --measure's cache from an earlier run would answer without measuring: this run measures.
for q in $quants; do rm -f "$(dirname "$(model "$q")")/.$(basename "$(model "$q")").r1kit-measure.json"; done
first=yes
for q in $quants; do
  m=$(model "$q")
  var=BUDGETS_$q
  read -r -a wanted <<< "${!var:-}"
  gibs=() ngls=()
  while read -r gib ngl; do gibs+=("$gib"); ngls+=("$ngl"); done < <(sweep_points "$m" "${wanted[@]}")
  log "$q: budgets ${gibs[*]} GiB; the recipe's -ngl from ${ngls[*]}"
  cpu_moe_done=no
  for i in "${!gibs[@]}"; do
    gib=${gibs[$i]} tag="$q-${gibs[$i]}"
    if ! time_left; then
      for way in recipe cpu-moe fit plan measure; do row "$q" "$gib" "$way" "" "" "skipped: time"; done
      continue
    fi
    hold "$gib"
    if [ "$first" = yes ] && { [ "$gib" = "${SERVE_DEFAULT_AT:-}" ] || { [ -z "${SERVE_DEFAULT_AT:-}" ] && [ "$i" = 2 ]; }; }; then
      serve_default "$m"; first=no
    fi

    # The plan and --measure's choice (its candidates: the plan, the plan at -ub 2048, llama.cpp's fit).
    log "measure $tag"
    if timeout 150 "${builder[@]}" plan "$m" --measure --llama-bench "${entrypoint[*]} llama-bench" --json \
         > "$out/measure-$tag.json" 2> "$out/measure-$tag.log"; then
      python3 - "$out/measure-$tag.json" "$q" "$gib" >> "$out/sweep.csv" <<'PY'
import csv, json, sys
m = json.load(open(sys.argv[1]))
w = csv.writer(sys.stdout)
by_name = {r["name"]: r for r in m["measured"]}
def line(way, r, note=""):
    status = r["error"] or note
    nums = [f"{r[k]:.2f}" for k in ("pp512", "pp512_sd", "tg128", "tg128_sd")] if not r["error"] else ["", "", "", ""]
    w.writerow([sys.argv[2], sys.argv[3], way, " ".join(r["args"]), *nums, status])
line("fit", by_name["llama.cpp fit"])
line("plan", by_name["plan"])
line("measure", by_name[m["chosen"]], f"chose {m['chosen']}" + (" (cached)" if m["cached"] else ""))
PY
      # The cache: the same question again is answered from the file beside the model, without llama-bench.
      if [ "$i" = 0 ]; then
        if timeout 60 "${builder[@]}" plan "$m" --measure --llama-bench false --json > /dev/null 2> "$out/measure-again-$tag.log"; then
          log "measure again: $(grep -h 'measurement in' "$out/measure-again-$tag.log")"
        else
          log "measure again failed: $(tail -1 "$out/measure-again-$tag.log")"
        fi
      fi
    else
      log "measure failed: $(tail -2 "$out/measure-$tag.log" | tr '\n' ' ')"
      for way in fit plan measure; do row "$q" "$gib" "$way" "" "" "measure failed"; done
    fi

    # The recipes' style: the largest -ngl that loads, tried top down from one above the planner's whole-layer
    # placement (Ollama's engine: no experts apart); each try that does not fit fails fast, at allocation.
    time_left || { row "$q" "$gib" recipe "" "" "skipped: time"; continue; }
    ngl=${ngls[$i]}
    status="did not load"
    for n in $(seq $(( ngl + 1 )) -1 $(( ngl > 3 ? ngl - 3 : 0 ))); do
      if bench "recipe-$tag" -ngl "$n"; then status=""; break; fi
    done
    row "$q" "$gib" recipe "-ngl $n" "$out/bench-recipe-$tag.json" "$status"

    # Every expert in RAM: one placement whatever the budget, measured once per model where it first loads.
    if [ "${CPU_MOE:-yes}" = no ]; then
      :
    elif [ "$cpu_moe_done" = no ] && time_left; then
      if bench "cpu-moe-$q" -ngl 999 -ot 'ffn_.*_exps=CPU'; then
        cpu_moe_done=$gib
        row "$q" "$gib" cpu-moe "-ngl 999 -ot ffn_.*_exps=CPU" "$out/bench-cpu-moe-$q.json" ""
      else
        row "$q" "$gib" cpu-moe "-ngl 999 -ot ffn_.*_exps=CPU" "" "$(cat "$out/bench-cpu-moe-$q.why")"
      fi
    elif [ "$cpu_moe_done" != no ]; then
      row "$q" "$gib" cpu-moe "-ngl 999 -ot ffn_.*_exps=CPU" "$out/bench-cpu-moe-$q.json" "as at $cpu_moe_done GiB (same placement)"
    fi

    # What llama.cpp's fit chose at this budget, as flags (no weights are loaded).
    cpu_lib=$work/prefix/lib/ggml-cpu/libggml-cpu-${variant:-zen4}.so
    [ -e "$cpu_lib" ] || cpu_lib=""  # a native build links its one CPU backend in
    env ${cpu_lib:+"GGML_BACKEND_PATH=$cpu_lib"} timeout 60 "$work/src/build/bin/llama-fit-params" \
      -m "$m" -c 8192 -fa on > "$out/fit-params-$tag.txt" 2> "$out/fit-params-$tag.log" || tail -2 "$out/fit-params-$tag.log"
    log "fit-params $tag: $(cat "$out/fit-params-$tag.txt")"
  done
done

python3 - "$out/sweep.csv" <<'PY' | tee "$out/sweep.md"
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
print("| model | free GiB | way | pp512 t/s | tg128 t/s | settings / status |")
print("| --- | ---: | --- | ---: | ---: | --- |")
for r in rows:
    num = lambda k: f"{float(r[k]):.1f} ± {float(r[k + '_sd']):.1f}" if r[k] else "-"
    print(f"| {r['quant']} | {r['free_gib']} | {r['way']} | {num('pp512')} | {num('tg128')} | `{r['settings']}` {r['status']} |")
PY
log "done"
