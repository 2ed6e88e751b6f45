"""Parse a server argument list with the installed server's own parser and print what it understood, as JSON.

`r1kit-entrypoint --check-args ARGS...` runs it on the final argument list (what the entrypoint adds included):
an unknown flag or a bad value exits 2 with the parser's own message. Nothing starts, no GPU is needed. The API key
is never printed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def current(argv: list[str]) -> dict:
    from sglang.srt.server_args import ServerArgs

    parser = argparse.ArgumentParser(prog="sglang.launch_server")
    ServerArgs.add_cli_args(parser)
    return vars(parser.parse_args(argv))


def legacy(argv: list[str]) -> dict:
    from ktransformers.server.args import ArgumentParser
    from ktransformers.server.config.config import Config

    sys.argv = ["ktransformers.server.main", *argv]
    return vars(ArgumentParser(Config()).parse_args())


def main() -> int:
    argv = sys.argv[1:]
    parsed = (legacy if os.environ.get("KT_ROUTE") == "legacy" else current)(argv)
    for key in ("api_key", "admin_api_key"):
        if parsed.get(key):
            parsed[key] = "<set>"
    print(json.dumps(parsed, default=str, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
