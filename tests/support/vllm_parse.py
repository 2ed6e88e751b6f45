"""Parse `vllm serve` argument lists with vLLM's own parser; run by vLLM's Python (the image's, or the test venv's).

    python -P vllm_parse.py < ARGS.json    # a JSON list of argument lists, as `vllm serve` would receive them

Prints a JSON list, one entry per argument list: {"ok": {option: value, ...}} with the options the stacks set, or
{"error": "..."} where vLLM's parser (or its own post-parse check) refused them. vLLM moves its modules between
releases, so make_arg_parser and FlexibleArgumentParser are found by searching vLLM's source, not by a fixed path.
VLLM_TARGET_DEVICE=cpu makes the parser importable on a machine without a GPU.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")

import vllm  # noqa: E402

FIELDS = ("model_tag", "model", "served_model_name", "host", "port", "tensor_parallel_size", "pipeline_parallel_size",
          "enable_expert_parallel", "max_model_len", "gpu_memory_utilization", "max_num_seqs", "max_num_batched_tokens",
          "reasoning_parser", "trust_remote_code", "api_key", "distributed_executor_backend", "nnodes", "node_rank",
          "master_addr", "master_port", "headless")


def find(definition: str, prefer: str) -> object:
    """The object `definition` names (e.g. "def make_arg_parser"), from the vLLM module that defines it; where several
    do, the one in a file named `prefer`."""
    root = Path(vllm.__file__).parent
    found = [p for p in root.rglob("*.py") if f"\n{definition}(" in p.read_text(errors="replace") or f"\n{definition}:" in p.read_text(errors="replace")]
    if not found:
        raise SystemExit(f"no `{definition}` in {root}")
    path = sorted(found, key=lambda p: (p.name != prefer, len(p.parts)))[0]
    module = importlib.import_module(".".join(["vllm", *path.relative_to(root).with_suffix("").parts]))
    return getattr(module, definition.split()[1])


def main() -> None:
    make_arg_parser = find("def make_arg_parser", "cli_args.py")
    flexible = find("class FlexibleArgumentParser", "argparse_utils.py")
    validate = getattr(sys.modules[make_arg_parser.__module__], "validate_parsed_serve_args", None)
    results = []
    for args in json.load(sys.stdin):
        parser = make_arg_parser(flexible())
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                ns = parser.parse_args(args)
                if validate:
                    validate(ns)
        except SystemExit:
            results.append({"error": err.getvalue().strip().splitlines()[-1:] or ["exit"]})
            continue
        except Exception as e:  # vLLM's own post-parse checks raise TypeError/ValueError
            results.append({"error": [f"{type(e).__name__}: {e}"]})
            continue
        results.append({"ok": {f: getattr(ns, f, None) for f in FIELDS}})
    print(json.dumps({"vllm": vllm.__version__, "parser": make_arg_parser.__module__, "results": results}, default=str))


if __name__ == "__main__":
    main()
