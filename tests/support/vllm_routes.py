"""Build vLLM's real FastAPI app (vLLM's own build_app, from arguments parsed by vLLM's own parser) without a GPU or
an engine, and call every route it registers, without the API key and with it. Run by vLLM's Python (the test venv
of tests/support/vllm_venv.py, VLLM_TARGET_DEVICE=cpu):

    python -P vllm_routes.py KEYGUARD_DIR < ARGS.json    # ARGS.json: {"argv": [...vllm serve options...]}

KEYGUARD_DIR (the folder holding r1kit_keyguard.py: images/vllm here, /opt/r1kit/python in the image) goes on
sys.path, as the entrypoint's PYTHONPATH puts it there. The app is built with every task vLLM knows (generate, transcription, realtime,
embed, classify, render, ...), VLLM_SERVER_DEV_MODE=1 (the dev and RL routes) and --enable-fault-tolerance, so
that every router vLLM can register is there. No lifespan runs and no engine exists: with the key, a route's
handler fails (500) or answers; what matters is who stops the request before it.

Prints one JSON object: {"vllm": version, "middleware": [class names, outermost first], "routes": [{"path",
"method", "without", "with", "wrong"}, ...], "probes": {"METHOD PATH": status}} where without/with/wrong are the
HTTP statuses without a key, with the key and with a wrong one (a WebSocket route: the handshake's denial status, or
101 when it got through), and the probes are requests without the key to paths next to the open one.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import sys
import typing
import warnings

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
os.environ["VLLM_SERVER_DEV_MODE"] = "1"
KEY = "the-key-" + "x" * 24
os.environ["VLLM_API_KEY"] = KEY
sys.path.insert(0, sys.argv[1])
warnings.simplefilter("ignore")
logging.disable(logging.CRITICAL)

with contextlib.redirect_stdout(io.StringIO()):
    import vllm
    from starlette.routing import Mount, Route, WebSocketRoute
    from starlette.testclient import TestClient, WebSocketDenialResponse
    from vllm.entrypoints.common.cli_args import make_arg_parser
    from vllm.entrypoints.launchers.app import build_app
    from vllm.tasks import SupportedTask
    from vllm.utils.argparse_utils import FlexibleArgumentParser


def every_task() -> tuple[str, ...]:
    return tuple(typing.get_args(SupportedTask))


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path)


def ws_status(client: TestClient, path: str, headers: dict) -> int:
    try:
        with client.websocket_connect(path, headers=headers) as ws:
            ws.close()
            return 101
    except WebSocketDenialResponse as denied:
        return denied.status_code
    except Exception:  # the handler itself failed after the handshake got through
        return 101


def main() -> None:
    argv = json.loads(sys.stdin.read())["argv"]
    with contextlib.redirect_stdout(io.StringIO()):
        args = make_arg_parser(FlexibleArgumentParser()).parse_args(argv)
        app = build_app(args, every_task())
    client = TestClient(app, raise_server_exceptions=False, root_path=args.root_path or "")
    prefix = args.root_path or ""
    keyed = {"Authorization": f"Bearer {KEY}"}
    wrong = {"Authorization": "Bearer not-the-key"}
    results = []
    for route in app.routes:
        path = concrete(route.path)
        if isinstance(route, WebSocketRoute):
            statuses = [ws_status(client, prefix + path, h) for h in ({}, keyed, wrong)]
            results.append({"path": route.path, "method": "WEBSOCKET", "without": statuses[0], "with": statuses[1], "wrong": statuses[2]})
            continue
        methods = sorted(route.methods or []) if isinstance(route, Route) else ["GET", "POST"] if isinstance(route, Mount) else []
        for method in methods:
            statuses = [client.request(method, prefix + path, headers=h, json={} if method == "POST" else None).status_code for h in ({}, keyed, wrong)]
            results.append({"path": route.path, "method": method, "without": statuses[0], "with": statuses[1], "wrong": statuses[2]})
    # Paths next to the open one, and methods the routes above do not list, all without the key.
    probes = {f"{method} {path}": client.request(method, prefix + path, headers=headers).status_code
              for method, path, headers in [("HEAD", "/health", {}), ("POST", "/health", {}), ("GET", "/health/", {}),
                                            ("GET", "/HEALTH", {}), ("GET", "//health", {}), ("OPTIONS", "/tokenize", {}),
                                            ("GET", "/no-such-route", {}), ("GET", "/health", {"Authorization": "Basic eA=="})]}
    middleware = [m.cls.__name__ for m in app.user_middleware]
    print(json.dumps({"vllm": vllm.__version__, "middleware": middleware, "routes": results, "probes": probes}))


if __name__ == "__main__":
    main()
