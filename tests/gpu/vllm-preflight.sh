#!/usr/bin/env bash
# The vLLM image's preflight (images/vllm/preflight.py) with the GPUs NVML reports: the branch no development machine
# can run (they have no GPU). vLLM itself cannot run on the GPU machine (its wheel is far over what `carry` takes),
# but the preflight needs only Python and nvidia-ml-py.
#
# usage, from the repository root on the GPU machine: bash tests/gpu/vllm-preflight.sh WHEEL_DIR
# WHEEL_DIR holds nvidia-ml-py's wheel (made here: pip download --no-deps -d .device/wheels nvidia-ml-py; carry
# .device). Prints each check and exits non-zero at the first that does not hold.
set -euo pipefail

wheels=${1:?usage: vllm-preflight.sh WHEEL_DIR}
repo=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q --no-index --find-links "$wheels" nvidia-ml-py
py="$work/venv/bin/python"

# R1's config values and checkpoint size (690 GB), and the 1.5B distill's (a sparse 3.55 GB file).
mkdir -p "$work/r1" "$work/distill"
echo '{"model_type": "deepseek_v3", "num_hidden_layers": 61, "kv_lora_rank": 512, "qk_rope_head_dim": 64, "num_attention_heads": 128, "hidden_size": 7168, "max_position_embeddings": 163840, "torch_dtype": "bfloat16"}' > "$work/r1/config.json"
echo '{"metadata": {"total_size": 690000000000}, "weight_map": {}}' > "$work/r1/model.safetensors.index.json"
echo '{"model_type": "qwen2", "hidden_size": 1536, "num_attention_heads": 12, "num_key_value_heads": 2, "num_hidden_layers": 28, "max_position_embeddings": 131072, "torch_dtype": "bfloat16"}' > "$work/distill/config.json"
truncate -s 3554214752 "$work/distill/model.safetensors"

gpus=$(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | wc -l)
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
expect() {  # expect STATUS PATTERN ARGS...: the preflight's exit status and a line of its stderr
  local want=$1 pattern=$2; shift 2
  local status=0 err
  err=$("$py" "$repo/images/vllm/preflight.py" "$@" 2>&1 >/dev/null) || status=$?
  echo "preflight $* -> $status: $err"
  [ "$status" = "$want" ] && grep -q -- "$pattern" <<<"$err" || { echo "FAILED: wanted $want and /$pattern/" >&2; exit 1; }
}
expect 0 "$gpus GPU(s)\\|1 GPU(s) ×.*fits" "$work/distill" --max-model-len 8192 --max-num-batched-tokens 8192
expect 2 "does not fit" "$work/r1" -tp "$gpus" --max-num-batched-tokens 57344 --gpu-memory-utilization 0.9
expect 2 "but this node has $gpus (NVML)" "$work/distill" -tp $((gpus * 2))
echo "all preflight checks held with NVML's $gpus GPU(s)"
