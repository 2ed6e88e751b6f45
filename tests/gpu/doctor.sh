#!/usr/bin/env bash
# `builder doctor`'s NVML and driver checks on a GPU machine (no Docker, no network there): the driver and the CUDA
# it supports against each engine image's CUDA, the GPUs NVML lists, and the container toolkit / CDI files. The
# Docker checks fail there (no Docker) and the Hub is not asked (--offline): that part is proven on the CI machine.
# Output: OUT_DIR/doctor-<engine>.json per engine, nvidia-smi.txt, and steps.txt; docs/up.md quotes them.
#
# usage, from the repository root on the GPU machine: bash tests/gpu/doctor.sh OUT_DIR
# WHEELS (default .cache/wheels) holds the builder package's dependencies as wheels, nvidia-ml-py among them.
set -euo pipefail

out=$(mkdir -p "${1:?usage: doctor.sh OUT_DIR}" && cd "$1" && pwd)
repo=$(cd "$(dirname "$0")/../.." && pwd)
py=${WORK_DIR:-/tmp/r1kit-doctor}/py
log() { echo "[$(date +%T)] $*" | tee -a "$out/steps.txt"; }

if [ ! -d "$py" ]; then
  python3 -m pip install -q --no-index --no-deps --target "$py" "${WHEELS:-$repo/.cache/wheels}"/*.whl > "$out/pip.txt" 2>&1 || { cat "$out/pip.txt"; exit 1; }
fi
builder=(env "PYTHONPATH=$repo:$py" "BUILDER_ROOT=$repo" python3 -m builder.cli)

nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader | tee "$out/nvidia-smi.txt"
nvidia-smi | sed -n 3p | tee -a "$out/nvidia-smi.txt"  # the header line: driver and the CUDA it supports
# Each engine whose image is ours: its CUDA (images/*/image.yaml) against the driver's. doctor exits 1 where a check
# fails (docker and compose do here), so the status is recorded, not fatal.
for pair in llamacpp:r1-distill-qwen-1.5b vllm:r1-distill-qwen-1.5b-bf16; do
  engine=${pair%%:*} model=${pair#*:}
  log "builder doctor --json --offline --engine $engine $model"
  set +e
  "${builder[@]}" doctor --json --offline --engine "$engine" "$model" > "$out/doctor-$engine.json" 2> "$out/doctor-$engine.err"
  echo "exit $?" >> "$out/doctor-$engine.err"
  set -e
done
"${builder[@]}" doctor --offline --engine vllm r1-distill-qwen-1.5b-bf16 > "$out/doctor-vllm.txt" 2>&1 || true
python3 - "$out" <<'PY'
import json, sys
for engine in ("llamacpp", "vllm"):
    checks = {c["name"]: c for c in json.load(open(f"{sys.argv[1]}/doctor-{engine}.json"))["checks"]}
    for name in ("nvidia-driver", "container-toolkit", "gpu-in-container"):
        print(f"{engine}: {name}: {checks[name]['status']}: {checks[name]['detail']}")
PY
