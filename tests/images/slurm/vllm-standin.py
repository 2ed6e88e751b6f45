#!/usr/bin/python3
"""A stand-in for `vllm` (no GPU here): appends one JSON line with its arguments, the host it ran on and whether an
API key reached it, to $R1KIT_VLLM_RECORD (default /shared/vllm-calls.jsonl), then exits 0."""
import json
import os
import socket
import sys

record = os.environ.get("R1KIT_VLLM_RECORD", "/shared/vllm-calls.jsonl")
with open(record, "a") as out:
    out.write(json.dumps({"argv": sys.argv[1:], "host": socket.gethostname(), "api_key": bool(os.environ.get("VLLM_API_KEY"))}) + "\n")
