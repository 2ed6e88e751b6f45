#!/usr/bin/env bash
# flash-attn compiled from its PyPI sdist for one GPU architecture against the machine's own torch, then
# flash_attn_func checked against torch's scaled_dot_product_attention for correctness and speed: the
# ktransformers image's flash-attn stage (FLASH_ATTN_SOURCE=pypi), run where nvcc and a GPU exist. No Docker and no
# network there: the sdist is carried, the build uses the installed torch (--no-build-isolation --no-deps).
#
# usage, from the repository root: bash tests/gpu/flash-attn.sh SDIST OUT_DIR [DEPS_DIR]
#   SDIST: flash_attn-2.8.3.post2.tar.gz (`pip download --no-deps --no-binary :all: flash-attn==2.8.3.post2`)
#   DEPS_DIR: wheels of the build's own needs (ninja, wheel, packaging, psutil, einops), installed beside the
#   machine's torch only where it lacks them: without ninja, torch compiles one file at a time.
# Settings: ARCHS (default 90), MAX_JOBS (default nproc), NVCC_THREADS (default 2), COMPILE_TIMEOUT (default 540 s:
# the device tool stops a command at 600 s, and the checks need a minute after it). WORK_DIR (default /tmp/r1kit-flash-attn) keeps the build tree: the
# compile is in-tree and ninja skips finished objects, so a second call on the same warm machine resumes it.
set -uo pipefail

sdist=${1:?usage: flash-attn.sh SDIST OUT_DIR}
out=$(mkdir -p "${2:?usage: flash-attn.sh SDIST OUT_DIR}" && cd "$2" && pwd)
archs=${ARCHS:-90}
jobs=${MAX_JOBS:-$(nproc)}
budget=${COMPILE_TIMEOUT:-480}
work=${WORK_DIR:-/tmp/r1kit-flash-attn}
python=${PYTHON:-python3}
t0=$(date +%s)
say() { echo "[$(( $(date +%s) - t0 ))s] $*" | tee -a "$out/progress.txt"; }

{
  echo "sdist: $(basename "$sdist") $(stat -c %s "$sdist") bytes sha256 $(sha256sum "$sdist" | cut -d' ' -f1)"
  echo "cores: $(nproc); MAX_JOBS=$jobs NVCC_THREADS=${NVCC_THREADS:-2} FLASH_ATTN_CUDA_ARCHS=$archs"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  "$python" -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)'
  nvcc --version | tail -1
} 2>&1 | tee "$out/env.txt"

deps=${3:-}
mkdir -p "$work"
if [ -n "$deps" ]; then
  for module in ninja wheel packaging psutil einops; do
    "$python" -c "import $module" 2>/dev/null && continue
    "$python" -m pip install -q --no-index --no-deps --target "$work/deps" "$deps"/"$module"-*.whl && echo "installed $module from $deps"
  done
  export PYTHONPATH="$work/deps${PYTHONPATH:+:$PYTHONPATH}" PATH="$work/deps/bin:$PATH"
fi
if command -v ninja >/dev/null; then
  echo "ninja $(ninja --version)" | tee -a "$out/env.txt"
else
  echo "no ninja: the compile runs one file at a time" | tee -a "$out/env.txt"
fi

src=$work/src
if [ "$(cat "$work/unpacked-from" 2>/dev/null)" != "$(sha256sum "$sdist" | cut -d' ' -f1)" ]; then
  rm -rf "$src" "$work/dist" && mkdir -p "$src"
  tar -xzf "$sdist" -C "$src" --strip-components=1
  sha256sum "$sdist" | cut -d' ' -f1 > "$work/unpacked-from"
fi

# The compile: FORCE_BUILD, else setup.py tries to download a prebuilt wheel from GitHub. ninja prints [k/N] per
# object; the log is followed so that progress shows while it runs.
say "compile starts (budget ${budget}s)"
# setsid: the compile (pip, ninja, every nvcc) is a process group of its own, stopped whole at the deadline.
( cd "$src" && exec setsid env FLASH_ATTENTION_FORCE_BUILD=TRUE FLASH_ATTN_CUDA_ARCHS="$archs" MAX_JOBS="$jobs" \
    NVCC_THREADS="${NVCC_THREADS:-2}" "$python" -m pip wheel -v --no-build-isolation --no-deps --no-index \
    --wheel-dir "$work/dist" . ) > "$work/build.log" 2>&1 &
build=$!
deadline=$(( $(date +%s) + budget ))
while kill -0 "$build" 2>/dev/null; do
  sleep 15
  step=$(grep -o '^\[[0-9]*/[0-9]*\]' "$work/build.log" | tail -1)
  say "compiling ${step:-(setup)}"
  if [ "$(date +%s)" -ge "$deadline" ]; then
    say "budget of ${budget}s spent: stopping the compile"
    kill -TERM -- "-$build" 2>/dev/null; sleep 10; kill -KILL -- "-$build" 2>/dev/null
  fi
done
wait "$build"
rc=$?
objects=$(find "$src/build" -name '*.o' 2>/dev/null | wc -l)
total=$(grep -o '^\[[0-9]*/[0-9]*\]' "$work/build.log" | tail -1 | cut -d/ -f2 | tr -d ']')
say "compile exit $rc; objects compiled so far: $objects of ${total:-?} (ninja steps, the link included)"
tail -30 "$work/build.log" > "$out/build-tail.log"
wheel=$(find "$work/dist" -name 'flash_attn-*.whl' 2>/dev/null | head -1)
if [ "$rc" -ne 0 ] || [ -z "$wheel" ]; then
  say "no wheel: the compile did not finish (exit $rc). Run the same command again on the warm machine to resume."
  exit 1
fi
say "wheel: $(basename "$wheel") $(stat -c %s "$wheel") bytes"

# Installed beside the machine's torch, into a folder of its own (no network, nothing else replaced).
rm -rf "$work/site" && "$python" -m pip install -q --no-deps --no-index --target "$work/site" "$wheel" || exit 1
say "installed; correctness and speed against torch's scaled_dot_product_attention"
PYTHONPATH="$work/site${PYTHONPATH:+:$PYTHONPATH}" "$python" - "$out" <<'PY'
import json, sys, time
import torch
import torch.nn.functional as F
import flash_attn
from flash_attn import flash_attn_func

out = sys.argv[1]
torch.manual_seed(0)
dev = "cuda"
rows = []


def timed(fn, reps=30):
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record(); fn(); end.record(); torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


# (batch, sequence, heads, head dim): decode-like and prefill-like shapes, head dims 64 and 128.
for b, s, h, d in [(1, 1024, 32, 128), (4, 2048, 32, 128), (1, 8192, 16, 128), (8, 1024, 16, 64)]:
    for dtype in (torch.bfloat16, torch.float16):
        for causal in (False, True):
            q, k, v = (torch.randn(b, s, h, d, device=dev, dtype=dtype) for _ in range(3))
            fa = flash_attn_func(q, k, v, causal=causal)  # (b, s, h, d)
            ref = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal).transpose(1, 2)
            # fp32 reference: how far each is from the exact result
            exact = F.scaled_dot_product_attention(*(t.transpose(1, 2).float() for t in (q, k, v)), is_causal=causal).transpose(1, 2)
            err_fa = (fa.float() - exact).abs().max().item()
            err_sdpa = (ref.float() - exact).abs().max().item()
            ms_fa = timed(lambda: flash_attn_func(q, k, v, causal=causal))
            ms_sdpa = timed(lambda: F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal))
            flops = 4 * b * h * s * s * d / (2 if causal else 1)
            rows.append(dict(batch=b, seq=s, heads=h, head_dim=d, dtype=str(dtype).split(".")[1], causal=causal,
                             max_err_flash_attn=err_fa, max_err_sdpa=err_sdpa, ms_flash_attn=ms_fa, ms_sdpa=ms_sdpa,
                             tflops_flash_attn=flops / ms_fa / 1e9, tflops_sdpa=flops / ms_sdpa / 1e9,
                             ok=err_fa <= max(2 * err_sdpa, 1e-2)))
            print(rows[-1], flush=True)

meta = dict(flash_attn=flash_attn.__version__, torch=torch.__version__, cuda=torch.version.cuda,
            gpu=torch.cuda.get_device_name(), sdpa_backend="torch default (flash/cuDNN/efficient, as torch picks)")
json.dump(dict(meta=meta, rows=rows), open(f"{out}/flash-attn.json", "w"), indent=1)
with open(f"{out}/flash-attn.md", "w") as f:
    f.write(f"flash-attn {meta['flash_attn']} on {meta['gpu']}, torch {meta['torch']} (CUDA {meta['cuda']})\n\n")
    f.write("| batch | seq | heads | dim | dtype | causal | max err FA | max err SDPA | FA ms | SDPA ms | FA TFLOP/s | SDPA TFLOP/s | ok |\n")
    f.write("|" + " --- |" * 13 + "\n")
    for r in rows:
        f.write("| {batch} | {seq} | {heads} | {head_dim} | {dtype} | {causal} | {max_err_flash_attn:.2e} | {max_err_sdpa:.2e} | "
                "{ms_flash_attn:.3f} | {ms_sdpa:.3f} | {tflops_flash_attn:.0f} | {tflops_sdpa:.0f} | {ok} |\n".format(**r))
sys.exit(0 if all(r["ok"] for r in rows) else 1)
PY
rc=$?
say "check exit $rc (results: flash-attn.md, flash-attn.json)"
exit $rc
