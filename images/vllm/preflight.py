"""Checks `vllm serve`'s arguments before the engine starts, and refuses in one line what cannot work.

    python3 preflight.py MODEL [vllm serve options...]

Run by the image's entrypoint (entrypoint.sh) with the arguments it passes on to `vllm serve`. vLLM itself would
accept some of these settings and fail minutes later, after loading hundreds of GB, or print a long traceback:
- parallel sizes (tensor, pipeline, data), --max-num-seqs, --max-num-batched-tokens, --max-model-len must be
  positive and --gpu-memory-utilization in (0, 1];
- --reasoning-parser must be one that the installed vLLM registers (read from its source, not imported: importing
  vLLM takes seconds and loads torch);
- more GPUs asked for than this node has, without a multi-node setting (--nnodes, Ray);
- memory: the weights (the checkpoint's total size) plus the KV cache of the tokens one step must hold
  (max(--max-num-batched-tokens, --max-model-len) × the KV bytes per token the model's config.json implies) against
  the GPUs' memory at the chosen utilization. An estimate: activations and CUDA graphs need a few GB more, and
  vLLM fills whatever is left with KV cache.
--api-key is refused: a key on the command line shows in `docker inspect` and `ps`; set VLLM_API_KEY_FILE.

The GPUs come from NVML (nvidia-ml-py, a vLLM dependency). Where NVML sees none, R1KIT_GPU_COUNT and
R1KIT_GPU_MEMORY_GB (per GPU, decimal GB) stand in (to plan a deployment from another machine); with neither, the
memory check is skipped with a note and vLLM reports what it finds. Standard library only, so it runs in well
under a second. Exit status 0: go on; 2: refused, with one `error: ...` line on stderr.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

GB = 1000**3
# KV cache element size by --kv-cache-dtype (auto: the model's dtype).
KV_BYTES = {"fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1, "fp8_inc": 1, "fp8_ds_mla": 1}
DTYPE_BYTES = {"float32": 4, "float": 4, "float16": 2, "half": 2, "bfloat16": 2}
SIZE = re.compile(r"^(\d+(?:\.\d+)?)([kKmMgG]?)$")


class Refused(Exception):
    """A setting that cannot work: the message says what is wrong and what to do."""


@dataclass(frozen=True)
class Gpus:
    count: int
    memory: int  # bytes, of the smallest
    source: str


@dataclass(frozen=True)
class Estimate:
    weights: int
    kv_per_token: int
    tokens: int
    available: int
    gpus: int
    gpu_memory: int
    utilization: float

    @property
    def needed(self) -> int:
        return self.weights + self.kv_per_token * self.tokens

    def line(self) -> str:
        return (f"weights {self.weights / GB:,.1f} GB + KV cache {self.kv_per_token * self.tokens / GB:,.1f} GB "
                f"({self.tokens:,} tokens × {self.kv_per_token:,} bytes) = {self.needed / GB:,.1f} GB; "
                f"{self.gpus} GPU(s) × {self.gpu_memory / GB:,.1f} GB × {self.utilization:g} = {self.available / GB:,.1f} GB")


def _positive(kind: type, what: str):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a positive {'number' if kind is float else 'whole number'}, not {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{what} must be positive, not {text}")
        return value
    return parse


def _tokens(text: str) -> int | None:
    """--max-model-len: a count, or vLLM's human-readable form (32k, 1.5M); -1 or auto: vLLM decides (None)."""
    if text in ("-1", "auto"):
        return None
    match = SIZE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"--max-model-len must be a number of tokens such as 8192 or 32k, not {text!r}")
    scale = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3}[match.group(2).lower()]
    value = int(float(match.group(1)) * scale)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"--max-model-len must be positive, not {text}")
    return value


def _utilization(text: str) -> float:
    value = _positive(float, "--gpu-memory-utilization")(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"--gpu-memory-utilization is a fraction of each GPU's memory (0 to 1), not {text}")
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would print usage and exit; one line instead
        raise Refused(message)


def parser() -> argparse.ArgumentParser:
    p = _Parser(add_help=False, allow_abbrev=False)
    p.add_argument("--model")
    p.add_argument("-tp", "--tensor-parallel-size", type=_positive(int, "--tensor-parallel-size"), default=1)
    p.add_argument("-pp", "--pipeline-parallel-size", type=_positive(int, "--pipeline-parallel-size"), default=1)
    p.add_argument("-dp", "--data-parallel-size", type=_positive(int, "--data-parallel-size"), default=1)
    p.add_argument("--nnodes", type=_positive(int, "--nnodes"), default=1)
    p.add_argument("--distributed-executor-backend")
    p.add_argument("--max-model-len", type=_tokens)
    p.add_argument("--max-num-seqs", type=_positive(int, "--max-num-seqs"))
    p.add_argument("--max-num-batched-tokens", type=_positive(int, "--max-num-batched-tokens"))
    p.add_argument("--gpu-memory-utilization", type=_utilization, default=0.9)
    p.add_argument("--kv-cache-dtype", default="auto")
    p.add_argument("--reasoning-parser")
    p.add_argument("--api-key")
    p.add_argument("-h", "--help", action="store_true")
    return p


def normalized(args: list[str]) -> list[str]:
    """vLLM takes --tensor_parallel_size as --tensor-parallel-size (its FlexibleArgumentParser): so do we."""
    out = []
    for arg in args:
        if arg.startswith("--"):
            name, sep, value = arg[2:].partition("=")
            arg = "--" + name.replace("_", "-") + sep + value
        out.append(arg)
    return out


def reasoning_parsers(package: Path | None = None) -> set[str] | None:
    """The reasoning parser names the installed vLLM registers, read from vllm/reasoning/__init__.py without
    importing it (None where vLLM is not installed here)."""
    if package is None:
        spec = importlib.util.find_spec("vllm")
        if spec is None or not spec.submodule_search_locations:
            return None
        package = Path(next(iter(spec.submodule_search_locations)))
    source = package / "reasoning" / "__init__.py"
    if not source.is_file():
        return None
    names: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text())):
        # A dict of name -> (module, class) (_REASONING_PARSERS_TO_REGISTER), or register_lazy_module("name", ...).
        if isinstance(node, ast.Dict) and node.keys and all(isinstance(k, ast.Constant) and isinstance(k.value, str) for k in node.keys):
            if all(isinstance(v, ast.Tuple) for v in node.values):
                names.update(k.value for k in node.keys)  # type: ignore[union-attr]
    return names or None


def model_files(model: str) -> tuple[int, dict] | None:
    """(weight bytes, config.json) of a local model folder; None for a Hub id or a folder without them."""
    folder = Path(model)
    config = folder / "config.json"
    if not config.is_file():
        return None
    index = folder / "model.safetensors.index.json"
    weights = 0
    if index.is_file():
        weights = int(json.loads(index.read_text()).get("metadata", {}).get("total_size", 0))
    if not weights:
        weights = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    return weights, json.loads(config.read_text())


def kv_bytes_per_token(config: dict, kv_cache_dtype: str) -> int:
    """The KV cache one token takes over all layers. MLA (DeepSeek-V2/V3/R1: kv_lora_rank) keeps one latent vector
    of kv_lora_rank + qk_rope_head_dim per layer; other models a key and a value per KV head."""
    text = config.get("text_config", config)
    layers = int(text["num_hidden_layers"])
    element = KV_BYTES.get(kv_cache_dtype) or DTYPE_BYTES.get(str(text.get("torch_dtype") or text.get("dtype") or "bfloat16"), 2)
    if text.get("kv_lora_rank"):
        return (int(text["kv_lora_rank"]) + int(text.get("qk_rope_head_dim", 0))) * layers * element
    heads = int(text.get("num_key_value_heads") or text["num_attention_heads"])
    head_dim = int(text.get("head_dim") or int(text["hidden_size"]) // int(text["num_attention_heads"]))
    return 2 * heads * head_dim * layers * element


def visible_gpus(env: dict[str, str]) -> Gpus | None:
    try:
        import pynvml  # nvidia-ml-py, installed with vLLM

        pynvml.nvmlInit()
        try:
            handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            if handles:
                return Gpus(len(handles), min(int(pynvml.nvmlDeviceGetMemoryInfo(h).total) for h in handles), "NVML")
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no driver, no library, no device: the same answer, none seen
        pass
    if env.get("R1KIT_GPU_COUNT") and env.get("R1KIT_GPU_MEMORY_GB"):
        try:
            count, memory = int(env["R1KIT_GPU_COUNT"]), float(env["R1KIT_GPU_MEMORY_GB"])
        except ValueError:
            raise Refused("R1KIT_GPU_COUNT must be a whole number and R1KIT_GPU_MEMORY_GB a number of GB per GPU") from None
        if count <= 0 or memory <= 0:
            raise Refused("R1KIT_GPU_COUNT and R1KIT_GPU_MEMORY_GB must be positive")
        return Gpus(count, int(memory * GB), "R1KIT_GPU_COUNT, R1KIT_GPU_MEMORY_GB")
    return None


def check(args: list[str], env: dict[str, str], vllm_package: Path | None = None) -> list[str]:
    """The notes to print; raises Refused for a setting that cannot work."""
    ns, _ = parser().parse_known_args(normalized(args))
    if ns.help:
        return []
    if ns.api_key is not None:
        raise Refused("--api-key on the command line shows in `docker inspect` and `ps`: put the key in a file and set VLLM_API_KEY_FILE (the stacks do)")
    if ns.reasoning_parser:
        known = reasoning_parsers(vllm_package)
        if known is not None and ns.reasoning_parser not in known:
            raise Refused(f"--reasoning-parser {ns.reasoning_parser[:80]!r} is not one vLLM knows: choose one of {', '.join(sorted(known))} (DeepSeek-R1: deepseek_r1)")
    notes = []
    per_replica = ns.tensor_parallel_size * ns.pipeline_parallel_size
    wanted = per_replica * ns.data_parallel_size
    gpus = visible_gpus(env)
    if gpus is None:
        return ["memory check skipped: no NVIDIA GPU visible (NVML found none; R1KIT_GPU_COUNT and R1KIT_GPU_MEMORY_GB unset)"]
    multi_node = ns.nnodes > 1 or ns.distributed_executor_backend == "ray"
    if wanted > gpus.count and not multi_node:
        raise Refused(f"tensor × pipeline × data parallel = {ns.tensor_parallel_size} × {ns.pipeline_parallel_size} × {ns.data_parallel_size} = {wanted} GPUs, but this node has {gpus.count} ({gpus.source}): lower the sizes, or run across nodes (--nnodes, Ray)")
    # `vllm serve MODEL ...`: the model comes first (a positional argparse would take an unknown flag's value).
    model = args[0] if args and not args[0].startswith("-") else ns.model
    found = model_files(model) if model else None
    if found is None:
        return [f"memory check skipped: {model!r} is not a local model folder with a config.json"]
    weights, config = found
    tokens = max(t for t in (ns.max_model_len, ns.max_num_batched_tokens, 0) if t is not None)
    if not tokens:
        text = config.get("text_config", config)
        tokens = int(text.get("max_position_embeddings", 0))
    # Data parallel replicates the model: each replica's tensor × pipeline GPUs hold the weights and its KV cache.
    estimate = Estimate(weights, kv_bytes_per_token(config, ns.kv_cache_dtype), tokens,
                        int(per_replica * gpus.memory * ns.gpu_memory_utilization), per_replica, gpus.memory,
                        ns.gpu_memory_utilization)
    if estimate.needed > estimate.available:
        raise Refused(f"{Path(model).name} does not fit: {estimate.line()}. Use more GPUs (tensor × pipeline parallel, "
                      "over more nodes), GPUs with more memory, a shorter --max-model-len or fewer --max-num-batched-tokens, "
                      "or a smaller model")
    notes.append(f"memory: {estimate.line()}: fits")
    return notes


def main(argv: list[str]) -> int:
    try:
        for note in check(argv, dict(os.environ)):
            print(f"r1kit-vllm: {note}", file=sys.stderr)
    except Refused as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
